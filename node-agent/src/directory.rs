//! The node's view of the fleet, derived from admitted records: which nodes
//! exist (identity, labels, endpoints, roles) and which nodes provide which
//! service.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use fabric::gossip::Envelope;
use fabric::path::PeerInfo;
use fabric::topology::{EndpointCandidate, EndpointScope, NodeId, TopologyLabels};
use fabric_schemas::kinds::{EndpointScopeSpec, FabricNodeSpec, NodeRole, ServiceRecordSpec};
use fabric_schemas::{Envelope as SignedEnvelope, Kind, Spec};

/// One node as its signed record describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeEntry {
    pub name: String,
    pub node_id: NodeId,
    pub spec: FabricNodeSpec,
    pub generation: u64,
    pub expires_at: i64,
}

impl NodeEntry {
    pub fn labels(&self) -> TopologyLabels {
        labels_of(&self.spec)
    }

    pub fn peer_info(&self) -> PeerInfo {
        PeerInfo {
            candidates: candidates_of(&self.spec),
            labels: self.labels(),
            is_relay: self.spec.roles.contains(&NodeRole::Relay),
        }
    }
}

pub fn labels_of(spec: &FabricNodeSpec) -> TopologyLabels {
    TopologyLabels {
        area: spec.area.clone(),
        site_id: spec.site_id.clone(),
        locality_group: spec.locality_group.clone(),
        nat_group: spec.nat_group.clone(),
    }
}

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
    pub record_name: String,
    pub spec: ServiceRecordSpec,
    pub generation: u64,
    pub expires_at: i64,
}

/// Everything the node currently knows, rebuilt from the record store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Directory {
    pub nodes: BTreeMap<String, NodeEntry>,
    /// Keyed by service name (`control-api`, ...).
    pub services: BTreeMap<String, ServiceEntry>,
    /// Records of every kind, unexpired.
    pub records: usize,
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
            match spec {
                Spec::FabricNode(n) => {
                    let Some(node_id) = n.node_id.as_deref().and_then(|s| s.parse().ok()) else {
                        continue;
                    };
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

    pub fn node_by_id(&self, id: &NodeId) -> Option<&NodeEntry> {
        self.nodes.values().find(|n| &n.node_id == id)
    }

    /// Kind counts, for status output.
    pub fn kind_name(kind: u8) -> &'static str {
        Kind::from_code(kind)
            .map(|k| k.as_str())
            .unwrap_or("unknown")
    }
}
