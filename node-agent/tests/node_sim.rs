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

/// Node 0, the only bootstrap peer, is dead; the records sit on node 1. Every
/// other node starts with an empty directory and can reach no one, so it
/// joins only if it lets in the members pushing to it.
fn dead_bootstrap(proofs: bool) -> NodeSim {
    let mut cfg = SimConfig::new(40, 21);
    cfg.bootstrap = vec![0];
    cfg.seeded = vec![1];
    cfg.proofs = proofs;
    let mut sim = NodeSim::new(cfg).expect("sim");
    sim.down(0);
    sim
}

#[test]
fn with_a_dead_bootstrap_peer_nodes_join_from_pushes_that_prove_membership() {
    let mut sim = dead_bootstrap(true);
    assert!(
        sim.run_until_converged(120_000),
        "laggards: {:?}",
        sim.laggards()
    );
    assert!(
        sim.has_own_record(2),
        "a joined node presents its own record"
    );
}

#[test]
fn without_proofs_the_same_fleet_never_joins() {
    // The gate before proofs: members only. Nobody but node 1 gets anywhere,
    // and the pushes are refused at the door.
    let mut sim = dead_bootstrap(false);
    assert!(!sim.run_until_converged(30_000));
    assert_eq!(sim.laggards().len(), 38);
    assert!((2..40).all(|i| sim.refused(i) > 0));
}

#[test]
fn connections_stay_within_the_budget_and_there_is_no_full_mesh() {
    let n = 60;
    let mut cfg = SimConfig::new(n, 5);
    cfg.bootstrap = vec![0, 1, 2];
    let mut sim = NodeSim::new(cfg).expect("sim");
    assert!(
        sim.run_until_converged(120_000),
        "laggards: {:?}",
        sim.laggards()
    );
    // Run on past convergence so idle connections get closed.
    sim.run_for(40_000);
    for (i, core) in sim.cores().iter().enumerate() {
        let budget = core.connection_budget();
        assert!(budget < n - 1, "budget {budget} is a full mesh");
        assert!(
            sim.connections(i) <= budget,
            "{} holds {} connections, budget {budget}",
            core.name(),
            sim.connections(i)
        );
    }
}
