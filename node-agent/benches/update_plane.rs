//! The update plane's numbers: journal write latency, updater wake latency
//! (hint, file touch, poll-only baseline), and artifact distribution on a
//! loopback fleet (a neighbour's copy against the store's, and what the
//! origin serves while a fleet fetches).
//!
//! `cargo bench -p fabric-node-agent --bench update_plane` prints tables.
//! Every loop is bounded in count and time; samples of the compared modes
//! are interleaved so a noisy neighbour on the machine hits them alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fabric::identity::NodeIdentity;
use fabric::transport::{Transport, TransportConfig};
use fabric_compose::fleet::{synthetic_nodes, FleetOptions, LocalFleet};
use fabric_node_agent::update::artifact::{piece_root, sha256, ArtifactStore};
use fabric_node_agent::update::exchange::{fetch, FetchConfig, FetchPlan};
use fabric_node_agent::update::journal::JournalFile;
use fabric_node_agent::update::machine::{Attempt, IntentRef, Journal};
use fabric_node_agent::update::updater::{Liveness, Updater, UpdaterConfig, Wake, TRIGGER_FILE};
use fabric_proto::update::UpdateState;
use fabric_schemas::kinds::{
    ArtifactSpec, Component, PieceSpec, Spec, TargetSelector, UpdateIntentSpec,
};
use tokio::sync::watch;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn row(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} |",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

fn journal(i: u32) -> Journal {
    Journal {
        attempt: Some(Attempt {
            intent: IntentRef {
                name: "agent-0-9".into(),
                generation: 2,
                component: Component::NodeAgent,
                version: "0.9.0".into(),
                sha256: "ab".repeat(32),
                size: 31_457_280,
            },
            state: UpdateState::Staged,
            lease_id: Some("lease-0123456789abcdef01234567".into()),
            accepted_plan: None,
            staged_sha256: Some("ab".repeat(32)),
            reason: None,
            transitions: i,
            starts: 1,
            denylist: vec![],
            applying_since_ms: None,
        }),
        last_known_good: None,
        previous_binary: Some("cd".repeat(32)),
    }
}

fn bench_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = JournalFile::new(dir.path());
    let mut samples = Vec::new();
    for i in 0..500 {
        let j = journal(i);
        let t = Instant::now();
        file.save(&j).expect("save");
        samples.push(t.elapsed());
    }
    println!("\n### Journal write (temp + fsync + rename + fsync of the folder)\n");
    println!("| what | samples | median ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    row("journal save", samples);
}

