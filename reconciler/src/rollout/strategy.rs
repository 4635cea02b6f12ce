//! Strategies: which pending nodes a rollout may lease at all, and how many
//! (canary steps).
//!
//! - `rolling`: every targeted node, paced only by the limits.
//! - `canary`: the steps give cumulative sizes (a count, or a percentage of the
//!   target set rounded up); a step is filled only once every node of the
//!   earlier steps runs the new version and is healthy. A last implicit step
//!   covers the rest of the target, so a canary always ends at 100 %.
//! - `pinned`: only the listed nodes (that the intent also targets).
//! - `forcedNode`: only that node, now: no canary, but still a lease and still
//!   every limit and role rule.

use std::collections::BTreeSet;

use fabric_schemas::kinds::{CanaryStep, RolloutPolicySpec, Strategy};

use super::status::CanaryStatus;

/// Cumulative node counts of the canary steps over a target of `target`
/// nodes: each at least 1 and at least the one before, at most `target`; the
/// last is always `target`.
pub fn canary_targets(steps: &[CanaryStep], target: u32) -> Vec<u32> {
    if target == 0 {
        return vec![0];
    }
    let mut out: Vec<u32> = Vec::with_capacity(steps.len() + 1);
    let mut prev = 0;
    for step in steps {
        let size = match (step.count, step.percent) {
            (Some(c), _) => c,
            // Rounded up: 25 % of 2 nodes is 1 node, never 0.
            (None, Some(p)) => (u64::from(target) * u64::from(p)).div_ceil(100) as u32,
            (None, None) => continue,
        };
        let size = size.clamp(1, target).max(prev);
        if size > prev {
            out.push(size);
            prev = size;
        }
    }
    if prev < target {
        out.push(target);
    }
    out
}

/// Where the canary stands this tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CanaryGate {
    /// Index of the step being filled.
    pub step: u32,
    /// How many more nodes may be touched in this step.
    pub quota: u32,
    /// The step is full and waits for its nodes to be healthy.
    pub gated: bool,
    pub status: CanaryStatus,
}

/// Advances from the stored step while each step is full and healthy.
///
/// `touched` counts targeted nodes that are done, failed or in flight;
/// `all_healthy` says every node this rollout touched runs the new version
/// and is healthy (nothing in flight, nothing failed).
pub(crate) fn canary_gate(
    targets: &[u32],
    stored: u32,
    touched: u32,
    all_healthy: bool,
) -> CanaryGate {
    let last = targets.len().saturating_sub(1);
    let mut step = (stored as usize).min(last);
    let at = |i: usize| targets.get(i).copied().unwrap_or(0);
    while step < last && touched >= at(step) && all_healthy {
        step += 1;
    }
    let quota = at(step).saturating_sub(touched);
    let gated = quota == 0 && step < last && !all_healthy;
    CanaryGate {
        step: step as u32,
        quota,
        gated,
        status: CanaryStatus {
            step: step as u32 + 1,
            steps: targets.len() as u32,
            step_target: at(step),
        },
    }
}

/// The node names a `pinned` or `forcedNode` policy restricts the rollout to;
/// `None` for strategies that take the whole target.
pub(crate) fn restriction(policy: &RolloutPolicySpec) -> Option<BTreeSet<&str>> {
    match policy.strategy {
        Strategy::Pinned => Some(policy.pinned_nodes.iter().map(String::as_str).collect()),
        Strategy::ForcedNode => Some(policy.forced_node.iter().map(String::as_str).collect()),
        Strategy::Canary | Strategy::Rolling => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(c: u32) -> CanaryStep {
        CanaryStep {
            count: Some(c),
            percent: None,
        }
    }
    fn percent(p: u32) -> CanaryStep {
        CanaryStep {
            count: None,
            percent: Some(p),
        }
    }

    #[test]
    fn careful_policy_steps_over_twelve_nodes() {
        let steps = [count(1), percent(25), percent(100)];
        assert_eq!(canary_targets(&steps, 12), vec![1, 3, 12]);
    }

    #[test]
    fn steps_are_monotonic_and_end_at_the_whole_target() {
        let steps = [count(5), percent(10), count(100)];
        assert_eq!(canary_targets(&steps, 20), vec![5, 20]);
        assert_eq!(canary_targets(&[count(1)], 4), vec![1, 4]);
        assert_eq!(canary_targets(&[percent(1)], 3), vec![1, 3]);
    }

    #[test]
    fn full_step_waits_for_health_then_advances() {
        let t = [1, 3, 12];
        let g = canary_gate(&t, 0, 1, false);
        assert_eq!((g.step, g.quota, g.gated), (0, 0, true));
        let g = canary_gate(&t, 0, 1, true);
        assert_eq!((g.step, g.quota, g.gated), (1, 2, false));
        let g = canary_gate(&t, 1, 3, true);
        assert_eq!((g.step, g.quota), (2, 9));
    }
}
