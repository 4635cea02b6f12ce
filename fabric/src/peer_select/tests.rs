//! The seed's eight P3 behaviours, one named test each, plus the worked
//! example of `docs/peer-selection.md`.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::topology::{EndpointCandidate, EndpointScope, NodeId, TopologyLabels};

fn id(n: u8) -> NodeId {
    NodeId([n; 32])
}

fn labels(area: &str, locality_group: &str, nat_group: &str) -> TopologyLabels {
    TopologyLabels {
        area: area.into(),
        site_id: format!("{area}-site"),
        locality_group: locality_group.into(),
        nat_group: nat_group.into(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address literal")
}

fn public(a: &str) -> EndpointCandidate {
    EndpointCandidate {
        addr: addr(a),
        scope: EndpointScope::Public,
        locality_group: None,
        nat_group: None,
    }
}

/// A private endpoint scoped like its owner (scope fields left to the labels).
fn private(a: &str) -> EndpointCandidate {
    EndpointCandidate {
        addr: addr(a),
        scope: EndpointScope::Private,
        locality_group: None,
        nat_group: None,
    }
}

fn peer(n: u8, l: TopologyLabels, endpoints: Vec<EndpointCandidate>) -> PeerCandidate {
    PeerCandidate {
        id: id(n),
        labels: l,
        endpoints,
        roles: PeerRoles::default(),
        critical: false,
    }
}

fn relay(mut p: PeerCandidate) -> PeerCandidate {
    p.roles.is_relay = true;
    p
}

fn local(l: TopologyLabels) -> LocalNode {
    LocalNode {
        id: id(0),
        labels: l,
    }
}

fn cfg(direct: u32, relay: u32) -> PlannerConfig {
    PlannerConfig {
        desired_direct_peers: direct,
        desired_relay_peers: relay,
    }
}

fn ms(n: u64) -> Option<Duration> {
    Some(Duration::from_millis(n))
}

fn home() -> TopologyLabels {
    labels("home", "home-lan", "home-nat")
}

fn plan_ok(
    l: &LocalNode,
    c: &[PeerCandidate],
    o: &Observations,
    config: PlannerConfig,
) -> PeerPlan {
    match plan(l, c, o, &config) {
        Ok(p) => p,
        Err(e) => panic!("plan failed: {e}"),
    }
}

fn class_of(p: &PeerPlan, peer: u8, a: &str) -> (EndpointClass, EndpointHealth) {
    let d = p.decision(&id(peer)).expect("peer is in the plan");
    let e = d
        .endpoints
        .iter()
        .find(|e| e.endpoint.addr == addr(a))
        .expect("endpoint is in the plan");
    (e.class, e.health)
}

#[test]
fn behaviour_1_prefers_peers_from_other_areas() {
    let me = local(home());
    // Same-area peers answer probes quickly; the outside ones are untested.
    // Every peer has its own NAT so only `area` tells them apart.
    let candidates = vec![
        peer(
            1,
            labels("home", "l1", "n1"),
            vec![public("198.51.100.1:7443")],
        ),
        peer(
            2,
            labels("home", "l2", "n2"),
            vec![public("198.51.100.2:7443")],
        ),
        peer(
            3,
            labels("berlin", "l3", "n3"),
            vec![public("198.51.100.3:7443")],
        ),
        peer(
            4,
            labels("berlin", "l4", "n4"),
            vec![public("198.51.100.4:7443")],
        ),
        peer(
            5,
            labels("usa", "l5", "n5"),
            vec![public("198.51.100.5:7443")],
        ),
    ];
    let mut obs = Observations::default();
    obs.record_probe(id(1), addr("198.51.100.1:7443"), ProbeOutcome::Ok, ms(1));
    obs.record_probe(id(2), addr("198.51.100.2:7443"), ProbeOutcome::Ok, ms(1));
    obs.record_probe(id(3), addr("198.51.100.3:7443"), ProbeOutcome::Ok, ms(30));
    obs.record_probe(id(4), addr("198.51.100.4:7443"), ProbeOutcome::Ok, ms(20));

    let p = plan_ok(&me, &candidates, &obs, cfg(2, 0));
    // One peer per foreign area: berlin is covered by its faster peer (4);
    // berlin's other peer (3, probe ok) then loses to usa's untested peer.
    let direct = p.direct_peers();
    assert_eq!(direct.len(), 2);
    assert!(direct.contains(&id(5)), "usa must be covered: {direct:?}");
    assert!(
        direct.contains(&id(4)),
        "berlin by its faster peer: {direct:?}"
    );
    assert!(p
        .decision(&id(5))
        .expect("planned")
        .reasons
        .contains(&PickReason::NewArea { area: "usa".into() }));

    // With room for three, the third pick is outside the local area too.
    let p = plan_ok(&me, &candidates, &obs, cfg(3, 0));
    assert_eq!(p.direct_peers(), vec![id(4), id(5), id(3)]);
}

#[test]
fn behaviour_2_prefers_peers_behind_different_ingress() {
    let me = local(home());
    // All in one foreign area, so only `nat_group` tells them apart.
    let candidates = vec![
        peer(
            1,
            labels("berlin", "b1", "home-nat"),
            vec![public("198.51.100.1:7443")],
        ),
        peer(
            2,
            labels("berlin", "b2", "berlin-nat-1"),
            vec![public("198.51.100.2:7443")],
        ),
        peer(
            3,
            labels("berlin", "b3", "berlin-nat-1"),
            vec![public("198.51.100.3:7443")],
        ),
        peer(
            4,
            labels("berlin", "b4", "berlin-nat-2"),
            vec![public("198.51.100.4:7443")],
        ),
    ];
    let mut obs = Observations::default();
    // Peer 1 shares our own public edge; it is ready and still loses.
    obs.record_direct_ready(id(1), addr("198.51.100.1:7443"), ms(5));
    obs.record_direct_ready(id(2), addr("198.51.100.2:7443"), ms(5));
    obs.record_direct_ready(id(3), addr("198.51.100.3:7443"), ms(5));

    let p = plan_ok(&me, &candidates, &obs, cfg(2, 0));
    assert_eq!(p.direct_peers(), vec![id(2), id(4)]);
    assert!(p
        .decision(&id(4))
        .expect("planned")
        .reasons
        .contains(&PickReason::NewIngress {
            ingress: IngressKey::NatGroup("berlin-nat-2".into())
        }));
    let p = plan_ok(&me, &candidates, &obs, cfg(3, 0));
    // A second peer behind berlin-nat-1 beats a peer behind our own NAT only
    // on readiness, not on diversity: both add no new ingress.
    assert_eq!(p.direct_peers(), vec![id(2), id(4), id(1)]);
    // Our own NAT is not an independent ingress: ready peers 1, 2, 3 give one.
    assert_eq!(p.metrics.independent_ingress_ready_count, 1);
}

#[test]
fn behaviour_3_keeps_direct_ready_and_relay_ready_separate() {
    let me = local(home());
    let candidates = vec![
        peer(
            1,
            labels("berlin", "b", "bn"),
            vec![public("198.51.100.1:7443")],
        ),
        peer(
            2,
            labels("usa", "u", "un"),
            vec![public("198.51.100.2:7443")],
        ),
        peer(
            3,
            labels("tokyo", "t", "tn"),
            vec![public("198.51.100.3:7443")],
        ),
        relay(peer(
            9,
            labels("home", "home-lan", "home-nat"),
            vec![private("192.168.1.9:7443")],
        )),
    ];
    let mut obs = Observations::default();
    obs.record_direct_ready(id(1), addr("198.51.100.1:7443"), ms(20));
    obs.record_relay_ready(id(2), id(9));
    // Peer 3 has both: it is direct-ready, and only that.
    obs.record_direct_ready(id(3), addr("198.51.100.3:7443"), ms(200));
    obs.record_relay_ready(id(3), id(9));
    obs.record_direct_ready(id(9), addr("192.168.1.9:7443"), ms(1));

    let p = plan_ok(&me, &candidates, &obs, cfg(4, 1));
    assert_eq!(p.metrics.direct_ready_count, 3, "peers 1, 3 and the relay");
    assert_eq!(p.metrics.relay_ready_count, 1, "peer 2 only");
    // external areas with a *direct*-ready peer: berlin and tokyo, not usa.
    assert_eq!(p.metrics.external_area_ready_count, 2);
    assert_eq!(p.metrics.recovery_path_count, 3);

    let d2 = p.decision(&id(2)).expect("planned");
    assert!(!d2.ready.direct);
    assert_eq!(d2.ready.relay_via, Some(id(9)));
    // Its relayed path does not make its direct endpoint look ready.
    assert_eq!(d2.tier, DirectTier::Untested);
    assert_eq!(p.decision(&id(3)).expect("planned").tier, DirectTier::Ready);
    // A relay "via" the peer itself is a misreport, not a relayed path.
    let mut bogus = Observations::default();
    bogus.record_relay_ready(id(2), id(2));
    let m = compute_metrics(&me, &candidates, &bogus).expect("no duplicates");
    assert_eq!(m.relay_ready_count, 0);
}

#[test]
fn behaviour_4_keeps_a_recovery_path_outside_the_local_area() {
    let me = local(home());
    let r = relay(peer(9, home(), vec![private("192.168.1.9:7443")]));
    let in_area = peer(1, home(), vec![private("192.168.1.1:7443")]);
    // Peer 5 is outside, reachable only through the relay: its one endpoint
    // is private to another LAN.
    let outside = peer(
        5,
        labels("usa", "usa-lan", "usa-nat"),
        vec![private("10.5.0.5:7443")],
    );
    let candidates = vec![r.clone(), in_area.clone(), outside.clone()];
    let mut obs = Observations::default();
    obs.record_direct_ready(id(9), addr("192.168.1.9:7443"), ms(1));
    obs.record_direct_ready(id(1), addr("192.168.1.1:7443"), ms(1));
    obs.record_relay_ready(id(5), id(9));

    // No relayed peers wanted, yet the one ready path outside the area is kept.
    let p = plan_ok(&me, &candidates, &obs, cfg(2, 0));
    let d5 = p.decision(&id(5)).expect("planned");
    assert_eq!(d5.assignment, Assignment::Relay { via: id(9) });
    assert_eq!(d5.reasons.first(), Some(&PickReason::RecoveryPath));
    assert_eq!(p.recovery, RecoveryStatus::Ready { peer: id(5) });
    assert_eq!(p.metrics.recovery_path_count, 1);

    // Even with nothing wanted, a reachable outside peer is planned.
    let untested = peer(
        6,
        labels("berlin", "bl", "bn"),
        vec![public("198.51.100.6:7443")],
    );
    let p = plan_ok(
        &me,
        &[in_area.clone(), untested],
        &Observations::default(),
        cfg(0, 0),
    );
    assert_eq!(p.direct_peers(), vec![id(6)]);
    assert_eq!(p.recovery, RecoveryStatus::Planned { peer: id(6) });

    // A ready outside peer is kept even when diversity picked an untested one:
    // 7 shares our NAT (no new ingress) but is ready; 8 wins the direct slot.
    let ready_same_nat = peer(
        7,
        labels("berlin", "bl", "home-nat"),
        vec![public("198.51.100.7:7443")],
    );
    let untested_new = peer(
        8,
        labels("usa", "ul", "un"),
        vec![public("198.51.100.8:7443")],
    );
    let mut obs = Observations::default();
    obs.record_direct_ready(id(7), addr("198.51.100.7:7443"), ms(30));
    let p = plan_ok(&me, &[ready_same_nat, untested_new], &obs, cfg(1, 0));
    assert_eq!(p.direct_peers(), vec![id(8), id(7)]);
    assert_eq!(p.recovery, RecoveryStatus::Ready { peer: id(7) });

    // Nothing outside: nothing to keep, and the plan says so.
    let p = plan_ok(&me, &[in_area], &Observations::default(), cfg(1, 0));
    assert_eq!(p.recovery, RecoveryStatus::NoCandidateOutsideArea);
}

#[test]
fn behaviour_5_public_endpoint_behind_our_nat_requires_external_network() {
    let me = local(home());
    let e = "198.51.100.10:7443";
    let neighbour = peer(1, labels("home", "home-lan-2", "home-nat"), vec![public(e)]);
    let elsewhere = peer(
        2,
        labels("usa", "ul", "un"),
        vec![public("198.51.100.20:7443")],
    );
    let candidates = vec![neighbour, elsewhere];

    let p = plan_ok(&me, &candidates, &Observations::default(), cfg(2, 0));
    assert_eq!(class_of(&p, 1, e).0, EndpointClass::ExternalNetworkRequired);
    // A public endpoint of a peer behind another NAT needs no validation.
    assert_eq!(
        class_of(&p, 2, "198.51.100.20:7443").0,
        EndpointClass::Public
    );

    // A same-area observer reaching it proves nothing (it hairpinned too).
    let mut obs = Observations::default();
    let same_area = ObserverReport {
        area: "home".into(),
        nat_group: "other-home-nat".into(),
        reached: true,
    };
    obs.record_report(id(1), addr(e), same_area);
    let p = plan_ok(&me, &candidates, &obs, cfg(2, 0));
    assert_eq!(class_of(&p, 1, e).0, EndpointClass::ExternalNetworkRequired);

    // A cross-area observer reaching it validates it.
    obs.record_report(
        id(1),
        addr(e),
        ObserverReport {
            area: "usa".into(),
            nat_group: "un".into(),
            reached: true,
        },
    );
    let p = plan_ok(&me, &candidates, &obs, cfg(2, 0));
    assert_eq!(class_of(&p, 1, e).0, EndpointClass::Public);
}

#[test]
fn behaviour_6_same_area_hairpin_failure_does_not_demote_a_validated_public_endpoint() {
    let e = "198.51.100.10:7443";
    let f = "198.51.100.11:7443";
    // The peer sits in our area, behind our NAT, with two public endpoints.
    let owner = peer(1, home(), vec![public(f), public(e)]);
    let validated = ObserverReport {
        area: "usa".into(),
        nat_group: "un".into(),
        reached: true,
    };
    let hairpin = ObserverReport {
        area: "home".into(),
        nat_group: "home-nat".into(),
        reached: false,
    };
    let mut obs = Observations::default();
    obs.record_probe(id(1), addr(e), ProbeOutcome::Failed, None);
    obs.record_report(id(1), addr(e), hairpin.clone());
    obs.record_report(id(1), addr(e), validated.clone());
    obs.record_report(id(1), addr(f), validated.clone());

    let me = local(home());
    let p = plan_ok(&me, std::slice::from_ref(&owner), &obs, cfg(1, 0));
    assert_eq!(
        class_of(&p, 1, e),
        (EndpointClass::Public, EndpointHealth::Unknown)
    );
    // Not demoted: e still sorts before f by address, as if never probed.
    assert_eq!(
        rank_endpoints(&me.labels, &owner, &obs),
        vec![public(e), public(f)]
    );

    // From outside the owner's area and NAT the same failure is real.
    let outsider = local(labels("tokyo", "tl", "tn"));
    let p = plan_ok(&outsider, std::slice::from_ref(&owner), &obs, cfg(1, 0));
    assert_eq!(class_of(&p, 1, e).1, EndpointHealth::Failed);
    assert_eq!(
        rank_endpoints(&outsider.labels, &owner, &obs),
        vec![public(f), public(e)]
    );

    // Without the cross-area validation there is nothing to protect.
    let mut unvalidated = Observations::default();
    unvalidated.record_probe(id(1), addr(e), ProbeOutcome::Failed, None);
    let p = plan_ok(&me, std::slice::from_ref(&owner), &unvalidated, cfg(1, 0));
    assert_eq!(
        class_of(&p, 1, e),
        (
            EndpointClass::ExternalNetworkRequired,
            EndpointHealth::Failed
        )
    );

    // Observer reports alone: hairpin failures from the owner's area are
    // ignored; failures from another area demote.
    let mut reports = Observations::default();
    reports.record_report(id(1), addr(e), hairpin.clone());
    reports.record_report(id(1), addr(e), hairpin);
    let p = plan_ok(&outsider, std::slice::from_ref(&owner), &reports, cfg(1, 0));
    assert_eq!(class_of(&p, 1, e).1, EndpointHealth::Unknown);
    reports.record_report(
        id(1),
        addr(e),
        ObserverReport {
            area: "berlin".into(),
            nat_group: "bn".into(),
            reached: false,
        },
    );
    let p = plan_ok(&outsider, std::slice::from_ref(&owner), &reports, cfg(1, 0));
    assert_eq!(class_of(&p, 1, e).1, EndpointHealth::Failed);
}

#[test]
fn behaviour_7_prefers_scoped_private_endpoint_in_same_segment_or_nat_group() {
    let me = local(home());
    let pub_ep = public("198.51.100.1:7443");
    let priv_ep = private("192.168.1.1:7443");
    // The public endpoint answered fast; the private one is untested.
    let mut obs = Observations::default();
    obs.record_probe(id(1), pub_ep.addr, ProbeOutcome::Ok, ms(1));
    obs.record_probe(id(2), pub_ep.addr, ProbeOutcome::Ok, ms(1));
    obs.record_report(
        id(2),
        pub_ep.addr,
        ObserverReport {
            area: "usa".into(),
            nat_group: "un".into(),
            reached: true,
        },
    );

    // Same locality group.
    let same_lan = peer(1, home(), vec![pub_ep.clone(), priv_ep.clone()]);
    assert_eq!(
        rank_endpoints(&me.labels, &same_lan, &obs),
        vec![priv_ep.clone(), pub_ep.clone()]
    );
    // Other segment, same NAT group.
    let same_nat = peer(
        2,
        labels("home", "home-lan-2", "home-nat"),
        vec![pub_ep.clone(), priv_ep.clone()],
    );
    let ranked = classify_endpoints(&me.labels, &same_nat, &obs);
    assert_eq!(ranked[0].endpoint, priv_ep);
    assert_eq!(ranked[0].class, EndpointClass::PreferredPrivate);
    assert_eq!(ranked[1].class, EndpointClass::Public);

    // An explicit endpoint scope decides over the owner's labels.
    let mut scoped = priv_ep.clone();
    scoped.locality_group = Some("home-lan".into());
    let travelling = peer(
        3,
        labels("usa", "usa-lan", "usa-nat"),
        vec![pub_ep.clone(), scoped.clone()],
    );
    assert_eq!(
        rank_endpoints(&me.labels, &travelling, &Observations::default()),
        vec![scoped, pub_ep]
    );
}

#[test]
fn behaviour_8_skips_private_endpoints_of_foreign_segments() {
    let me = local(home());
    let foreign = peer(
        1,
        labels("usa", "usa-lan", "usa-nat"),
        vec![
            private("10.0.0.5:7443"),
            // Declared public, but the address only means something in a LAN.
            public("192.168.50.5:7443"),
            public("198.51.100.5:7443"),
        ],
    );
    assert_eq!(
        rank_endpoints(&me.labels, &foreign, &Observations::default()),
        vec![public("198.51.100.5:7443")]
    );
    let all = classify_endpoints(&me.labels, &foreign, &Observations::default());
    assert_eq!(all.len(), 3, "skipped endpoints stay visible in the plan");
    assert_eq!(all[0].class, EndpointClass::Public);
    for skipped in &all[1..] {
        assert_eq!(skipped.class, EndpointClass::SkippedForeignPrivate);
        assert!(
            skipped.reason.starts_with("skipped, not probed"),
            "{}",
            skipped.reason
        );
    }

    // A peer reachable only on foreign private addresses has no direct path
    // worth probing; without a relay it is unreachable, not probed.
    let hidden = peer(
        2,
        labels("usa", "usa-lan", "usa-nat"),
        vec![private("10.0.0.6:7443")],
    );
    let p = plan_ok(&me, &[hidden], &Observations::default(), cfg(3, 0));
    let d = p.decision(&id(2)).expect("planned");
    assert_eq!(d.assignment, Assignment::Unreachable);
    assert!(d.probe_order().is_empty());
    assert_eq!(p.recovery, RecoveryStatus::Unavailable);
}

#[test]
fn unknown_scope_private_endpoint_is_probed_after_confirmed_ones() {
    let me = local(home());
    let p = peer(
        1,
        TopologyLabels::default(),
        vec![private("10.9.9.9:7443"), public("198.51.100.9:7443")],
    );
    let all = classify_endpoints(&me.labels, &p, &Observations::default());
    assert_eq!(all[0].class, EndpointClass::Public);
    assert_eq!(all[1].class, EndpointClass::UnconfirmedPrivate);
}

#[test]
fn duplicate_directory_entries_are_an_error_and_the_local_node_is_skipped() {
    let me = local(home());
    let a = peer(1, home(), vec![]);
    let err = plan(
        &me,
        &[a.clone(), a.clone()],
        &Observations::default(),
        &cfg(1, 0),
    );
    assert_eq!(err, Err(PlanError::DuplicateCandidate { peer: id(1) }));
    let myself = peer(0, home(), vec![public("198.51.100.1:7443")]);
    let p = plan_ok(&me, &[myself, a], &Observations::default(), cfg(1, 0));
    assert_eq!(p.peers.len(), 1);
    assert_eq!(p.peers[0].peer, id(1));
}

/// The fleet of `docs/peer-selection.md`, "Worked example". Keep the two in step.
pub(super) fn worked_example() -> (LocalNode, Vec<PeerCandidate>, Observations) {
    let me = LocalNode {
        id: id(1),
        labels: labels("home", "home-lan", "home-nat"),
    };
    let home_2 = peer(
        2,
        labels("home", "home-lan", "home-nat"),
        vec![private("192.168.10.2:7443"), public("198.51.100.10:7444")],
    );
    let test_1 = peer(
        3,
        labels("test", "test-lan", "test-nat"),
        vec![private("10.20.0.3:7443"), public("203.0.113.20:7443")],
    );
    let test_2 = peer(
        4,
        labels("test", "test-lan", "test-nat"),
        vec![private("10.20.0.4:7443")],
    );
    let mut usa = relay(peer(
        5,
        labels("usa", "usa-dc", ""),
        vec![public("192.0.2.50:7443")],
    ));
    usa.roles.is_ingress = true;
    usa.critical = true;

    let mut obs = Observations::default();
    obs.record_direct_ready(id(2), addr("192.168.10.2:7443"), ms(1));
    obs.record_probe(
        id(2),
        addr("198.51.100.10:7444"),
        ProbeOutcome::Failed,
        None,
    );
    obs.record_report(
        id(2),
        addr("198.51.100.10:7444"),
        ObserverReport {
            area: "test".into(),
            nat_group: "test-nat".into(),
            reached: true,
        },
    );
    obs.record_probe(id(3), addr("203.0.113.20:7443"), ProbeOutcome::Ok, ms(40));
    obs.record_relay_ready(id(4), id(5));
    obs.record_direct_ready(id(5), addr("192.0.2.50:7443"), ms(140));
    (me, vec![home_2, test_1, test_2, usa], obs)
}

#[test]
fn worked_example_matches_the_documentation() {
    let (me, candidates, obs) = worked_example();
    let p = plan_ok(&me, &candidates, &obs, cfg(3, 1));
    let order: Vec<(NodeId, Assignment)> = p.peers.iter().map(|d| (d.peer, d.assignment)).collect();
    assert_eq!(
        order,
        vec![
            (id(5), Assignment::Direct),
            (id(3), Assignment::Direct),
            (id(2), Assignment::Direct),
            (id(4), Assignment::Relay { via: id(5) }),
        ]
    );
    assert_eq!(
        p.metrics,
        PeerMetrics {
            direct_ready_count: 2,
            relay_ready_count: 1,
            external_area_ready_count: 1,
            independent_ingress_ready_count: 2,
            recovery_path_count: 2,
        }
    );
    assert_eq!(p.recovery, RecoveryStatus::Ready { peer: id(5) });
    assert_eq!(
        class_of(&p, 2, "192.168.10.2:7443"),
        (EndpointClass::PreferredPrivate, EndpointHealth::Ready)
    );
    assert_eq!(
        class_of(&p, 2, "198.51.100.10:7444"),
        (EndpointClass::Public, EndpointHealth::Unknown)
    );
    assert_eq!(
        class_of(&p, 3, "10.20.0.3:7443").0,
        EndpointClass::SkippedForeignPrivate
    );
    let d3 = p.decision(&id(3)).expect("planned");
    assert_eq!(d3.probe_order(), vec![public("203.0.113.20:7443")]);
    let report = evaluate(
        &ResilienceTarget {
            external_area_ready_count: Some(2),
            recovery_path_count: Some(1),
            ..Default::default()
        },
        &p.metrics,
    );
    assert_eq!(
        report.unmet,
        vec![UnmetTarget {
            metric: Metric::ExternalAreaReadyCount,
            wanted: 2,
            actual: 1
        }]
    );
}
