//! Properties of the peer planner over random fleets: the recovery floor
//! (behaviour 4), direct/relay separation (behaviour 3), probe lists without
//! foreign-scope private endpoints (behaviour 8), and determinism
//! independent of input order.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use fabric::peer_select::{
    classify_endpoints, plan, rank_endpoints, Assignment, EndpointClass, EndpointHealth, LocalNode,
    Observations, ObserverReport, PeerCandidate, PeerPlan, PeerRoles, PlannerConfig, ProbeOutcome,
    RecoveryStatus,
};
use fabric::topology::{EndpointCandidate, EndpointScope, NodeId, TopologyLabels};
use proptest::prelude::*;

fn label() -> impl Strategy<Value = String> {
    // Small pools so that areas, segments and NATs collide often; "" is unknown.
    prop::sample::select(vec!["", "a", "b", "c"]).prop_map(String::from)
}

fn opt_label() -> impl Strategy<Value = Option<String>> {
    prop::option::of(label())
}

fn labels() -> impl Strategy<Value = TopologyLabels> {
    (label(), label(), label(), label()).prop_map(|(area, site_id, locality_group, nat_group)| {
        TopologyLabels {
            area,
            site_id,
            locality_group,
            nat_group,
        }
    })
}

fn endpoint() -> impl Strategy<Value = EndpointCandidate> {
    (any::<bool>(), 0u8..3, 1u8..5, opt_label(), opt_label()).prop_map(
        |(public, net, host, locality_group, nat_group)| {
            let ip = match net {
                0 => Ipv4Addr::new(10, 0, 0, host),
                1 => Ipv4Addr::new(192, 168, 1, host),
                _ => Ipv4Addr::new(198, 51, 100, host),
            };
            EndpointCandidate {
                addr: SocketAddr::new(IpAddr::V4(ip), 7443),
                scope: if public {
                    EndpointScope::Public
                } else {
                    EndpointScope::Private
                },
                locality_group,
                nat_group,
            }
        },
    )
}

#[derive(Clone, Debug)]
struct EndpointObs {
    probe: u8,
    rtt_ms: Option<u16>,
    direct_ready: bool,
    reports: Vec<(String, String, bool)>,
}

fn endpoint_obs() -> impl Strategy<Value = Option<EndpointObs>> {
    prop::option::of(
        (
            0u8..3,
            prop::option::of(0u16..300),
            prop::bool::weighted(0.25),
            prop::collection::vec((label(), label(), any::<bool>()), 0..3),
        )
            .prop_map(|(probe, rtt_ms, direct_ready, reports)| EndpointObs {
                probe,
                rtt_ms,
                direct_ready,
                reports,
            }),
    )
}

#[derive(Clone, Debug)]
struct PeerSpec {
    labels: TopologyLabels,
    endpoints: Vec<(EndpointCandidate, Option<EndpointObs>)>,
    is_relay: bool,
    is_ingress: bool,
    critical: bool,
    /// Index into the fleet (0 = local node, n+1 = a node outside the directory).
    relay_via: Option<u8>,
}

fn peer_spec() -> impl Strategy<Value = PeerSpec> {
    (
        labels(),
        prop::collection::vec((endpoint(), endpoint_obs()), 0..4),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(0u8..10),
    )
        .prop_map(
            |(labels, endpoints, is_relay, is_ingress, critical, relay_via)| PeerSpec {
                labels,
                endpoints,
                is_relay,
                is_ingress,
                critical,
                relay_via,
            },
        )
}

#[derive(Clone, Debug)]
struct Case {
    local: LocalNode,
    candidates: Vec<PeerCandidate>,
    observations: Observations,
    config: PlannerConfig,
    shuffle_keys: Vec<u32>,
}

fn id(n: u8) -> NodeId {
    NodeId([n; 32])
}

