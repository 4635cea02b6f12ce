//! Role-aware scheduling.
//!
//! - Core services (`control-api`, `update-store`, `update-cache`): at least one
//!   healthy provider always stays unleased, fleet-wide. A node is not leased
//!   while the only providers left would be in its own area and a provider in
//!   another area is merely leased (it will be back soon): the survivor should
//!   be in another area. A service with a single provider is never leased by a
//!   rollout (that would take the service down); status says so.
//! - Edge roles (`relay`, `ingress`, `egress`): an area never loses its last
//!   unleased healthy provider. An area with only one provider in total can
//!   only be updated by leasing that one; by default that is allowed while
//!   another area has an unleased healthy provider of the role (see
//!   [`SoleAreaProvider`]).
//!
//! Providers are counted over the whole fleet, not only the rollout's target:
//! a control-api node outside the target still serves.

use std::collections::HashMap;

use fabric_schemas::kinds::{FabricNodeSpec, NodeRole};

use super::input::SoleAreaProvider;

/// The roles every node must be able to find somewhere in the fleet.
pub const CORE_ROLES: [NodeRole; 3] = [
    NodeRole::ControlApi,
    NodeRole::UpdateStore,
    NodeRole::UpdateCache,
];

/// The roles each area should keep.
pub const EDGE_ROLES: [NodeRole; 3] = [NodeRole::Relay, NodeRole::Ingress, NodeRole::Egress];

/// Whether `role` is one of the [`CORE_ROLES`].
pub fn is_core(role: NodeRole) -> bool {
    CORE_ROLES.contains(&role)
}

/// Why a role rule holds a node back this tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RoleHold {
    /// The only provider of a core service in the fleet: never leased.
    SoleCoreProvider(NodeRole),
    /// Leasing it would leave no healthy unleased provider of a core service.
    LastCoreProvider(NodeRole),
    /// The survivors would all be in this node's area while another area's
    /// provider is leased; wait for that one.
    PreferOtherArea(NodeRole),
    /// Leasing it would leave its area without an unleased healthy provider.
    LastAreaProvider(NodeRole),
}

impl RoleHold {
    pub(crate) fn describe(self, node: &str, area: &str) -> String {
        match self {
            RoleHold::SoleCoreProvider(r) => format!(
                "{node} is the only {} provider of the fleet; a rollout never leases it (add a second provider, or update it with a forced-node intent under recovery override)",
                r.as_str()
            ),
            RoleHold::LastCoreProvider(r) => format!(
                "{node} is the last healthy unleased {} provider",
                r.as_str()
            ),
            RoleHold::PreferOtherArea(r) => format!(
                "{node} waits until a {} provider outside area {area} is back",
                r.as_str()
            ),
            RoleHold::LastAreaProvider(r) => format!(
                "{node} is the last healthy unleased {} of area {area}",
                r.as_str()
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Count {
    total: u32,
    available: u32,
    leased: u32,
}

/// Provider counts, kept current as the planner grants.
#[derive(Debug)]
pub(crate) struct RoleGuard<'a> {
    fleet: HashMap<NodeRole, Count>,
    by_area: HashMap<(NodeRole, &'a str), Count>,
    sole: SoleAreaProvider,
}

/// A node's state as the role rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProviderState {
    /// Healthy and holding no lease: it serves.
    Available,
    /// Holds a lease (of any rollout): back soon.
    Leased,
    /// Unhealthy or heartbeat-lost.
    Down,
}

impl<'a> RoleGuard<'a> {
    pub(crate) fn new(sole: SoleAreaProvider) -> RoleGuard<'a> {
        RoleGuard {
            fleet: HashMap::new(),
            by_area: HashMap::new(),
            sole,
        }
    }

    /// Adds one fleet node (every node, targeted or not).
    pub(crate) fn add(&mut self, node: &'a FabricNodeSpec, state: ProviderState) {
        for role in roles_of(node) {
            for c in [
                self.fleet.entry(role).or_default(),
                self.by_area.entry((role, node.area.as_str())).or_default(),
            ] {
                c.total += 1;
                match state {
                    ProviderState::Available => c.available += 1,
                    ProviderState::Leased => c.leased += 1,
                    ProviderState::Down => {}
                }
            }
        }
    }

    /// Whether a healthy, unleased node may be leased now.
    pub(crate) fn check(&self, node: &FabricNodeSpec) -> Result<(), RoleHold> {
        for role in roles_of(node) {
            let fleet = self.fleet.get(&role).copied().unwrap_or_default();
            let area = self
                .by_area
                .get(&(role, node.area.as_str()))
                .copied()
                .unwrap_or_default();
            if is_core(role) {
                if fleet.total <= 1 {
                    return Err(RoleHold::SoleCoreProvider(role));
                }
                // The node itself is counted as available: it must not be the last.
                if fleet.available < 2 {
                    return Err(RoleHold::LastCoreProvider(role));
                }
                let available_elsewhere = fleet.available - area.available;
                let leased_elsewhere = fleet.leased - area.leased;
                if available_elsewhere == 0 && leased_elsewhere > 0 {
                    return Err(RoleHold::PreferOtherArea(role));
                }
            } else {
                if area.available >= 2 {
                    continue;
                }
                let covered_elsewhere = fleet.available - area.available >= 1;
                let sole_ok = area.total == 1
                    && self.sole == SoleAreaProvider::CoverFromOtherArea
                    && covered_elsewhere;
                if !sole_ok {
                    return Err(RoleHold::LastAreaProvider(role));
                }
            }
        }
        Ok(())
    }

    /// Records a grant to an available node.
    pub(crate) fn grant(&mut self, node: &'a FabricNodeSpec) {
        for role in roles_of(node) {
            for c in [
                self.fleet.get_mut(&role),
                self.by_area.get_mut(&(role, node.area.as_str())),
            ]
            .into_iter()
            .flatten()
            {
                c.available = c.available.saturating_sub(1);
                c.leased += 1;
            }
        }
    }
}

/// The node's roles, each once, in a fixed order.
pub fn roles_of(node: &FabricNodeSpec) -> impl Iterator<Item = NodeRole> + '_ {
    NodeRole::ALL
        .into_iter()
        .filter(move |r| node.roles.contains(r))
}

/// Scheduling class: ordinary nodes first, then edge providers, core service
/// providers last (the canary and the early waves should not be the nodes the
/// fleet leans on).
pub(crate) fn class(node: &FabricNodeSpec) -> u8 {
    let mut class = 0;
    for role in roles_of(node) {
        class = class.max(if is_core(role) { 2 } else { 1 });
    }
    class
}
