//! The host agent as a real process supervising real child processes: a
//! build that exits at once and one that never becomes ready are rolled
//! back with their reasons, one that passes is committed, a rolled-back
//! digest is not retried for its generation, and `install` writes the unit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fabric_host_agent::agent::{ApplyOutcome, ApplyRequest, APPLY_REQUEST_FILE, APPLY_RESULT_FILE};
use fabric_host_agent::slots::hash_reader;
use fabric_schemas::kinds::Component;

const HA: &str = env!("CARGO_BIN_EXE_fabric-host-agent");

/// Kills the host agent and every node-agent of its host folder at the end
/// of a test, however it ends.
struct Reap(Child, PathBuf);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        for pid in slot_processes(&self.1) {
            sigkill(pid);
        }
    }
}

/// A "build": a script whose bytes (and so digest) differ by `tag`.
fn build(dir: &Path, tag: &str, body: &str) -> (PathBuf, String, u64) {
    let path = dir.join(tag);
    std::fs::write(&path, format!("#!/bin/sh\n# build {tag}\n{body}\n")).expect("write");
    let (size, sha) = hash_reader(std::fs::File::open(&path).expect("open")).expect("hash");
    (path, sha, size)
}

/// Says READY=1 with its own digest, then WATCHDOG=1 while it runs.
fn good(dir: &Path, tag: &str) -> (PathBuf, String, u64) {
    build(
        dir,
        tag,
        &format!(
            "d=$(sha256sum \"$0\" | cut -d' ' -f1)\n\"{HA}\" notify --ready --digest \"$d\"\nwhile :; do \"{HA}\" notify --watchdog; sleep 0.2; done"
        ),
    )
}