/// Waits for a pass stamped at or after `after_ms`; the latency counts from
/// `t`, taken before the trigger (a file write may take longer than the wake).
async fn wait_pass(
    liveness: &Liveness,
    after_ms: u64,
    t: Instant,
    limit: Duration,
) -> Option<Duration> {
    while t.elapsed() < limit {
        if liveness.last_pass_ms() >= after_ms {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    None
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn standalone_updater(
    dir: &std::path::Path,
    file_wake: bool,
    poll: Duration,
) -> (Updater, Arc<Liveness>, Transport) {
    let transport = Transport::bind(
        &NodeIdentity::generate(),
        TransportConfig::new("127.0.0.1:0".parse().expect("addr")),
    )
    .await
    .expect("transport");
    let (_inputs_tx, inputs) = watch::channel(Default::default());
    // Keep the sender alive for the run: a closed inputs watch ends the loop.
    std::mem::forget(_inputs_tx);
    let (status, _) = watch::channel(None);
    let liveness = Arc::new(Liveness::default());
    let mut cfg = UpdaterConfig::new("bench", dir);
    cfg.poll = poll;
    cfg.file_wake = file_wake;
    let u =
        Updater::start(cfg, transport.clone(), inputs, status, liveness.clone()).expect("updater");
    (u, liveness, transport)
}

async fn bench_wake() {
    let fast_dir = tempfile::tempdir().expect("tempdir");
    let poll_dir = tempfile::tempdir().expect("tempdir");
    let (fast, fast_live, t1) =
        standalone_updater(fast_dir.path(), true, Duration::from_secs(600)).await;
    let (poll_only, poll_live, t2) =
        standalone_updater(poll_dir.path(), false, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut hint, mut file, mut poll) = (Vec::new(), Vec::new(), Vec::new());
    let limit = Duration::from_secs(5);
    for round in 0..200u32 {
        // A pass in the same millisecond as the trigger would count as its
        // wake: start every sample on a fresh millisecond.
        tokio::time::sleep(Duration::from_millis(3)).await;
        let at = now_ms() + 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let t = Instant::now();
        fast.wake(Wake::Hint);
        if let Some(d) = wait_pass(&fast_live, at, t, limit).await {
            hint.push(d);
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        let at = now_ms() + 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let body = format!("{{\"round\":{round}}}");
        let t = Instant::now();
        fabric_schemas::keys::write_atomic(
            &fast_dir.path().join(TRIGGER_FILE),
            body.as_bytes(),
            0o644,
        )
        .expect("touch");
        if let Some(d) = wait_pass(&fast_live, at, t, limit).await {
            file.push(d);
        }
        if round % 10 == 0 {
            let at = now_ms() + 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
            let t = Instant::now();
            fabric_schemas::keys::write_atomic(
                &poll_dir.path().join(TRIGGER_FILE),
                body.as_bytes(),
                0o644,
            )
            .expect("touch");
            if let Some(d) = wait_pass(&poll_live, at, t, limit).await {
                poll.push(d);
            }
        }
    }
    println!("\n### Updater wake: trigger to the next updater pass\n");
    println!("| wake | samples | median ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    row("hint (direct)", hint);
    row("update-trigger.json touched (notify)", file);
    row("poll only (1 s poll, jittered 0.5x..1.5x)", poll);
    fast.stop().await;
    poll_only.stop().await;
    t1.shutdown().await;
    t2.shutdown().await;
}

async fn bench_distribution() {
    const SIZE: usize = 8 * 1024 * 1024;
    const PIECE: u64 = 256 * 1024;
    const NODES: usize = 9;
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = LocalFleet::start(
        &synthetic_nodes(NODES),
        FleetOptions::new(dir.path().join("fleet")),
    )
    .await
    .expect("fleet");
    let total = fleet.expected_records();
    let t = Instant::now();
    while !fleet
        .statuses()
        .iter()
        .all(|s| s.directory_records == total)
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "fleet did not converge"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let data: Vec<u8> = (0..SIZE)
        .map(|i| ((i as u64 * 2654435761) >> 11) as u8)
        .collect();
    let sha = hex::encode(sha256(&data));
    let digests: Vec<[u8; 32]> = data.chunks(PIECE as usize).map(sha256).collect();
    let pieces = PieceSpec {
        piece_size: PIECE,
        root: hex::encode(piece_root(&digests)),
    };
    let build = dir.path().join("build");
    std::fs::write(&build, &data).expect("write");
    // beta-1 provides `update-store` in a synthetic fleet; alpha-2 is a plain node.
    let origin = &fleet.members[1];
    ArtifactStore::new(&origin.state_dir.join("artifacts"))
        .import(&build, None)
        .expect("import");
    let neighbour = &fleet.members[3];
    ArtifactStore::new(&neighbour.state_dir.join("artifacts"))
        .import(&build, None)
        .expect("import");

    // A neighbour's copy against the store's, from one client, interleaved.
    let client = fleet.handle(&fleet.members[6].name).expect("client");
    let (mut from_store, mut from_neighbour) = (Vec::new(), Vec::new());
    for round in 0..6 {
        for (source, out) in [
            (origin.node_id, &mut from_store),
            (neighbour.node_id, &mut from_neighbour),
        ] {
            let scratch = dir
                .path()
                .join(format!("scratch-{round}-{}", source.short()));
            let plan = FetchPlan {
                sha256: sha.clone(),
                size: SIZE as u64,
                pieces: Some(pieces.clone()),
                sources: vec![source],
                fallback: Vec::new(),
            };
            let t = Instant::now();
            fetch(
                client.transport(),
                &ArtifactStore::new(&scratch),
                &plan,
                &FetchConfig::default(),
            )
            .await
            .expect("fetch");
            out.push(t.elapsed());
        }
    }
    let mib = SIZE as f64 / (1024.0 * 1024.0);
    let rate = |v: &mut Vec<Duration>| {
        v.sort();
        mib / percentile(v, 0.5).as_secs_f64()
    };
    let (store_rate, neighbour_rate) = (rate(&mut from_store), rate(&mut from_neighbour));
    let ratios: Vec<f64> = from_store
        .iter()
        .zip(&from_neighbour)
        .map(|(s, n)| s.as_secs_f64() / n.as_secs_f64())
        .collect();
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    println!("\n### Artifact fetch: a neighbour's copy against the store's ({} MiB, {} KiB pieces, loopback)\n", mib, PIECE / 1024);
    println!("| source | runs | median MiB/s |");
    println!("|---|---|---|");
    println!(
        "| update-store node | {} | {store_rate:.1} |",
        from_store.len()
    );
    println!(
        "| neighbour | {} | {neighbour_rate:.1} |",
        from_neighbour.len()
    );
    println!(
        "\nneighbour / store throughput: median {:.2}x (paired runs, {lo:.2}x..{hi:.2}x)",
        neighbour_rate / store_rate
    );

    // The whole fleet fetches one artifact that only the origin holds.
    let served_before: u64 = fleet
        .statuses()
        .iter()
        .map(|s| s.artifact_bytes_served)
        .sum();
    let origin_before = fleet
        .handle(&origin.name)
        .expect("origin")
        .status()
        .artifact_bytes_served;
    let data2: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
    let build2 = dir.path().join("build2");
    std::fs::write(&build2, &data2).expect("write");
    let sha2 = hex::encode(sha256(&data2));
    let digests2: Vec<[u8; 32]> = data2.chunks(PIECE as usize).map(sha256).collect();
    ArtifactStore::new(&origin.state_dir.join("artifacts"))
        .import(&build2, None)
        .expect("import");
    let intent = Spec::UpdateIntent(UpdateIntentSpec {
        component: Component::NodeAgent,
        version: "0.9.1".into(),
        artifact: ArtifactSpec {
            sha256: sha2.clone(),
            size: SIZE as u64,
            mirrors: vec!["fabric://update-store/x".into()],
            pieces: Some(PieceSpec {
                piece_size: PIECE,
                root: hex::encode(piece_root(&digests2)),
            }),
        },
        target: TargetSelector {
            all: true,
            ..Default::default()
        },
        policy: "default".into(),
    });
    let env = fleet.sign(&intent, "agent-0-9-1", 3 << 20).expect("sign");
    let t = Instant::now();
    fleet
        .handle(&origin.name)
        .expect("origin")
        .inject(env)
        .await
        .expect("inject");
    let staged = |s: &fabric_node_agent::status::NodeStatus| {
        s.update
            .as_ref()
            .is_some_and(|u| u.staged_sha256.as_deref() == Some(sha2.as_str()))
    };
    // The origin stages its own copy at once; the others fetch.
    let others = NODES;
    while fleet.statuses().iter().filter(|s| staged(s)).count() < others {
        if t.elapsed() > Duration::from_secs(180) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t.elapsed();
    let done = fleet.statuses().iter().filter(|s| staged(s)).count();
    let origin_served = fleet
        .handle(&origin.name)
        .expect("origin")
        .status()
        .artifact_bytes_served
        - origin_before;
    let all_served: u64 = fleet
        .statuses()
        .iter()
        .map(|s| s.artifact_bytes_served)
        .sum::<u64>()
        - served_before;
    println!("\n### One artifact to a loopback fleet ({NODES} nodes in 3 areas, only the update-store node holds it)\n");
    println!("| nodes staged | took s | origin served (copies) | all nodes served (copies) |");
    println!("|---|---|---|---|");
    println!(
        "| {done} of {others} | {:.1} | {:.2} | {:.2} |",
        took.as_secs_f64(),
        origin_served as f64 / SIZE as f64,
        all_served as f64 / SIZE as f64
    );
    let mut fleet = fleet;
    fleet.stop_all().await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    bench_journal();
    rt.block_on(bench_wake());
    rt.block_on(bench_distribution());
}
