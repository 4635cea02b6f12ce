//! The policy's counting limits: max parallel globally and per area / site /
//! NAT group (this rollout's leases), and max unavailable (targeted nodes that
//! are leased by any rollout, unhealthy or heartbeat-lost).

use std::collections::HashMap;

use fabric_schemas::kinds::{FabricNodeSpec, RolloutPolicySpec};

/// Which limit stopped a candidate; used for status messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LimitHit {
    Global,
    Area,
    Site,
    NatGroup,
    Unavailable,
}

/// Current usage against the limits, updated as the planner grants.
#[derive(Debug)]
pub(crate) struct Usage<'a> {
    max_parallel: u32,
    per_area: Option<u32>,
    per_site: Option<u32>,
    per_nat: Option<u32>,
    max_unavailable: u32,
    leased: u32,
    area: HashMap<&'a str, u32>,
    site: HashMap<&'a str, u32>,
    nat: HashMap<&'a str, u32>,
    unavailable: u32,
}

impl<'a> Usage<'a> {
    pub(crate) fn new(policy: &RolloutPolicySpec) -> Usage<'a> {
        Usage {
            max_parallel: policy.max_parallel,
            per_area: policy.max_parallel_per_area,
            per_site: policy.max_parallel_per_site,
            per_nat: policy.max_parallel_per_nat_group,
            max_unavailable: policy.max_unavailable,
            leased: 0,
            area: HashMap::new(),
            site: HashMap::new(),
            nat: HashMap::new(),
            unavailable: 0,
        }
    }

    /// Counts a lease of this rollout that is already out.
    pub(crate) fn count_leased(&mut self, node: &'a FabricNodeSpec) {
        self.leased += 1;
        *self.area.entry(&node.area).or_default() += 1;
        *self.site.entry(&node.site_id).or_default() += 1;
        *self.nat.entry(&node.nat_group).or_default() += 1;
    }

    /// Counts a targeted node that is unavailable (leased by anyone, unhealthy
    /// or heartbeat-lost).
    pub(crate) fn count_unavailable(&mut self) {
        self.unavailable += 1;
    }

    pub(crate) fn global_room(&self) -> bool {
        self.leased < self.max_parallel && self.unavailable < self.max_unavailable
    }

    pub(crate) fn area_room(&self, area: &str) -> bool {
        under(self.per_area, self.area.get(area))
    }

    /// Whether leasing one more (healthy, unleased) node stays within every limit.
    pub(crate) fn fits(&self, node: &FabricNodeSpec) -> Result<(), LimitHit> {
        if self.leased >= self.max_parallel {
            return Err(LimitHit::Global);
        }
        if self.unavailable >= self.max_unavailable {
            return Err(LimitHit::Unavailable);
        }
        if !under(self.per_area, self.area.get(node.area.as_str())) {
            return Err(LimitHit::Area);
        }
        if !under(self.per_site, self.site.get(node.site_id.as_str())) {
            return Err(LimitHit::Site);
        }
        if !under(self.per_nat, self.nat.get(node.nat_group.as_str())) {
            return Err(LimitHit::NatGroup);
        }
        Ok(())
    }

    /// Records a grant: one more lease and one more unavailable node (the
    /// planner only grants to healthy, unleased nodes).
    pub(crate) fn grant(&mut self, node: &'a FabricNodeSpec) {
        self.count_leased(node);
        self.unavailable += 1;
    }
}

fn under(cap: Option<u32>, used: Option<&u32>) -> bool {
    match cap {
        None => true,
        Some(cap) => used.copied().unwrap_or(0) < cap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric_schemas::kinds::Strategy;

    fn node(area: &str, site: &str, nat: &str) -> FabricNodeSpec {
        FabricNodeSpec {
            area: area.into(),
            site_id: site.into(),
            locality_group: String::new(),
            nat_group: nat.into(),
            node_id: None,
            roles: vec![],
            endpoints: vec![],
            critical: false,
            resilience_target: None,
        }
    }

    fn policy() -> RolloutPolicySpec {
        RolloutPolicySpec {
            strategy: Strategy::Rolling,
            max_parallel: 3,
            max_parallel_per_area: Some(2),
            max_parallel_per_site: Some(1),
            max_parallel_per_nat_group: None,
            max_unavailable: 3,
            failure_rate_stop_percent: 20,
            canary_steps: vec![],
            paused: false,
            first_phase: None,
            pinned_nodes: vec![],
            forced_node: None,
        }
    }

    #[test]
    fn per_site_cap_applies_before_per_area_cap_is_full() {
        let p = policy();
        let a = node("a", "s1", "n1");
        let b = node("a", "s1", "n2");
        let c = node("a", "s2", "n3");
        let d = node("a", "s3", "n4");
        let mut u = Usage::new(&p);
        assert_eq!(u.fits(&a), Ok(()));
        u.grant(&a);
        assert_eq!(u.fits(&b), Err(LimitHit::Site));
        assert_eq!(u.fits(&c), Ok(()));
        u.grant(&c);
        assert_eq!(u.fits(&d), Err(LimitHit::Area));
    }

    #[test]
    fn unhealthy_nodes_use_up_max_unavailable() {
        let p = policy();
        let mut u = Usage::new(&p);
        for _ in 0..3 {
            u.count_unavailable();
        }
        assert_eq!(u.fits(&node("a", "s", "n")), Err(LimitHit::Unavailable));
    }
}
