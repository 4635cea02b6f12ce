//! The node core at fleet scale, in the deterministic simulator: the real
//! core and the real signature checks, no sockets.

use fabric_node_agent::sim::{NodeSim, SimConfig};

#[test]
fn a_fleet_converges_from_one_seeded_bootstrap_node() {
    let mut sim = NodeSim::new(SimConfig::new(30, 7)).expect("sim");
    assert!(
        sim.run_until_converged(60_000),
        "laggards after 60 s simulated: {:?}",
        sim.laggards()
    );
    for core in sim.cores() {
        assert_eq!(
            core.record_count(),
            sim.expected_records(),
            "{}",
            core.name()
        );
        assert_eq!(core.directory().nodes.len(), 30, "{}", core.name());
    }
}

#[test]
fn a_seed_replays_the_same_run_and_another_seed_does_not() {
    let run = |seed| {
        let mut sim = NodeSim::new(SimConfig::new(16, seed)).expect("sim");
        assert!(sim.run_until_converged(60_000));
        (sim.elapsed_ms(), sim.delivered(), sim.trace_digest())
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3).2, run(4).2);
}

#[test]
fn lost_messages_slow_the_spread_but_do_not_stop_it() {
    let mut cfg = SimConfig::new(20, 11);
    cfg.loss_ppm = 200_000;
    let mut sim = NodeSim::new(cfg).expect("sim");
    assert!(
        sim.run_until_converged(120_000),
        "laggards: {:?}",
        sim.laggards()
    );
}
