//! Endpoint classification and probe order: behaviours 5–8 of the seed's P3.
//!
//! Every endpoint candidate of a peer gets one [`EndpointClass`] (where it can
//! work from the local node's position) and one [`EndpointHealth`] (what the
//! runtime saw). The probe order sorts by those; foreign-scope private
//! endpoints are never probed.

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::input::{EndpointObservation, Observations, PeerCandidate, ProbeOutcome};
use super::labels::{differs, same};
use crate::topology::{EndpointCandidate, EndpointScope, TopologyLabels};

/// Where an endpoint can work from the local node's position. The declaration
/// order is the probe order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointClass {
    /// Private endpoint in our own `locality_group` or `nat_group` (behaviour 7).
    PreferredPrivate,
    /// Public endpoint reachable over the public network.
    Public,
    /// Private endpoint whose scope is not declared anywhere: it might be ours,
    /// so it is probed, but after every endpoint we can vouch for.
    UnconfirmedPrivate,
    /// Public endpoint of a peer behind our own NAT, not validated from another
    /// area: reaching it from here needs hairpin through our router
    /// (behaviour 5). Probed last.
    ExternalNetworkRequired,
    /// Private endpoint scoped to another segment / NAT: not reachable from
    /// here, never probed (behaviour 8).
    SkippedForeignPrivate,
}

impl EndpointClass {
    /// The kebab-case name, as serialised (for logs and plan output).
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointClass::PreferredPrivate => "preferred-private",
            EndpointClass::Public => "public",
            EndpointClass::UnconfirmedPrivate => "unconfirmed-private",
            EndpointClass::ExternalNetworkRequired => "external-network-required",
            EndpointClass::SkippedForeignPrivate => "skipped-foreign-private",
        }
    }

    /// Whether the transport should probe endpoints of this class at all.
    pub fn is_probed(self) -> bool {
        self != EndpointClass::SkippedForeignPrivate
    }
}

/// What the runtime saw on an endpoint, from the local node's side. The
/// declaration order is best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointHealth {
    /// A direct path over it is established now.
    Ready,
    /// Our last probe succeeded.
    Ok,
    /// No usable evidence either way (never probed, or the failure was only a
    /// hairpin failure that behaviour 6 tells us to ignore).
    Unknown,
    /// Our last probe failed, or observers outside the owner's area report it
    /// unreachable and none reached it: demoted behind every other endpoint.
    Failed,
}

/// One endpoint with its class, health and the reason for both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassifiedEndpoint {
    /// The endpoint as the peer's record advertises it.
    pub endpoint: EndpointCandidate,
    /// Where it can work from the local node's position.
    pub class: EndpointClass,
    /// What the runtime saw on it.
    pub health: EndpointHealth,
    /// Last measured round-trip time, from the observations; breaks ties in the
    /// probe order.
    pub rtt: Option<Duration>,
    /// Human-readable: which labels or observations decided the class and health.
    pub reason: String,
}

impl ClassifiedEndpoint {
    /// Whether the transport should probe it at all (see [`EndpointClass::is_probed`]).
    pub fn is_probed(&self) -> bool {
        self.class.is_probed()
    }
}

/// An address that only means something inside some private network, whatever
/// scope it was declared with. Loopback is deliberately not included: the
/// local development fleet (`fabricctl up`) runs every node on 127.0.0.1 and
/// declares those endpoints with the scope it means.
pub fn looks_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_looks_local(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4_looks_local(v4),
            None => v6_looks_local(v6),
        },
    }
}

fn v4_looks_local(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    // 100.64.0.0/10 is carrier-grade NAT space: private to the carrier.
    let cgnat = o[0] == 100 && (o[1] & 0xc0) == 64;
    ip.is_private() || ip.is_link_local() || cgnat
}