fn case() -> impl Strategy<Value = Case> {
    (
        labels(),
        prop::collection::vec(peer_spec(), 0..8),
        0u32..5,
        0u32..3,
        prop::collection::vec(any::<u32>(), 8 * 5),
    )
        .prop_map(|(local_labels, specs, direct, relay, shuffle_keys)| {
            let mut observations = Observations::default();
            let mut candidates = Vec::new();
            for (i, spec) in specs.into_iter().enumerate() {
                // Ids 1..=n; id 0 is the local node.
                let pid = id(u8::try_from(i + 1).unwrap_or(u8::MAX));
                for (ep, obs) in &spec.endpoints {
                    let Some(o) = obs else { continue };
                    let e = observations.endpoint_mut(pid, ep.addr);
                    e.last_probe = match o.probe {
                        0 => ProbeOutcome::None,
                        1 => ProbeOutcome::Ok,
                        _ => ProbeOutcome::Failed,
                    };
                    e.rtt = o.rtt_ms.map(|ms| Duration::from_millis(u64::from(ms)));
                    e.direct_ready = o.direct_ready;
                    e.reports = o
                        .reports
                        .iter()
                        .map(|(area, nat_group, reached)| ObserverReport {
                            area: area.clone(),
                            nat_group: nat_group.clone(),
                            reached: *reached,
                        })
                        .collect();
                }
                if let Some(via) = spec.relay_via {
                    observations.record_relay_ready(pid, id(via));
                }
                candidates.push(PeerCandidate {
                    id: pid,
                    labels: spec.labels,
                    endpoints: spec.endpoints.into_iter().map(|(e, _)| e).collect(),
                    roles: PeerRoles {
                        is_relay: spec.is_relay,
                        is_ingress: spec.is_ingress,
                    },
                    critical: spec.critical,
                });
            }
            Case {
                local: LocalNode {
                    id: id(0),
                    labels: local_labels,
                },
                candidates,
                observations,
                config: PlannerConfig {
                    desired_direct_peers: direct,
                    desired_relay_peers: relay,
                },
                shuffle_keys,
            }
        })
}

fn outside(local: &TopologyLabels, peer: &TopologyLabels) -> bool {
    !local.area.is_empty() && !peer.area.is_empty() && local.area != peer.area
}

fn run(c: &Case, candidates: &[PeerCandidate]) -> PeerPlan {
    match plan(&c.local, candidates, &c.observations, &c.config) {
        Ok(p) => p,
        Err(e) => panic!("generated directory has unique ids, yet: {e}"),
    }
}

/// Raw readiness straight from the observations, not through the planner.
fn raw_direct_ready(obs: &Observations, peer: NodeId) -> bool {
    obs.peer(&peer)
        .is_some_and(|p| p.endpoints.values().any(|e| e.direct_ready))
}

