//! Heartbeat throughput through the Control API intake (validation, the
//! batching queue, a durable commit per batch, the reply's reads), not the raw
//! store: compare `heartbeat_intake.rs`.
//!
//! `cargo bench -p fabric-reconciler --bench api_intake` prints a table. The
//! PostgreSQL rows need `FABRIC_PG_URL` (see `.ci/postgres.sh`); they use their
//! own schema, `fabric_bench_api`, dropped before each run.
//!
//! A 10,000-node fleet, every node a `FabricNode` with its key, and a
//! `control-api` ServiceRecord, so each reply does the production reads (the
//! node's object, update intents, canonical endpoints). Clients are closed
//! loop: each sends one heartbeat, waits for the reply (sent only after the
//! batch committed), then sends the next, cycling through its share of nodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fabric::edge::EdgeInventory;
use fabric_proto::heartbeat::{HeartbeatBody, IntakePath};
use fabric_reconciler::api::{self, ApiClient, ApiConfig, HeartbeatIntake, IntakeConfig, Token};
use fabric_reconciler::store::{
    EmbeddedStore, Op, PostgresConfig, PostgresStore, PutObject, Store, PG_URL_ENV,
};
use fabric_schemas::kinds::{FabricNodeSpec, Kind};
use serde_json::json;

const FLEET: usize = 10_000;
const TOKEN: &str = "bench-operator-token-0123456789";

fn node_name(n: usize) -> String {
    format!("node-{n:05}")
}

fn node_id(n: usize) -> String {
    format!("{:064x}", n + 1)
}

fn beat(n: usize, seq: u64) -> HeartbeatBody {
    let mut hb = fabric_testkit::heartbeat(&node_name(n), &node_id(n));
    hb.agent_version = "0.2.325-updatehintwake".into();
    hb.host_agent_version = Some("0.2.325".into());
    hb.sent_at_ms = seq;
    hb
}

fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("{what}: {e}");
    std::process::exit(1);
}

/// The fleet's objects, in one batch.
async fn populate(store: &dyn Store) {
    let mut ops = Vec::with_capacity(FLEET + 1);
    for n in 0..FLEET {
        let spec = json!({
            "area": format!("area-{}", n % 3),
            "siteId": format!("site-{}", n % 40),
            "localityGroup": format!("lg-{}", n % 200),
            "natGroup": format!("nat-{}", n % 400),
            "nodeId": node_id(n),
        });
        if let Err(e) = serde_json::from_value::<FabricNodeSpec>(spec.clone()) {
            die("bench FabricNode spec", e);
        }
        ops.push(Op::PutObject(PutObject::new(
            Kind::FabricNode,
            node_name(n),
            spec,
        )));
    }
    ops.push(Op::PutObject(PutObject::new(
        Kind::ServiceRecord,
        "control-api",
        json!({"service": "control-api", "providers": [node_name(0)]}),
    )));
    if let Err(e) = store.apply_batch(ops).await {
        die("populating the fleet", e);
    }
}

#[derive(Clone, Copy)]
enum Path {
    /// `HeartbeatIntake::heartbeat`: the intake every listener calls.
    Intake,
    /// `POST /api/v1/heartbeat` on the real listener, one connection per
    /// request (what `ApiClient` does).
    Http,
}

struct Plan {
    path: Path,
    cfg: IntakeConfig,
    clients: usize,
    total: usize,
}

struct Row {
    store: &'static str,
    plan: Plan,
    total: usize,
    elapsed: Duration,
    commits: u64,
    refused: u64,
    p50: Duration,
    p99: Duration,
}

fn cfg(max_batch: usize, delay_ms: u64) -> IntakeConfig {
    IntakeConfig {
        max_batch,
        max_delay: Duration::from_millis(delay_ms),
        ..IntakeConfig::default()
    }
}

fn plans() -> Vec<Plan> {
    let p = |path, cfg, clients, total| Plan {
        path,
        cfg,
        clients,
        total,
    };
    vec![
        // One commit per heartbeat: what the intake did before buffering.
        p(Path::Intake, cfg(1, 0), 64, 2_000),
        p(Path::Intake, IntakeConfig::default(), 64, 20_000),
        p(Path::Intake, IntakeConfig::default(), 1_024, 50_000),
        p(Path::Intake, cfg(256, 0), 64, 20_000),
        p(Path::Intake, cfg(256, 0), 1_024, 50_000),
        p(Path::Intake, cfg(1_024, 20), 1_024, 50_000),
        p(Path::Http, IntakeConfig::default(), 256, 10_000),
    ]
}