fn v6_looks_local(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    // fc00::/7 unique-local, fe80::/10 link-local.
    (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
}

/// Observers whose report proves the public address works from the public
/// network: another area, and not hairpinning through the owner's NAT.
fn cross_area(report_area: &str, report_nat: &str, owner: &TopologyLabels) -> bool {
    differs(report_area, &owner.area) && !same(report_nat, &owner.nat_group)
}

fn class_of(
    local: &TopologyLabels,
    peer: &PeerCandidate,
    ep: &EndpointCandidate,
    obs: Option<&EndpointObservation>,
) -> (EndpointClass, String) {
    let declared_public = ep.scope == EndpointScope::Public;
    let private = !declared_public || looks_local(ep.addr.ip());
    if private {
        // A private endpoint without its own scope is meaningful where its
        // owner lives: fall back to the owner's labels.
        let loc = ep
            .locality_group
            .as_deref()
            .unwrap_or(&peer.labels.locality_group);
        let nat = ep.nat_group.as_deref().unwrap_or(&peer.labels.nat_group);
        let note = if declared_public {
            " (declared public but the address is private-looking)"
        } else {
            ""
        };
        if same(&local.locality_group, loc) {
            return (
                EndpointClass::PreferredPrivate,
                format!("private endpoint in our locality_group={loc}{note}"),
            );
        }
        if same(&local.nat_group, nat) {
            return (
                EndpointClass::PreferredPrivate,
                format!("private endpoint behind our nat_group={nat}{note}"),
            );
        }
        if differs(&local.locality_group, loc) || differs(&local.nat_group, nat) {
            return (
                EndpointClass::SkippedForeignPrivate,
                format!(
                    "skipped, not probed: private endpoint scoped to locality_group={loc:?} \
                     nat_group={nat:?}, we are in locality_group={:?} nat_group={:?}{note}",
                    local.locality_group, local.nat_group
                ),
            );
        }
        return (
            EndpointClass::UnconfirmedPrivate,
            format!("private endpoint with unknown scope, probed after confirmed ones{note}"),
        );
    }
    if same(&local.nat_group, &peer.labels.nat_group) {
        let validators = validating_areas(peer, obs);
        if validators.is_empty() {
            return (
                EndpointClass::ExternalNetworkRequired,
                format!(
                    "public endpoint behind our own nat_group={}: needs hairpin from here and \
                     no cross-area observer has validated it",
                    peer.labels.nat_group
                ),
            );
        }
        return (
            EndpointClass::Public,
            format!(
                "public endpoint behind our nat_group={}, validated by observers in area(s) {}",
                peer.labels.nat_group,
                validators.join(",")
            ),
        );
    }
    (EndpointClass::Public, "public endpoint".to_owned())
}

/// Areas of observers outside the owner's area/NAT that reached the endpoint,
/// sorted and de-duplicated so the reason text is deterministic.
fn validating_areas(peer: &PeerCandidate, obs: Option<&EndpointObservation>) -> Vec<String> {
    let mut areas: Vec<String> = obs
        .map(|o| {
            o.reports
                .iter()
                .filter(|r| r.reached && cross_area(&r.area, &r.nat_group, &peer.labels))
                .map(|r| r.area.clone())
                .collect()
        })
        .unwrap_or_default();
    areas.sort();
    areas.dedup();
    areas
}

fn health_of(
    local: &TopologyLabels,
    peer: &PeerCandidate,
    class: EndpointClass,
    obs: Option<&EndpointObservation>,
) -> (EndpointHealth, Option<&'static str>) {
    let Some(o) = obs else {
        return (EndpointHealth::Unknown, None);
    };
    if o.direct_ready {
        return (EndpointHealth::Ready, None);
    }
    let public = matches!(
        class,
        EndpointClass::Public | EndpointClass::ExternalNetworkRequired
    );
    let validated = public && !validating_areas(peer, obs).is_empty();
    match o.last_probe {
        ProbeOutcome::Ok => (EndpointHealth::Ok, None),
        ProbeOutcome::Failed => {
            // Behaviour 6: from inside the owner's area or NAT our probe of its
            // public address is a hairpin through its router; when the outside
            // world reaches the address, our failure says nothing about it.
            let hairpin = same(&local.nat_group, &peer.labels.nat_group)
                || same(&local.area, &peer.labels.area);
            if validated && hairpin {
                (
                    EndpointHealth::Unknown,
                    Some("our failed probe is a same-area hairpin failure; ignored"),
                )
            } else {
                (EndpointHealth::Failed, Some("our last probe failed"))
            }
        }
        ProbeOutcome::None => {
            // Only cross-area reports count against a public address; reports
            // from the owner's own area/NAT are hairpin attempts (behaviour 6).
            let outside_failed = public
                && o.reports
                    .iter()
                    .any(|r| !r.reached && cross_area(&r.area, &r.nat_group, &peer.labels));
            if outside_failed && !validated {
                (
                    EndpointHealth::Failed,
                    Some("observers outside its area failed to reach it and none succeeded"),
                )
            } else {
                (EndpointHealth::Unknown, None)
            }
        }
    }
}

fn scope_rank(s: EndpointScope) -> u8 {
    match s {
        EndpointScope::Private => 0,
        EndpointScope::Public => 1,
    }
}

/// Probe order: probed classes before skipped ones; demoted (failed)
/// endpoints after every non-failed one; then class, health, lower RTT,
/// address, and the rest of the candidate so the order is total.
fn probe_order(a: &ClassifiedEndpoint, b: &ClassifiedEndpoint) -> Ordering {
    let key = |c: &ClassifiedEndpoint| {
        (
            !c.is_probed(),
            c.health == EndpointHealth::Failed,
            c.class,
            c.health,
            c.rtt.unwrap_or(Duration::MAX),
            c.endpoint.addr,
        )
    };
    key(a)
        .cmp(&key(b))
        .then_with(|| scope_rank(a.endpoint.scope).cmp(&scope_rank(b.endpoint.scope)))
        .then_with(|| a.endpoint.locality_group.cmp(&b.endpoint.locality_group))
        .then_with(|| a.endpoint.nat_group.cmp(&b.endpoint.nat_group))
}

/// Every endpoint of `peer` classified, in probe order, with the skipped
/// foreign-scope private endpoints last. An address advertised twice is kept
/// once, in its best-ranked form.
pub fn classify_endpoints(
    local: &TopologyLabels,
    peer: &PeerCandidate,
    observations: &Observations,
) -> Vec<ClassifiedEndpoint> {
    let mut out: Vec<ClassifiedEndpoint> = peer
        .endpoints
        .iter()
        .map(|ep| {
            let obs = observations.endpoint(&peer.id, &ep.addr);
            let (class, mut reason) = class_of(local, peer, ep, obs);
            let (health, note) = health_of(local, peer, class, obs);
            if let Some(note) = note {
                reason.push_str("; ");
                reason.push_str(note);
            }
            ClassifiedEndpoint {
                endpoint: ep.clone(),
                class,
                health,
                rtt: obs.and_then(|o| o.rtt),
                reason,
            }
        })
        .collect();
    out.sort_by(probe_order);
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|c| seen.insert(c.endpoint.addr));
    out
}

