//! `decide`, the node's level-triggered control-session decision, checked
//! over every combination of live session, canonical endpoints and config.

use fabric::topology::NodeId;
use fabric_node_agent::control::{
    decide, ControlConfigFile, LiveSession, SessionAction, SessionConfig,
};
use fabric_proto::endpoint::ControlEndpoint;

const MAX: u32 = 3;

fn pool() -> Vec<ControlEndpoint> {
    vec![
        ControlEndpoint::fabric(NodeId([1; 32])),
        ControlEndpoint::fabric(NodeId([2; 32])),
        ControlEndpoint::fabric(NodeId([3; 32])),
        ControlEndpoint::Compat {
            url: "http://127.0.0.1:19191/api/v1".into(),
        },
    ]
}

fn lives() -> Vec<Option<LiveSession>> {
    let mut out = vec![None];
    for e in pool() {
        for f in [0, 1, MAX, MAX + 5] {
            out.push(Some(LiveSession {
                endpoint: e.clone(),
                consecutive_failures: f,
            }));
        }
    }
    out
}

/// Every ordered list of distinct fabric endpoints of length 0..=3.
fn canonicals() -> Vec<Vec<ControlEndpoint>> {
    let f: Vec<_> = pool().into_iter().take(3).collect();
    let mut out = vec![vec![]];
    for a in &f {
        out.push(vec![a.clone()]);
        for b in f.iter().filter(|b| *b != a) {
            out.push(vec![a.clone(), b.clone()]);
            for c in f.iter().filter(|c| *c != a && *c != b) {
                out.push(vec![a.clone(), b.clone(), c.clone()]);
            }
        }
    }
    out
}

fn configs() -> Vec<SessionConfig> {
    let p = pool();
    vec![
        SessionConfig {
            fallback: vec![],
            max_failures: MAX,
        },
        SessionConfig {
            fallback: vec![p[3].clone()],
            max_failures: MAX,
        },
        SessionConfig {
            fallback: vec![p[2].clone(), p[3].clone()],
            max_failures: MAX,
        },
    ]
}

fn after(live: Option<&LiveSession>, a: &SessionAction) -> Option<LiveSession> {
    match a {
        SessionAction::Keep => live.cloned(),
        SessionAction::Connect(to) | SessionAction::Reconnect { to, .. } => Some(LiveSession {
            endpoint: to.clone(),
            consecutive_failures: 0,
        }),
        SessionAction::Disconnect | SessionAction::Wait => None,
    }
}

#[test]
fn decide_is_exhaustively_level_triggered_and_converges_in_one_step() {
    let mut cases = 0;
    for live in lives() {
        for canonical in canonicals() {
            for config in configs() {
                cases += 1;
                let a = decide(live.as_ref(), &canonical, &config);
                let ctx =
                    format!("live={live:?} canonical={canonical:?} config={config:?} -> {a:?}");
                let healthy = live.as_ref().is_some_and(|l| l.consecutive_failures < MAX);
                let on_canonical = live
                    .as_ref()
                    .is_some_and(|l| canonical.is_empty() || canonical.contains(&l.endpoint));
                // Keep exactly when healthy and on a desired endpoint.
                assert_eq!(a == SessionAction::Keep, healthy && on_canonical, "{ctx}");
                // Wherever it goes, it goes to a canonical endpoint if any resolves.
                if let SessionAction::Connect(to) | SessionAction::Reconnect { to, .. } = &a {
                    if canonical.is_empty() {
                        assert!(config.fallback.contains(to), "{ctx}");
                    } else {
                        assert!(canonical.contains(to), "{ctx}");
                    }
                }
                // Reconnect names the live endpoint it leaves; Connect only without one.
                match (&a, &live) {
                    (SessionAction::Reconnect { from, .. }, Some(l)) => {
                        assert_eq!(from, &l.endpoint, "{ctx}")
                    }
                    (SessionAction::Reconnect { .. }, None) => panic!("{ctx}"),
                    (SessionAction::Connect(_), Some(_)) => panic!("{ctx}"),
                    _ => {}
                }
                // A failing session on a canonical endpoint rotates to another
                // provider when there is one.
                if let (Some(l), SessionAction::Reconnect { to, .. }) = (&live, &a) {
                    if canonical.len() > 1 && canonical.contains(&l.endpoint) {
                        assert_ne!(to, &l.endpoint, "{ctx}");
                    }
                }
                // Level-triggered: the state the action produces is stable.
                let next = after(live.as_ref(), &a);
                let again = decide(next.as_ref(), &canonical, &config);
                if next.is_some() {
                    assert_eq!(
                        again,
                        SessionAction::Keep,
                        "not converged: {ctx} then {again:?}"
                    );
                }
                // Pure: same inputs, same answer.
                assert_eq!(decide(live.as_ref(), &canonical, &config), a, "{ctx}");
            }
        }
    }
    assert!(cases > 500, "{cases} cases");
}

#[test]
fn noop_config_rewrite_still_moves_a_stale_compat_session_to_the_canonical_endpoint() {
    // The seed's bug: the control-endpoint rewrite produced identical bytes,
    // nothing "changed", and the node stayed on the compat session. The
    // decision never looks at whether the file changed, only at the session.
    let bytes = br#"{"fallback_endpoints":["http://127.0.0.1:19191/api/v1"]}"#;
    let path = std::path::Path::new("control.json");
    let before = serde_json::from_slice::<ControlConfigFile>(bytes)
        .expect("config")
        .session_config(path)
        .expect("session config");
    // The rewrite: the same bytes written again, read back as a new buffer.
    let rewritten_bytes = bytes.to_vec();
    let rewritten = serde_json::from_slice::<ControlConfigFile>(&rewritten_bytes)
        .expect("config")
        .session_config(path)
        .expect("session config");
    assert_eq!(before, rewritten, "the rewrite produced identical bytes");
    let live = LiveSession {
        endpoint: pool()[3].clone(),
        consecutive_failures: 0,
    };
    let canonical = vec![pool()[0].clone()];
    for cfg in [&before, &rewritten] {
        assert_eq!(
            decide(Some(&live), &canonical, cfg),
            SessionAction::Reconnect {
                from: pool()[3].clone(),
                to: pool()[0].clone()
            }
        );
    }
}

#[test]
fn a_session_on_an_old_fabric_endpoint_moves_to_the_current_provider() {
    let live = LiveSession {
        endpoint: pool()[2].clone(),
        consecutive_failures: 0,
    };
    let cfg = SessionConfig {
        fallback: vec![],
        max_failures: MAX,
    };
    assert_eq!(
        decide(Some(&live), &[pool()[0].clone()], &cfg),
        SessionAction::Reconnect {
            from: pool()[2].clone(),
            to: pool()[0].clone()
        }
    );
}

#[test]
fn losing_the_registry_does_not_drop_a_healthy_session() {
    let live = LiveSession {
        endpoint: pool()[0].clone(),
        consecutive_failures: 0,
    };
    let cfg = SessionConfig {
        fallback: vec![pool()[3].clone()],
        max_failures: MAX,
    };
    assert_eq!(decide(Some(&live), &[], &cfg), SessionAction::Keep);
    assert_eq!(
        decide(None, &[], &SessionConfig::default()),
        SessionAction::Wait
    );
}