fn raw_relay_ready(obs: &Observations, peer: NodeId) -> bool {
    obs.peer(&peer)
        .and_then(|p| p.relay_ready_via)
        .is_some_and(|via| via != peer)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_reachable_peer_outside_the_area_yields_a_kept_recovery_path(c in case()) {
        let p = run(&c, &c.candidates);
        let any_ready_outside = c.candidates.iter().any(|cand| {
            outside(&c.local.labels, &cand.labels)
                && (raw_direct_ready(&c.observations, cand.id)
                    || raw_relay_ready(&c.observations, cand.id))
        });
        let any_ok_outside = c.candidates.iter().any(|cand| {
            outside(&c.local.labels, &cand.labels)
                && classify_endpoints(&c.local.labels, cand, &c.observations)
                    .iter()
                    .any(|e| e.is_probed() && e.health == EndpointHealth::Ok)
        });
        let kept_outside = |peer: NodeId| {
            p.decision(&peer).is_some_and(|d| {
                d.is_kept() && outside(&c.local.labels, &d.labels)
            })
        };
        if any_ready_outside {
            prop_assert!(p.metrics.recovery_path_count >= 1);
            match p.recovery {
                RecoveryStatus::Ready { peer } => {
                    prop_assert!(kept_outside(peer), "recovery peer not kept outside: {:?}", p);
                    let d = p.decision(&peer).expect("recovery peer is in the plan");
                    prop_assert!(d.ready.direct || d.ready.relay_via.is_some());
                }
                other => prop_assert!(false, "ready peer outside exists, got {:?}", other),
            }
        } else if any_ok_outside {
            match p.recovery {
                RecoveryStatus::Ready { peer } | RecoveryStatus::Planned { peer } => {
                    prop_assert!(kept_outside(peer));
                }
                other => prop_assert!(false, "reachable peer outside exists, got {:?}", other),
            }
        }
        if !c.candidates.iter().any(|cand| outside(&c.local.labels, &cand.labels)) {
            prop_assert_eq!(p.recovery, RecoveryStatus::NoCandidateOutsideArea);
        }
    }

    #[test]
    fn direct_and_relay_ready_counts_never_mix(c in case()) {
        let p = run(&c, &c.candidates);
        let mut direct = 0u32;
        let mut relay_only = 0u32;
        for cand in &c.candidates {
            let d = raw_direct_ready(&c.observations, cand.id);
            let r = raw_relay_ready(&c.observations, cand.id);
            if d {
                direct += 1;
            } else if r {
                relay_only += 1;
            }
            let decision = p.decision(&cand.id).expect("every peer is in the plan");
            // The plan's per-peer view agrees: a relayed path never shows as direct.
            prop_assert_eq!(decision.ready.direct, d);
        }
        prop_assert_eq!(p.metrics.direct_ready_count, direct);
        prop_assert_eq!(p.metrics.relay_ready_count, relay_only);
        let n = u32::try_from(c.candidates.len()).unwrap_or(u32::MAX);
        prop_assert!(p.metrics.direct_ready_count + p.metrics.relay_ready_count <= n);
    }

    #[test]
    fn plan_is_deterministic_and_independent_of_candidate_order(c in case()) {
        let first = run(&c, &c.candidates);
        prop_assert_eq!(&first, &run(&c, &c.candidates));
        let mut order: Vec<usize> = (0..c.candidates.len()).collect();
        order.sort_by_key(|&i| (c.shuffle_keys[i], i));
        let mut shuffled: Vec<PeerCandidate> =
            order.iter().map(|&i| c.candidates[i].clone()).collect();
        // Endpoint order inside a candidate must not matter either.
        for (k, cand) in shuffled.iter_mut().enumerate() {
            if c.shuffle_keys[8 + k] % 2 == 1 {
                cand.endpoints.reverse();
            }
        }
        prop_assert_eq!(&first, &run(&c, &shuffled));
    }

    #[test]
    fn plans_respect_budgets_and_never_probe_foreign_private_endpoints(c in case()) {
        let p = run(&c, &c.candidates);
        let direct = p.peers.iter().filter(|d| d.assignment == Assignment::Direct).count();
        let relayed = p.peers.iter().filter(|d| matches!(d.assignment, Assignment::Relay { .. })).count();
        // The recovery floor may add one peer beyond the budgets, never more.
        let budget = c.config.desired_direct_peers as usize + c.config.desired_relay_peers as usize + 1;
        prop_assert!(direct + relayed <= budget);
        for cand in &c.candidates {
            let probed = rank_endpoints(&c.local.labels, cand, &c.observations);
            let classified = classify_endpoints(&c.local.labels, cand, &c.observations);
            for e in &classified {
                if e.class == EndpointClass::SkippedForeignPrivate {
                    prop_assert!(!probed.contains(&e.endpoint));
                }
            }
            // Skipped endpoints come after every probed one.
            let first_skipped = classified.iter().position(|e| !e.is_probed()).unwrap_or(classified.len());
            prop_assert!(classified[first_skipped..].iter().all(|e| !e.is_probed()));
        }
        for d in &p.peers {
            if let Assignment::Relay { via } = d.assignment {
                prop_assert_ne!(via, d.peer);
            }
        }
    }
}