fn current(host: &Path) -> Option<String> {
    std::fs::read_link(host.join("current"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn wait_for<T>(what: &str, within: Duration, f: impl Fn() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn request(state: &Path, lease: &str, generation: u64, b: &(PathBuf, String, u64)) {
    let req = ApplyRequest {
        lease_id: lease.into(),
        intent: "agent-next".into(),
        generation,
        component: Component::NodeAgent,
        version: format!("0.0.{generation}"),
        sha256: b.1.clone(),
        size: b.2,
        artifact: b.0.clone(),
        previous_sha256: None,
    };
    let dir = state.join("update");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let tmp = dir.join(".req");
    std::fs::write(&tmp, serde_json::to_vec(&req).expect("json")).expect("write");
    std::fs::rename(&tmp, dir.join(APPLY_REQUEST_FILE)).expect("rename");
}

fn result_for(state: &Path, lease: &str) -> ApplyOutcome {
    wait_for(
        &format!("the answer to {lease}"),
        Duration::from_secs(30),
        || {
            let r: ApplyOutcome = serde_json::from_slice(
                &std::fs::read(state.join("update").join(APPLY_RESULT_FILE)).ok()?,
            )
            .ok()?;
            (r.lease_id() == lease).then_some(r)
        },
    )
}

#[test]
fn failing_builds_roll_back_with_their_reason_a_good_one_commits_and_a_rolled_back_digest_is_not_retried(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, host) = (dir.path().join("node"), dir.path().join("host"));
    let v1 = good(dir.path(), "v1");
    let log = std::fs::File::create(dir.path().join("host-agent.log")).expect("log");
    let _ha = Reap(
        Command::new(HA)
            .args([
                "run",
                "--ready-deadline-ms",
                "1500",
                "--probation-ms",
                "500",
            ])
            .arg("--state-dir")
            .arg(&state)
            .arg("--host-dir")
            .arg(&host)
            .arg("--node-agent")
            .arg(&v1.0)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("host agent runs"),
        host.clone(),
    );
    let status = |state: &Path| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(state.join("host-status.json")).ok()?).ok()
    };
    wait_for("v1 running and healthy", Duration::from_secs(20), || {
        let s = status(&state)?;
        (s["node_agent_digest"] == v1.1.as_str() && s["last_health_ms"].is_u64()).then_some(())
    });
    assert_eq!(current(&host).as_deref(), Some(v1.1.as_str()));
    let mode = std::fs::metadata(host.join("slots").join(&v1.1).join("node-agent"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("slot");
    assert_eq!(mode, 0o555);

    // Exits at once: rolled back, v1 runs again.
    let crash = build(dir.path(), "crash", "exit 3");
    request(&state, "l1", 2, &crash);
    let r = result_for(&state, "l1");
    assert_eq!(
        (r.outcome(), r.reason()),
        ("rolled_back", Some("exited_before_ready"))
    );
    assert_eq!(current(&host).as_deref(), Some(v1.1.as_str()));

    // Never ready: rolled back at the deadline.
    let mute = build(dir.path(), "mute", "exec sleep 600");
    let asked = Instant::now();
    request(&state, "l2", 3, &mute);
    let r = result_for(&state, "l2");
    assert_eq!(
        (r.outcome(), r.reason()),
        ("rolled_back", Some("no_readiness"))
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(1500),
        "not before the deadline"
    );
    assert_eq!(current(&host).as_deref(), Some(v1.1.as_str()));
    wait_for("v1 healthy again", Duration::from_secs(20), || {
        (status(&state)?["node_agent_digest"] == v1.1.as_str()).then_some(())
    });

    // Ready and alive through probation: committed.
    let v2 = good(dir.path(), "v2");
    request(&state, "l3", 4, &v2);
    let r = result_for(&state, "l3");
    assert_eq!((r.outcome(), r.reason()), ("committed", None));
    assert_eq!(current(&host).as_deref(), Some(v2.1.as_str()));
    // The swap's downtime is measured: old stopped to new ready, within the
    // readiness deadline.
    let downtime = wait_for(
        "the swap downtime reported",
        Duration::from_secs(10),
        || status(&state)?["last_swap_downtime_ms"].as_u64(),
    );
    assert!(downtime > 0 && downtime < 1500, "{downtime} ms");
    let prev = std::fs::read_link(host.join("previous")).expect("previous link");
    assert!(prev.ends_with(&v1.1), "{prev:?}");

    // The digest rolled back for generation 2 is refused without a swap.
    request(&state, "l4", 2, &crash);
    let r = result_for(&state, "l4");
    assert_eq!(
        (r.outcome(), r.reason()),
        ("rolled_back", Some("denylisted"))
    );
    assert_eq!(current(&host).as_deref(), Some(v2.1.as_str()));

    // A file that is not what the request names is refused before the swap.
    let mut lie = good(dir.path(), "lie");
    lie.2 += 1;
    request(&state, "l5", 5, &lie);
    let r = result_for(&state, "l5");
    assert_eq!(r.outcome(), "rolled_back");
    assert!(
        r.reason().is_some_and(|s| s.starts_with("swap_refused")),
        "{r:?}"
    );
    assert_eq!(current(&host).as_deref(), Some(v2.1.as_str()));
}

#[test]
fn install_writes_the_systemd_unit_into_the_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(HA)
        .args(["install", "--root"])
        .arg(dir.path())
        .args(["--", "--name", "n1", "--listen", "0.0.0.0:7100"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(
        dir.path()
            .join("etc/systemd/system/fabric-host-agent.service"),
    )
    .expect("unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/fabric-host-agent run --state-dir /var/lib/fabric/node --host-dir /var/lib/fabric/host -- --name n1 --listen 0.0.0.0:7100"), "{unit}");
    assert!(unit.contains("Restart=always"));
    assert!(unit.contains("WantedBy=multi-user.target"));
}

/// Runs the host agent in its own process group, so a SIGKILL of the group
/// takes its children with it (as a machine crash would).
fn spawn_group(state: &Path, host: &Path, initial: &Path, pause: Option<(&str, &Path)>) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(HA);
    cmd.args([
        "run",
        "--ready-deadline-ms",
        "3000",
        "--probation-ms",
        "300",
    ])
    .arg("--state-dir")
    .arg(state)
    .arg("--host-dir")
    .arg(host)
    .arg("--node-agent")
    .arg(initial)
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .process_group(0);
    if let Some((point, marker)) = pause {
        cmd.env("FABRIC_PAUSE_AT", point)
            .env("FABRIC_PAUSE_MARKER", marker);
    }
    cmd.spawn().expect("host agent runs")
}

/// The processes running a slot of `host` (their command line names it).
fn slot_processes(host: &Path) -> Vec<u32> {
    let needle = host.join("slots");
    let needle = needle.as_os_str().as_encoded_bytes();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        {
            out.push(pid);
        }
    }
    out
}

fn sigkill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// A machine crash: the host agent's group and every node-agent of `host`
/// (which runs in a process group of its own).
fn kill_group(child: &mut Child, host: &Path) {
    let pgid = child.id() as i32;
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
    let _ = child.wait();
    for pid in slot_processes(host) {
        sigkill(pid);
    }
}

#[test]
fn a_restarted_host_agent_stops_the_node_agent_its_killed_predecessor_left_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, host) = (dir.path().join("node"), dir.path().join("host"));
    let v1 = good(dir.path(), "v1");
    let mut ha = spawn_group(&state, &host, &v1.0, None);
    let orphan = wait_for("v1 running", Duration::from_secs(20), || {
        slot_processes(&host).first().copied()
    });
    // Only the host agent dies; its node-agent lives on in its own group.
    sigkill(ha.id());
    let _ = ha.wait();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        slot_processes(&host).contains(&orphan),
        "the node-agent outlives its host agent"
    );
    let mut ha = spawn_group(&state, &host, &v1.0, None);
    let fresh = wait_for(
        "exactly one node-agent, not the orphan",
        Duration::from_secs(20),
        || match slot_processes(&host).as_slice() {
            [one] if *one != orphan => Some(*one),
            _ => None,
        },
    );
    assert_ne!(fresh, orphan);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(slot_processes(&host), vec![fresh], "never two node-agents");
    kill_group(&mut ha, &host);
    assert!(slot_processes(&host).is_empty());
}

