//! Heartbeat intake throughput per store backend and batch size.
//!
//! `cargo bench -p fabric-reconciler --bench heartbeat_intake` prints a table.
//! The PostgreSQL rows need `FABRIC_PG_URL` (see `.ci/postgres.sh`); they use
//! their own schema, `fabric_bench`, dropped before each run.
//!
//! Each heartbeat is a realistic ~350-byte JSON body from one of 10,000 nodes
//! (the simulated fleet size), nodes cycling so every batch updates existing
//! rows after warm-up, as in steady state. Every batch is one durable commit
//! (fsync on redb, a committed statement on PostgreSQL).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fabric_reconciler::store::{
    EmbeddedStore, Heartbeat, PostgresConfig, PostgresStore, Store, PG_URL_ENV,
};
use serde_json::json;

const FLEET: usize = 10_000;

fn heartbeat(i: usize, at: i64) -> Heartbeat {
    let node = format!("node-{:05}", i % FLEET);
    Heartbeat {
        body: json!({
            "node": node,
            "version": "0.2.325-updatehintwake",
            "control_endpoint": "quic://control.fabric.internal:4433",
            "uptime_s": 86_400 + i,
            "update": {"generation": 42, "state": "healthy", "lease_id": null},
            "paths": {"direct_ready_count": 3, "relay_ready_count": 2, "recovery_path_count": 2},
            "load": {"cpu": 0.21, "mem_mb": 183, "streams": 17},
        }),
        node,
        received_at: at,
    }
}

struct Row {
    store: &'static str,
    batch: usize,
    tasks: usize,
    total: usize,
    elapsed: Duration,
}

/// Feeds `total` heartbeats in batches of `batch` from `tasks` concurrent intakes.
async fn run(store: Arc<dyn Store>, batch: usize, tasks: usize, total: usize) -> Duration {
    let per_task = total / tasks;
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let mut sent = 0;
            let mut i = t * per_task;
            while sent < per_task {
                let n = batch.min(per_task - sent);
                let hbs: Vec<Heartbeat> = (i..i + n).map(|k| heartbeat(k, k as i64)).collect();
                if let Err(e) = store.record_heartbeats(&hbs).await {
                    eprintln!("heartbeat batch failed: {e}");
                    std::process::exit(1);
                }
                sent += n;
                i += n;
            }
        }));
    }
    for h in handles {
        if let Err(e) = h.await {
            eprintln!("intake task failed: {e}");
            std::process::exit(1);
        }
    }
    start.elapsed()
}

/// Plans: (batch, tasks, total). Batch 1 is one fsync per heartbeat, so it gets
/// fewer heartbeats to keep the bench short.
const PLANS: &[(usize, usize, usize)] = &[
    (1, 1, 500),
    (100, 1, 20_000),
    (1_000, 1, 50_000),
    (1_000, 4, 50_000),
];

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us too, and
    // then we only smoke-test a tiny plan.
    let quick = !std::env::args().any(|a| a == "--bench");
    let mut rows = Vec::new();

    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("temp dir: {e}");
            std::process::exit(1);
        }
    };
    let embedded: Arc<dyn Store> = match EmbeddedStore::open(dir.path().join("bench.redb")).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    for &(batch, tasks, total) in PLANS {
        let total = if quick { batch * tasks * 2 } else { total };
        let elapsed = run(Arc::clone(&embedded), batch, tasks, total).await;
        rows.push(Row {
            store: "embedded (redb)",
            batch,
            tasks,
            total,
            elapsed,
        });
    }

    match std::env::var(PG_URL_ENV) {
        Ok(url) if !url.is_empty() => {
            let config = PostgresConfig::new(url).with_schema("fabric_bench");
            let store = async {
                PostgresStore::drop_schema(&config).await?;
                PostgresStore::connect(config).await
            }
            .await;
            let pg: Arc<dyn Store> = match store {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            };
            for &(batch, tasks, total) in PLANS {
                let total = if quick { batch * tasks * 2 } else { total };
                let elapsed = run(Arc::clone(&pg), batch, tasks, total).await;
                rows.push(Row {
                    store: "postgresql",
                    batch,
                    tasks,
                    total,
                    elapsed,
                });
            }
        }
        _ => eprintln!("!!!! {PG_URL_ENV} not set: PostgreSQL rows skipped"),
    }

    println!(
        "\n| store | batch | intake tasks | heartbeats | seconds | heartbeats/s |\n|---|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let secs = r.elapsed.as_secs_f64();
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.0} |",
            r.store,
            r.batch,
            r.tasks,
            r.total,
            secs,
            r.total as f64 / secs.max(1e-9)
        );
    }
}
