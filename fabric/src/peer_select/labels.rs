//! Comparing topology labels.
//!
//! An empty label means "unknown", and unknown is never evidence: two empty
//! `nat_group`s do not put two nodes behind the same NAT, and an empty `area`
//! is neither our area nor another one. Every comparison in the planner goes
//! through [`same`] and [`differs`] so that rule holds everywhere.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::topology::{NodeId, TopologyLabels};

/// Both labels are known and equal.
pub(crate) fn same(a: &str, b: &str) -> bool {
    !a.is_empty() && a == b
}

/// Both labels are known and different.
pub(crate) fn differs(a: &str, b: &str) -> bool {
    !a.is_empty() && !b.is_empty() && a != b
}

/// The peer sits in a known area that is not the local node's known area.
pub(crate) fn outside_area(local: &TopologyLabels, peer: &TopologyLabels) -> bool {
    differs(&local.area, &peer.area)
}

/// The public edge a node depends on to be reached from outside.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IngressKey {
    /// Behind a shared NAT / router: every node with this `nat_group` fails together.
    NatGroup(String),
    /// No shared NAT declared: the node is its own public edge.
    OwnEdge(NodeId),
}

impl IngressKey {
    /// The edge of node `id` with `labels`: its `nat_group` if declared, else itself.
    pub fn of(id: NodeId, labels: &TopologyLabels) -> IngressKey {
        if labels.nat_group.is_empty() {
            IngressKey::OwnEdge(id)
        } else {
            IngressKey::NatGroup(labels.nat_group.clone())
        }
    }
}

impl fmt::Display for IngressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IngressKey::NatGroup(g) => write!(f, "nat_group={g}"),
            IngressKey::OwnEdge(id) => write!(f, "own-edge={}", id.short()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_labels_are_neither_same_nor_different() {
        assert!(!same("", ""));
        assert!(!differs("", "a"));
        assert!(!differs("a", ""));
        assert!(same("a", "a"));
        assert!(differs("a", "b"));
    }

    #[test]
    fn node_without_nat_group_is_its_own_ingress() {
        let a = NodeId([1; 32]);
        let b = NodeId([2; 32]);
        let open = TopologyLabels::default();
        assert_ne!(IngressKey::of(a, &open), IngressKey::of(b, &open));
        let natted = TopologyLabels {
            nat_group: "n".into(),
            ..Default::default()
        };
        assert_eq!(IngressKey::of(a, &natted), IngressKey::of(b, &natted));
    }
}
