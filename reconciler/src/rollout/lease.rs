//! Building `RolloutLease` specs. Signing is the caller's: wrap the spec in a
//! `fabric_schemas::Record` and sign it with `fabric_schemas::Envelope::sign`
//! using the orchestrator key (plus a recovery-admin key when
//! `recovery_override` is set).

use fabric_schemas::kinds::{Component, RolloutLeaseSpec};
use fabric_schemas::time::format_rfc3339;
use sha2::{Digest, Sha256};

/// A deterministic lease id: the same intent, generation, node, phase and
/// attempt always give the same id, so re-running a tick (or a second
/// reconciler replica) issues the same lease instead of a second one.
///
/// ```
/// use fabric_reconciler::rollout::lease_id;
/// use fabric_schemas::kinds::Component;
/// let a = lease_id("node-agent-0-2-0", 3, "alpha-1", Component::NodeAgent, 1);
/// assert_eq!(a, lease_id("node-agent-0-2-0", 3, "alpha-1", Component::NodeAgent, 1));
/// assert_ne!(a, lease_id("node-agent-0-2-0", 3, "alpha-1", Component::NodeAgent, 2));
/// assert!(a.starts_with("lease-"));
/// ```
pub fn lease_id(
    intent: &str,
    generation: u64,
    node: &str,
    phase: Component,
    attempt: u32,
) -> String {
    let mut h = Sha256::new();
    // Length-prefixed fields so ("ab","c") and ("a","bc") cannot collide.
    h.update(b"fabric-rollout-lease-v1");
    for field in [
        intent.as_bytes(),
        node.as_bytes(),
        phase.as_str().as_bytes(),
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    h.update(generation.to_be_bytes());
    h.update(attempt.to_be_bytes());
    let digest = h.finalize();
    // 96 bits: unique enough for leases, short enough for logs.
    format!("lease-{}", hex::encode(&digest[..12]))
}

/// What a lease is for; the planner fills it, tests and tools may too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseParams<'a> {
    /// The intent's name.
    pub intent: &'a str,
    /// The intent generation.
    pub generation: u64,
    /// The node to lease.
    pub node: &'a str,
    /// The agent it may update.
    pub phase: Component,
    /// 1 for the node's first lease in this rollout; feeds the id.
    pub attempt: u32,
    /// Unix seconds.
    pub now: i64,
    /// Lease lifetime in seconds.
    pub ttl_secs: i64,
    /// Mark the lease `recoveryOverride` (needs a recovery-admin co-signature).
    pub recovery_override: bool,
}

/// A lease spec expiring at `now + ttl`.
pub fn build_lease(p: &LeaseParams<'_>) -> RolloutLeaseSpec {
    RolloutLeaseSpec {
        node: p.node.to_owned(),
        intent: p.intent.to_owned(),
        intent_generation: p.generation,
        phase: p.phase,
        lease_id: lease_id(p.intent, p.generation, p.node, p.phase, p.attempt),
        expires_at: format_rfc3339(p.now.saturating_add(p.ttl_secs)),
        recovery_override: p.recovery_override,
    }
}

/// The record name a lease is published under: one lease record per node and
/// phase, so a new attempt replaces the old one (higher record generation).
pub fn lease_record_name(node: &str, phase: Component) -> String {
    format!("{node}.{}", phase.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_expires_ttl_after_now_and_carries_override_flag() {
        let spec = build_lease(&LeaseParams {
            intent: "i",
            generation: 7,
            node: "n",
            phase: Component::HostAgent,
            attempt: 1,
            now: 1_798_761_600,
            ttl_secs: 900,
            recovery_override: true,
        });
        assert_eq!(spec.expires_at, "2027-01-01T00:15:00Z");
        assert!(spec.recovery_override);
        assert_eq!(spec.intent_generation, 7);
        assert_eq!(
            spec.lease_id,
            lease_id("i", 7, "n", Component::HostAgent, 1)
        );
    }

    #[test]
    fn lease_id_depends_on_every_field() {
        let base = lease_id("i", 1, "n", Component::NodeAgent, 1);
        assert_ne!(base, lease_id("j", 1, "n", Component::NodeAgent, 1));
        assert_ne!(base, lease_id("i", 2, "n", Component::NodeAgent, 1));
        assert_ne!(base, lease_id("i", 1, "m", Component::NodeAgent, 1));
        assert_ne!(base, lease_id("i", 1, "n", Component::HostAgent, 1));
        assert_ne!(
            lease_id("ab", 1, "c", Component::NodeAgent, 1),
            lease_id("a", 1, "bc", Component::NodeAgent, 1)
        );
    }
}