#[test]
fn sigkill_at_every_write_point_of_a_switch_leaves_a_bootable_current_and_the_apply_completes() {
    let points = [
        "slot:written",
        "slot:installed",
        "apply:journal_saved",
        "link:previous:temp",
        "link:previous:renamed",
        "link:current:temp",
        "link:current:renamed",
        "link:current:synced",
        "apply:switched",
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, point) in points.iter().enumerate() {
        let round = dir.path().join(format!("round-{i}"));
        let (state, host) = (round.join("node"), round.join("host"));
        std::fs::create_dir_all(&round).expect("mkdir");
        let v1 = good(&round, "v1");
        let v2 = good(&round, "v2");
        // v1 is current; the apply of v2 is killed at `point`.
        let mut ha = spawn_group(&state, &host, &v1.0, None);
        wait_for("v1 current", Duration::from_secs(20), || {
            (current(&host)? == v1.1).then_some(())
        });
        kill_group(&mut ha, &host);
        let marker = round.join("paused");
        let mut ha = spawn_group(&state, &host, &v1.0, Some((point, &marker)));
        request(&state, "l1", 2, &v2);
        wait_for(point, Duration::from_secs(20), || {
            marker.exists().then_some(())
        });
        kill_group(&mut ha, &host);

        // `current` names a complete slot, whichever side of the switch.
        let cur = current(&host).expect("a current link");
        assert!(cur == v1.1 || cur == v2.1, "{point}: current is {cur}");
        let (_, got) = hash_reader(
            std::fs::File::open(host.join("slots").join(&cur).join("node-agent")).expect("slot"),
        )
        .expect("hash");
        assert_eq!(got, cur, "{point}: the current slot is whole");
        let leftovers: Vec<_> = std::fs::read_dir(&host)
            .expect("host dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            leftovers.iter().all(|n| n != "current.new"),
            "{leftovers:?}"
        );

        // A restart finishes the apply.
        let mut ha = spawn_group(&state, &host, &v1.0, None);
        let r = result_for(&state, "l1");
        assert_eq!(r.outcome(), "committed", "{point}: {r:?}");
        assert_eq!(current(&host).as_deref(), Some(v2.1.as_str()), "{point}");
        kill_group(&mut ha, &host);
    }
}

#[test]
fn a_host_agent_started_without_arguments_repairs_the_command_line_from_the_running_node_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, host) = (dir.path().join("node"), dir.path().join("host"));
    let v1 = good(dir.path(), "v1");
    let spawn = |args: &[&str]| {
        use std::os::unix::process::CommandExt;
        Command::new(HA)
            .arg("run")
            .arg("--state-dir")
            .arg(&state)
            .arg("--host-dir")
            .arg(&host)
            .arg("--node-agent")
            .arg(&v1.0)
            .arg("--")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("host agent runs")
    };
    let cmdline = |pid: u32| -> String {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default()
    };
    let mut ha = spawn(&["--name", "n1", "--marker", "from-the-unit"]);
    let first = wait_for("the node-agent running", Duration::from_secs(20), || {
        slot_processes(&host).first().copied()
    });
    assert!(
        cmdline(first).contains("--marker from-the-unit"),
        "{}",
        cmdline(first)
    );
    // The host agent dies and its unit loses the node-agent's arguments.
    sigkill(ha.id());
    let _ = ha.wait();
    let mut ha = spawn(&[]);
    let next = wait_for(
        "a node-agent with the repaired command line",
        Duration::from_secs(20),
        || match slot_processes(&host).as_slice() {
            [one] if *one != first => Some(*one),
            _ => None,
        },
    );
    assert!(
        cmdline(next).contains("--name n1 --marker from-the-unit"),
        "{}",
        cmdline(next)
    );
    // With nothing running, the arguments last used are the fallback.
    kill_group(&mut ha, &host);
    let mut ha = spawn(&[]);
    let third = wait_for(
        "a node-agent from the recorded arguments",
        Duration::from_secs(20),
        || slot_processes(&host).first().copied(),
    );
    assert!(
        cmdline(third).contains("--marker from-the-unit"),
        "{}",
        cmdline(third)
    );
    kill_group(&mut ha, &host);
}
