//! The control session's decision: pure and level-triggered.

use fabric_proto::endpoint::{canonical_control_endpoints, ControlEndpoint};

use crate::directory::Directory;

/// The session-relevant part of the node's control config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionConfig {
    /// Used only while no canonical endpoint resolves (bootstrap / recovery).
    /// A legacy install has the compat URL here.
    pub fallback: Vec<ControlEndpoint>,
    /// Consecutive failed heartbeats after which a session is replaced.
    pub max_failures: u32,
}

/// The live control session as the driver holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveSession {
    /// The control endpoint the session is open to.
    pub endpoint: ControlEndpoint,
    /// Consecutive failed heartbeats on this session (0 = last one answered).
    pub consecutive_failures: u32,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionAction {
    /// The live session is on a desired endpoint and healthy.
    Keep,
    /// No session: open one to this endpoint.
    Connect(ControlEndpoint),
    /// Close the live session and open one to `to`.
    Reconnect {
        /// The live session's endpoint, to close.
        from: ControlEndpoint,
        /// The endpoint to open the new session to.
        to: ControlEndpoint,
    },
    /// Close the failing session; nothing to go to.
    Disconnect,
    /// No session and nowhere to go yet.
    Wait,
}

/// Level-triggered: what should the session be, given what it is?
///
/// Desired endpoints are the canonical ones; only when none resolves, the
/// config's fallback. A healthy live session on a canonical endpoint is kept
/// (any provider of the record will do, so sessions do not flap between
/// providers). A healthy session while nothing canonical resolves is also
/// kept: losing the registry must not cut the node off. Everything else moves
/// to the first desired endpoint, or, when the failing session is itself on a
/// desired endpoint, to the next one after it.
///
/// Nothing here looks at whether the config file changed: a rewrite with
/// identical bytes changes nothing in the inputs, and a stale session is still
/// replaced because it is not on a canonical endpoint.
pub fn decide(
    live: Option<&LiveSession>,
    canonical: &[ControlEndpoint],
    config: &SessionConfig,
) -> SessionAction {
    let healthy = |l: &LiveSession| l.consecutive_failures < config.max_failures.max(1);
    if let Some(l) = live {
        if healthy(l) && (canonical.is_empty() || canonical.contains(&l.endpoint)) {
            return SessionAction::Keep;
        }
    }
    let desired: &[ControlEndpoint] = if canonical.is_empty() {
        &config.fallback
    } else {
        canonical
    };
    let target = match live.and_then(|l| desired.iter().position(|d| *d == l.endpoint)) {
        Some(i) => desired.get((i + 1) % desired.len()),
        None => desired.first(),
    };
    match (live, target) {
        (None, Some(t)) => SessionAction::Connect(t.clone()),
        (Some(l), Some(t)) => SessionAction::Reconnect {
            from: l.endpoint.clone(),
            to: t.clone(),
        },
        (Some(_), None) => SessionAction::Disconnect,
        (None, None) => SessionAction::Wait,
    }
}

/// The canonical control endpoints from the signed directory
/// (`fabric_proto::endpoint::canonical_control_endpoints` over the node's
/// verified records), `preferred` providers first (the registry's
/// live-first resolution).
pub fn canonical_from_directory(dir: &Directory, preferred: &[String]) -> Vec<ControlEndpoint> {
    canonical_control_endpoints(
        dir.services.values().map(|s| &s.spec),
        |name| dir.nodes.get(name).map(|n| n.node_id),
        preferred,
    )
}
