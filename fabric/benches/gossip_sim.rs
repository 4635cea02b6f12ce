//! Gossip simulator table: drives the real `fabric::gossip` core over a
//! deterministic simulated network at 100, 1,000 and 10,000 nodes.
//!
//! `cargo bench -p fabric --bench gossip_sim`; options after `--`:
//! `--quick` (skip 10,000), `--only=<scenario>`, `--types` (bytes by message type).

use std::time::Instant;

use fabric::gossip::sim::{
    push_pull_bound, scenario_churn, scenario_cold_start, scenario_idle, scenario_inject_one,
    ScenarioResult, SimConfig,
};
use fabric::gossip::MESSAGE_TYPES;

const MAX_ROUNDS: u32 = 200;

struct Opts {
    quick: bool,
    types: bool,
    only: Option<String>,
}

fn row(r: &ScenarioResult, net: &str, secs: f64) {
    let bound = push_pull_bound(r.nodes);
    let (rounds, ratio) = match r.converged_round {
        Some(x) => (x.to_string(), format!("{:.2}", f64::from(x) / bound)),
        None => (format!(">{MAX_ROUNDS}"), "-".to_owned()),
    };
    let rep = &r.report;
    println!(
        "| {:<10} | {:>6} | {:>4} | {:<9} | {:>6} | {:>5.1} | {:>5} | {:>7.1} | {:>9.0} | {:>10.1} | {:>10.1} | {:>5.1} |",
        r.scenario,
        r.nodes,
        r.seed,
        net,
        rounds,
        bound,
        ratio,
        rep.msgs_per_node_round(),
        rep.bytes_per_node_round(),
        rep.max_node_round_sent as f64 / 1024.0,
        rep.max_node_round_recv as f64 / 1024.0,
        secs,
    );
}

fn run(o: &Opts, name: &str, net: &str, f: impl FnOnce() -> ScenarioResult) {
    if o.only.as_deref().is_some_and(|only| only != name) {
        return;
    }
    let t = Instant::now();
    let r = f();
    row(&r, net, t.elapsed().as_secs_f64());
    if o.types {
        let total = r.report.bytes.max(1) as f64;
        let parts: Vec<String> = MESSAGE_TYPES
            .iter()
            .zip(r.report.bytes_by_type)
            .map(|(t, b)| format!("{t} {:.0}%", 100.0 * b as f64 / total))
            .collect();
        println!("|   bytes by type: {}", parts.join(", "));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let o = Opts {
        quick: args.iter().any(|a| a == "--quick"),
        types: args.iter().any(|a| a == "--types"),
        only: args
            .iter()
            .find_map(|a| a.strip_prefix("--only=").map(str::to_owned)),
    };
    let sizes: &[usize] = if o.quick {
        &[100, 1_000]
    } else {
        &[100, 1_000, 10_000]
    };
    println!("bound = log3(N) + ln(ln(N)) (Karp et al. 2000); round = 1 s; latency 5-50 ms; node record 312 B on the wire");
    println!("net: async = random tick phases, lockstep = all nodes tick together; loss in %");
    println!("| scenario   | N      | seed | net       | rounds | bound | ratio | msgs/nr | bytes/nr  | max tx KiB | max rx KiB | secs  |");
    println!("|------------|--------|------|-----------|--------|-------|-------|---------|-----------|------------|------------|-------|");
    for &n in sizes {
        let seeds: &[u64] = if n >= 10_000 {
            &[1, 2, 3]
        } else {
            &[1, 2, 3, 4, 5]
        };
        for &seed in seeds {
            run(&o, "inject-one", "async", || {
                scenario_inject_one(SimConfig::new(n, seed), MAX_ROUNDS)
            });
        }
        for &seed in seeds {
            let mut c = SimConfig::new(n, seed);
            c.lockstep = true;
            run(&o, "inject-one", "lockstep", || {
                scenario_inject_one(c, MAX_ROUNDS)
            });
        }
        let mut lossy = SimConfig::new(n, 1);
        lossy.loss_ppm = 10_000;
        run(&o, "inject-one", "async 1%", || {
            scenario_inject_one(lossy, MAX_ROUNDS)
        });
        run(&o, "churn", "async", || {
            scenario_churn(SimConfig::new(n, 1), (n / 100).max(1), MAX_ROUNDS)
        });
        run(&o, "idle", "async", || {
            scenario_idle(SimConfig::new(n, 1), 5)
        });
        if n <= 1_000 {
            run(&o, "cold-start", "async", || {
                scenario_cold_start(SimConfig::new(n, 1), MAX_ROUNDS)
            });
            let mut c = SimConfig::new(n, 1);
            c.lockstep = true;
            run(&o, "cold-start", "lockstep", || {
                scenario_cold_start(c, MAX_ROUNDS)
            });
        }
    }
}
