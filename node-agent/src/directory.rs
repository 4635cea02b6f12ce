//! The node's view of the fleet, derived from admitted records: which nodes
//! exist (identity, labels, endpoints, roles) and which nodes provide which
//! service.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use fabric::gossip::Envelope;
use fabric::path::PeerInfo;
use fabric::topology::{EndpointCandidate, EndpointScope, NodeId, TopologyLabels};
use fabric_schemas::kinds::{EndpointScopeSpec, FabricNodeSpec, NodeRole, ServiceRecordSpec};
use fabric_schemas::{Envelope as SignedEnvelope, Spec};

/// One node as its signed record describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeEntry {
    /// The node's name (the record's metadata.name).
    pub name: String,
    /// The node's id, parsed from the record's `node_id`.
    pub node_id: NodeId,
    /// The record's spec: labels, roles, endpoints.
    pub spec: FabricNodeSpec,
    /// The record's generation.
    pub generation: u64,
    /// When the record expires, in Unix seconds.
    pub expires_at: i64,
}

impl NodeEntry {
    /// The node's topology labels, from its spec.
    pub fn labels(&self) -> TopologyLabels {
        labels_of(&self.spec)
    }

    /// What the transport needs to reach the node: its endpoint candidates,
    /// its labels and whether it has the relay role.
    pub fn peer_info(&self) -> PeerInfo {
        PeerInfo {
            candidates: candidates_of(&self.spec),
            labels: self.labels(),
            is_relay: self.spec.roles.contains(&NodeRole::Relay),
        }
    }
}

/// The topology labels a node spec declares.
pub fn labels_of(spec: &FabricNodeSpec) -> TopologyLabels {
    TopologyLabels {
        area: spec.area.clone(),
        site_id: spec.site_id.clone(),
        locality_group: spec.locality_group.clone(),
        nat_group: spec.nat_group.clone(),
    }
}

/// The endpoint candidates a node spec declares; an address that does not
/// parse is left out, and a private endpoint without its own locality or NAT
/// group takes the node's.
pub fn candidates_of(spec: &FabricNodeSpec) -> Vec<EndpointCandidate> {
    spec.endpoints
        .iter()
        .filter_map(|e| {
            let addr: SocketAddr = e.address.parse().ok()?;
            let private = e.scope == EndpointScopeSpec::Private;
            Some(EndpointCandidate {
                addr,
                scope: if private {
                    EndpointScope::Private
                } else {
                    EndpointScope::Public
                },
                // A private endpoint without explicit scope is valid where its node is.
                locality_group: e
                    .locality_group
                    .clone()
                    .or_else(|| private.then(|| spec.locality_group.clone())),
                nat_group: e
                    .nat_group
                    .clone()
                    .or_else(|| private.then(|| spec.nat_group.clone())),
            })
        })
        .collect()
}

/// One service record.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceEntry {
    /// The service record's own name (metadata.name), not the service's.
    pub record_name: String,
    /// The record's spec: the service name and its providers.
    pub spec: ServiceRecordSpec,
    /// The record's generation.
    pub generation: u64,
    /// When the record expires, in Unix seconds.
    pub expires_at: i64,
}

/// Everything the node currently knows, rebuilt from the record store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Directory {
    /// Keyed by node name.
    pub nodes: BTreeMap<String, NodeEntry>,
    /// Keyed by service name (`control-api`, ...).
    pub services: BTreeMap<String, ServiceEntry>,
    /// Records of every kind, unexpired.
    pub records: usize,
    /// The soonest `expires_at` among those records: until then, the view
    /// can only change if the record store does.
    pub next_expiry: Option<i64>,
    /// Records that clash with another (two service records for one service,
    /// two node records with one key): which one won and why, for status.
    pub conflicts: Vec<String>,
}