/// The endpoints the transport should probe, in order; foreign-scope private
/// endpoints are left out (behaviour 8). This is the path-ranking hook the
/// transport plugs in.
pub fn rank_endpoints(
    local: &TopologyLabels,
    peer: &PeerCandidate,
    observations: &Observations,
) -> Vec<EndpointCandidate> {
    classify_endpoints(local, peer, observations)
        .into_iter()
        .filter(ClassifiedEndpoint::is_probed)
        .map(|c| c.endpoint)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_looking_addresses_are_recognised() {
        for s in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
            "::ffff:192.168.0.1",
        ] {
            let ip: IpAddr = s.parse().expect("test literal");
            assert!(looks_local(ip), "{s} should look local");
        }
        for s in [
            "203.0.113.7",
            "100.128.0.1",
            "2001:db8::1",
            "127.0.0.1",
            "::1",
        ] {
            let ip: IpAddr = s.parse().expect("test literal");
            assert!(!looks_local(ip), "{s} should not look local");
        }
    }

    #[test]
    fn class_order_is_probe_order() {
        assert!(EndpointClass::PreferredPrivate < EndpointClass::Public);
        assert!(EndpointClass::Public < EndpointClass::UnconfirmedPrivate);
        assert!(EndpointClass::UnconfirmedPrivate < EndpointClass::ExternalNetworkRequired);
        assert!(!EndpointClass::SkippedForeignPrivate.is_probed());
    }

    #[test]
    fn class_names_match_serde_names() {
        for c in [
            EndpointClass::PreferredPrivate,
            EndpointClass::Public,
            EndpointClass::UnconfirmedPrivate,
            EndpointClass::ExternalNetworkRequired,
            EndpointClass::SkippedForeignPrivate,
        ] {
            let json = serde_json::to_string(&c).expect("serialize");
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
    }
}
