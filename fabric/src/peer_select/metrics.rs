//! The seed's P3 metrics, computed from what is ready now.
//!
//! Definitions (over the directory's candidates, the local node excluded; a
//! "ready" path is one the transport reports established, not one planned):
//!
//! - `direct_ready_count`: peers with a ready direct path.
//! - `relay_ready_count`: peers with a ready relayed path and **no** ready
//!   direct path. A peer is counted in at most one of the two (behaviour 3).
//! - `external_area_ready_count`: distinct known `area` values, other than the
//!   local node's, that contain at least one peer with a ready **direct** path
//!   (the seed's "direct-ready area coverage").
//! - `independent_ingress_ready_count`: distinct public-edge dependencies
//!   ([`IngressKey`]: the peer's `nat_group`, or the peer itself when it
//!   declares none) among peers with any ready path, not counting the local
//!   node's own `nat_group`.
//! - `recovery_path_count`: peers outside the local area (known, different
//!   `area`) with any ready path, direct or relayed. Each peer counts once.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::input::PeerCandidate;
use super::input::{LocalNode, Observations};
use super::labels::{outside_area, IngressKey};
use super::plan::{Directory, PlanError};
use crate::topology::NodeId;

/// The five metrics of the seed's P3, with the seed's names; the type is the
/// wire contract's, so status, heartbeat and planner share one definition.
pub use fabric_proto::heartbeat::PeerMetrics;

/// Which paths to one peer are ready now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathReadiness {
    /// A direct path is ready on some endpoint.
    pub direct: bool,
    /// The relay of a ready relayed path.
    pub relay_via: Option<NodeId>,
}

impl PathReadiness {
    /// What `observations` report ready for `peer`; nothing for an unobserved peer.
    pub fn of(peer: NodeId, observations: &Observations) -> PathReadiness {
        match observations.peer(&peer) {
            Some(o) => PathReadiness {
                direct: o.direct_ready(),
                relay_via: o.relay_ready(peer),
            },
            None => PathReadiness::default(),
        }
    }

    /// Some path, direct or relayed, is ready.
    pub fn any(&self) -> bool {
        self.direct || self.relay_via.is_some()
    }

    /// Counted in `relay_ready_count`: relayed and not direct.
    pub fn relay_only(&self) -> bool {
        !self.direct && self.relay_via.is_some()
    }
}

/// The metrics of the local node's current paths to the directory's peers.
/// Fails only if the directory lists a node twice.
pub fn compute_metrics(
    local: &LocalNode,
    candidates: &[PeerCandidate],
    observations: &Observations,
) -> Result<PeerMetrics, PlanError> {
    let directory = Directory::new(local, candidates)?;
    Ok(compute(local, &directory, observations))
}

fn count(n: usize) -> u32 {
    // A fleet larger than u32::MAX peers is not a thing; saturate rather than wrap.
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(crate) fn compute(
    local: &LocalNode,
    directory: &Directory<'_>,
    observations: &Observations,
) -> PeerMetrics {
    let own_ingress = IngressKey::of(local.id, &local.labels);
    let mut direct = 0usize;
    let mut relay = 0usize;
    let mut areas = BTreeSet::new();
    let mut ingress = BTreeSet::new();
    let mut recovery = 0usize;
    for peer in directory.peers() {
        let ready = PathReadiness::of(peer.id, observations);
        if ready.direct {
            direct += 1;
        } else if ready.relay_via.is_some() {
            relay += 1;
        }
        let outside = outside_area(&local.labels, &peer.labels);
        if ready.direct && outside {
            areas.insert(peer.labels.area.as_str());
        }
        if ready.any() {
            let key = IngressKey::of(peer.id, &peer.labels);
            if key != own_ingress {
                ingress.insert(key);
            }
            if outside {
                recovery += 1;
            }
        }
    }
    PeerMetrics {
        direct_ready_count: count(direct),
        relay_ready_count: count(relay),
        external_area_ready_count: count(areas.len()),
        independent_ingress_ready_count: count(ingress.len()),
        recovery_path_count: count(recovery),
    }
}