impl Directory {
    /// Builds the view from admitted envelopes, leaving out what has expired
    /// by `now` (seconds) and node records without a node id.
    pub fn from_envelopes(envelopes: &[Envelope], now: i64) -> Directory {
        let mut d = Directory::default();
        for e in envelopes {
            let Ok(signed) = SignedEnvelope::decode(&e.bytes) else {
                continue;
            };
            let r = &signed.record;
            if r.expires_at <= now {
                continue;
            }
            let Ok(spec) = r.spec() else { continue };
            d.records += 1;
            d.next_expiry = Some(d.next_expiry.map_or(r.expires_at, |t| t.min(r.expires_at)));
            match spec {
                Spec::FabricNode(n) => {
                    let Some(node_id) = n.node_id.as_deref().and_then(|s| s.parse().ok()) else {
                        continue;
                    };
                    // One key is one identity: if two records claim it, the
                    // newer generation (then the smaller name) wins, whatever
                    // order the store lists them in.
                    if let Some(other) = d
                        .nodes
                        .values()
                        .find(|o| o.node_id == node_id && o.name != r.name)
                    {
                        let (og, on) = (other.generation, other.name.clone());
                        if (og, std::cmp::Reverse(on.clone()))
                            >= (r.generation, std::cmp::Reverse(r.name.clone()))
                        {
                            d.conflicts.push(format!(
                                "node records {on:?} and {:?} claim one key; kept {on:?}",
                                r.name
                            ));
                            continue;
                        }
                        d.conflicts.push(format!(
                            "node records {on:?} and {:?} claim one key; kept {:?}",
                            r.name, r.name
                        ));
                        d.nodes.remove(&on);
                    }
                    d.nodes.insert(
                        r.name.clone(),
                        NodeEntry {
                            name: r.name.clone(),
                            node_id,
                            spec: n,
                            generation: r.generation,
                            expires_at: r.expires_at,
                        },
                    );
                }
                Spec::ServiceRecord(s) => {
                    if let Some(other) = d.services.get(&s.service) {
                        let keep_other = (
                            other.generation,
                            std::cmp::Reverse(other.record_name.clone()),
                        ) >= (r.generation, std::cmp::Reverse(r.name.clone()));
                        let kept = if keep_other {
                            other.record_name.clone()
                        } else {
                            r.name.clone()
                        };
                        d.conflicts.push(format!(
                            "service {:?} is described by records {:?} and {:?}; kept {kept:?}",
                            s.service, other.record_name, r.name
                        ));
                        if keep_other {
                            continue;
                        }
                    }
                    d.services.insert(
                        s.service.clone(),
                        ServiceEntry {
                            record_name: r.name.clone(),
                            spec: s,
                            generation: r.generation,
                            expires_at: r.expires_at,
                        },
                    );
                }
                _ => {}
            }
        }
        d
    }

    /// The node whose record carries `id`, if the directory has one.
    pub fn node_by_id(&self, id: &NodeId) -> Option<&NodeEntry> {
        // A linear scan: directories are fleet-sized (the small-fleet rule)
        // and this runs per event, not per byte.
        self.nodes.values().find(|n| &n.node_id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric::gossip::RecordKey;
    use fabric_schemas::kinds::ServiceRecordSpec;
    use fabric_schemas::{Record, Scope};

    fn env(spec: &Spec, name: &str, generation: u64) -> Envelope {
        let key = fabric_schemas::keys::generate();
        let rec = Record::new(spec, name, generation, 0, 1_000, Scope::any()).expect("record");
        let bytes = SignedEnvelope::sign(rec, &[&key]).encode();
        Envelope::new(RecordKey::new(spec.kind().code(), name), generation, bytes)
    }

    fn svc(providers: &[&str]) -> Spec {
        Spec::ServiceRecord(ServiceRecordSpec {
            service: "control-api".into(),
            providers: providers.iter().map(|p| p.to_string()).collect(),
        })
    }

    #[test]
    fn clashing_service_records_resolve_the_same_way_in_any_order() {
        let a = env(&svc(&["a"]), "control-api", 5);
        let b = env(&svc(&["b"]), "control-api-2", 7);
        for order in [vec![a.clone(), b.clone()], vec![b.clone(), a.clone()]] {
            let d = Directory::from_envelopes(&order, 10);
            assert_eq!(d.services["control-api"].record_name, "control-api-2");
            assert_eq!(d.conflicts.len(), 1, "{:?}", d.conflicts);
        }
    }

    #[test]
    fn two_node_records_with_one_key_keep_the_newer() {
        let id = hex::encode([9u8; 32]);
        let node = |area: &str| {
            Spec::FabricNode(fabric_schemas::kinds::FabricNodeSpec {
                area: area.into(),
                site_id: "s".into(),
                locality_group: "l".into(),
                nat_group: "g".into(),
                node_id: Some(id.clone()),
                roles: vec![],
                endpoints: vec![],
                critical: false,
                resilience_target: None,
            })
        };
        let old = env(&node("x"), "n-old", 1);
        let new = env(&node("y"), "n-new", 2);
        for order in [
            vec![old.clone(), new.clone()],
            vec![new.clone(), old.clone()],
        ] {
            let d = Directory::from_envelopes(&order, 10);
            assert_eq!(d.nodes.keys().collect::<Vec<_>>(), vec!["n-new"]);
            assert_eq!(d.conflicts.len(), 1);
        }
    }
}
