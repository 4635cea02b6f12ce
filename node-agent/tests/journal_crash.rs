//! SIGKILL at each write point of the update journal: the journal on disk is
//! always the old one or the new one, whole, and a restarted node-agent reads
//! it first and goes on from it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fabric_node_agent::update::journal::{JournalFile, Loaded};
use fabric_node_agent::update::machine::{Attempt, IntentRef, Journal};
use fabric_proto::update::UpdateState;
use fabric_schemas::keys::{generate_trust_root, write_trust_root_manifest, TrustRootPlan};
use fabric_schemas::kinds::Component;
use fabric_schemas::time::now_unix;

const POINTS: [&str; 4] = [
    "journal:before_write",
    "journal:temp_synced",
    "journal:renamed",
    "journal:saved",
];

fn spawn(state: &Path, trust: &Path, pause: Option<&str>) -> Child {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fabric-node-agent"));
    cmd.args([
        "--name",
        "crash-1",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .arg("--state-dir")
    .arg(state)
    .arg("--trust-root")
    .arg(trust)
    .args(["--updater-poll-ms", "500"])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(p) = pause {
        cmd.env("FABRIC_PAUSE_AT", p)
            .env("FABRIC_PAUSE_MARKER", state.join("paused"));
    }
    cmd.spawn().expect("node-agent binary starts")
}

fn journal(starts: u32) -> Journal {
    Journal {
        attempt: Some(Attempt {
            intent: IntentRef {
                name: "agent-0-9".into(),
                generation: 2,
                component: Component::NodeAgent,
                version: "0.9.0".into(),
                sha256: "ab".repeat(32),
                size: 10,
            },
            state: UpdateState::Staged,
            lease_id: None,
            accepted_plan: None,
            staged_sha256: Some("ab".repeat(32)),
            reason: None,
            transitions: 2,
            starts,
            denylist: vec![],
            applying_since_ms: None,
        }),
        last_known_good: None,
        previous_binary: None,
    }
}

fn read(file: &JournalFile) -> Journal {
    match file.load(1).expect("journal readable") {
        Loaded::Read(j) => *j,
        other => panic!("journal not whole after SIGKILL: {other:?}"),
    }
}

fn wait_for(what: &str, within: Duration, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigkill_at_every_journal_write_point_leaves_the_old_or_the_new_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trust = dir.path().join("trust-root.yaml");
    let (spec, _keys) = generate_trust_root(&TrustRootPlan::single_keys(now_unix() + 86_400));
    write_trust_root_manifest(&trust, &spec).expect("trust root");
    for point in POINTS {
        let state = dir.path().join(point.replace(':', "-"));
        let file = JournalFile::new(&state.join("update"));
        file.save(&journal(0)).expect("prior journal");
        // Every start counts against the unfinished attempt and is persisted
        // before the updater does anything: that save is where it stops.
        let mut child = spawn(&state, &trust, Some(point));
        let crashed_temp = format!(".journal.json.tmp-{}", child.id());
        wait_for(point, Duration::from_secs(30), || {
            state.join("paused").exists()
        });
        child.kill().expect("SIGKILL");
        let _ = child.wait();

        let after = read(&file);
        let starts = after.attempt.as_ref().map(|a| a.starts);
        let renamed = matches!(point, "journal:renamed" | "journal:saved");
        assert_eq!(
            starts,
            Some(if renamed { 1 } else { 0 }),
            "{point}: the journal is the {} one",
            if renamed { "new" } else { "old" }
        );
        assert_eq!(
            after.attempt.as_ref().map(|a| a.state),
            Some(UpdateState::Staged)
        );

        // A clean restart reads it first, counts its own start and runs.
        let mut child = spawn(&state, &trust, None);
        let want = starts.unwrap_or(0) + 1;
        wait_for(
            "the restart's journal",
            Duration::from_secs(30),
            || matches!(file.load(1), Ok(Loaded::Read(j)) if j.attempt.as_ref().is_some_and(|a| a.starts == want)),
        );
        wait_for(
            "a live updater in status.json",
            Duration::from_secs(30),
            || {
                fabric_node_agent::status::read(&state)
                    .ok()
                    .and_then(|s| s.updater)
                    .is_some_and(|u| u.alive)
            },
        );
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        // The temp file of the interrupted save did not outlive the restart.
        assert!(
            !state.join("update").join(&crashed_temp).exists(),
            "{point}: {crashed_temp} left behind"
        );
    }
}