async fn run(
    store: Arc<dyn Store>,
    plan: &Plan,
    total: usize,
) -> (Duration, u64, u64, Vec<Duration>) {
    let (intake, handle, client) = match plan.path {
        Path::Intake => (HeartbeatIntake::start(store, plan.cfg), None, None),
        Path::Http => {
            let mut c = ApiConfig::new(
                "127.0.0.1:0".parse().unwrap_or_else(|e| die("addr", e)),
                Token::new(TOKEN).unwrap_or_else(|e| die("token", e)),
            );
            c.intake = plan.cfg;
            let h = api::serve(store, EdgeInventory::new(), c, None)
                .await
                .unwrap_or_else(|e| die("serve", e));
            let client = ApiClient::new(&format!("http://{}", h.addr()), Some(TOKEN.into()))
                .unwrap_or_else(|e| die("client", e));
            (h.intake().clone(), Some(h), Some(client))
        }
    };
    let per_client = total / plan.clients;
    let clients = plan.clients;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..plan.clients {
        let intake = intake.clone();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            let mut refused = 0u64;
            for k in 0..per_client {
                // Client c owns nodes c, c + clients, ...: a node is (nearly)
                // never sent by two clients at once, as in a real fleet.
                let n = (c + k * clients) % FLEET;
                let hb = beat(n, k as u64);
                let t = Instant::now();
                let ok = match &client {
                    None => match intake.heartbeat(hb, IntakePath::ControlApi).await {
                        Ok(_) => true,
                        Err(e) if e.is_retryable() => false,
                        Err(e) => die("intake", e),
                    },
                    Some(cl) => match cl.heartbeat(&hb).await {
                        Ok(_) => true,
                        Err(e) if e.status().is_some_and(|s| s.as_u16() == 503) => false,
                        Err(e) => die("http heartbeat", e),
                    },
                };
                if ok {
                    lat.push(t.elapsed());
                } else {
                    refused += 1;
                }
            }
            (lat, refused)
        }));
    }
    let mut lat = Vec::with_capacity(total);
    let mut refused = 0;
    for t in tasks {
        let (l, r) = t.await.unwrap_or_else(|e| die("client task", e));
        lat.extend(l);
        refused += r;
    }
    let elapsed = start.elapsed();
    let commits = intake.stats().commits;
    match handle {
        Some(h) => h.stop().await,
        None => intake.shutdown().await,
    }
    lat.sort();
    (elapsed, commits, refused, lat)
}

fn pct(lat: &[Duration], p: f64) -> Duration {
    if lat.is_empty() {
        return Duration::ZERO;
    }
    let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
    lat[i.min(lat.len() - 1)]
}

async fn bench_store(name: &'static str, store: Arc<dyn Store>, quick: bool, rows: &mut Vec<Row>) {
    populate(store.as_ref()).await;
    for plan in plans() {
        let total = if quick { plan.clients * 2 } else { plan.total };
        let (elapsed, commits, refused, lat) = run(store.clone(), &plan, total).await;
        rows.push(Row {
            store: name,
            total: lat.len(),
            elapsed,
            commits,
            refused,
            p50: pct(&lat, 0.5),
            p99: pct(&lat, 0.99),
            plan,
        });
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us too, and
    // then we only smoke-test tiny runs.
    let quick = !std::env::args().any(|a| a == "--bench");
    let mut rows = Vec::new();

    let dir = tempfile::tempdir().unwrap_or_else(|e| die("temp dir", e));
    let embedded: Arc<dyn Store> = match EmbeddedStore::open(dir.path().join("bench.redb")).await {
        Ok(s) => Arc::new(s),
        Err(e) => die("embedded store", e),
    };
    bench_store("embedded (redb)", embedded, quick, &mut rows).await;

    match std::env::var(PG_URL_ENV) {
        Ok(url) if !url.is_empty() => {
            let mut config = PostgresConfig::new(url).with_schema("fabric_bench_api");
            if let Some(n) = std::env::var("FABRIC_BENCH_PG_POOL")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                config.pool_size = n;
            }
            let store = async {
                PostgresStore::drop_schema(&config).await?;
                PostgresStore::connect(config).await
            }
            .await;
            let pg: Arc<dyn Store> = match store {
                Ok(s) => Arc::new(s),
                Err(e) => die("postgresql store", e),
            };
            bench_store("postgresql", pg, quick, &mut rows).await;
        }
        _ => eprintln!("!!!! {PG_URL_ENV} not set: PostgreSQL rows skipped"),
    }

    println!(
        "\n| store | path | batch / linger | clients | heartbeats | seconds | heartbeats/s | commits | per commit | p50 | p99 | refused |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let secs = r.elapsed.as_secs_f64();
        println!(
            "| {} | {} | {} / {} ms | {} | {} | {:.2} | {:.0} | {} | {:.1} | {:.1} ms | {:.1} ms | {} |",
            r.store,
            match r.plan.path {
                Path::Intake => "intake",
                Path::Http => "HTTP",
            },
            r.plan.cfg.max_batch,
            r.plan.cfg.max_delay.as_millis(),
            r.plan.clients,
            r.total,
            secs,
            r.total as f64 / secs.max(1e-9),
            r.commits,
            r.total as f64 / (r.commits.max(1)) as f64,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.refused,
        );
    }
}
