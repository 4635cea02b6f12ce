//! Control endpoints: where a node's control session goes, and the one rule
//! that says which endpoints are canonical.
//!
//! The rule ([`canonical_control_endpoints`]) is called by the node (from its
//! signed directory), by the Control API when it answers a heartbeat (from
//! the store or its reply snapshot), so node and control plane can never
//! disagree about what "canonical" means.

use std::fmt;
use std::str::FromStr;

use fabric_schemas::kinds::ServiceRecordSpec;

use crate::node_id::NodeId;

/// The fabric service name of the control session (heartbeat in, hints out).
pub const CONTROL_SERVICE: &str = "control";

/// The `control-api` service name in the signed directory.
pub const CONTROL_API_SERVICE: &str = "control-api";

/// A control endpoint: where a node's control session goes.
///
/// - `fabric://<node-id>/<service>`: a fabric channel to a node providing
///   `control-api` (the canonical contract).
/// - `http://...` / `https://...`: the legacy HTTP control contract over TCP
///   (the seed's `19191` compat contract), whatever its port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ControlEndpoint {
    /// A fabric channel to `(node_id, service)`.
    Fabric {
        /// The provider's key.
        node_id: NodeId,
        /// The fabric service (normally [`CONTROL_SERVICE`]).
        service: String,
    },
    /// The legacy HTTP control contract.
    Compat {
        /// Base URL of the legacy contract.
        url: String,
    },
}

impl ControlEndpoint {
    /// The canonical endpoint of a `control-api` provider.
    pub fn fabric(node_id: NodeId) -> ControlEndpoint {
        ControlEndpoint::Fabric {
            node_id,
            service: CONTROL_SERVICE.to_owned(),
        }
    }

    /// True for the legacy HTTP/TCP control contract.
    pub fn is_compat(&self) -> bool {
        matches!(self, ControlEndpoint::Compat { .. })
    }
}

impl fmt::Display for ControlEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlEndpoint::Fabric { node_id, service } => {
                write!(f, "fabric://{node_id}/{service}")
            }
            ControlEndpoint::Compat { url } => f.write_str(url),
        }
    }
}

/// Why a control endpoint string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("control endpoint {input:?}: {reason}")]
pub struct EndpointParseError {
    /// The string that was offered.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for ControlEndpoint {
    type Err = EndpointParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| EndpointParseError {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(rest) = s.strip_prefix("fabric://") {
            let (id, service) = rest.split_once('/').unwrap_or((rest, CONTROL_SERVICE));
            let node_id = id
                .parse::<NodeId>()
                .map_err(|_| err("expected fabric://<64 hex node id>/<service>"))?;
            if service.is_empty() {
                return Err(err("empty service name"));
            }
            return Ok(ControlEndpoint::Fabric {
                node_id,
                service: service.to_owned(),
            });
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(ControlEndpoint::Compat { url: s.to_owned() });
        }
        Err(err("expected fabric://... or http(s)://..."))
    }
}

/// The canonical control endpoints: `fabric://<node-id>/control` of every
/// provider of a `control-api` service record whose node has a key.
///
/// `services` are the service records in view (any service; only
/// `control-api` ones count), `node_id_of` resolves a provider name to the
/// key its `FabricNode` names (`None`: not known, skipped). Providers named in
/// `preferred` come first, in that order (the registry's live-first
/// resolution on a node; empty at the control plane), then every other
/// provider in record order. No endpoint appears twice.
pub fn canonical_control_endpoints<'a>(
    services: impl IntoIterator<Item = &'a ServiceRecordSpec>,
    node_id_of: impl Fn(&str) -> Option<NodeId>,
    preferred: &[String],
) -> Vec<ControlEndpoint> {
    let mut providers: Vec<&str> = Vec::new();
    for svc in services {
        if svc.service != CONTROL_API_SERVICE {
            continue;
        }
        for p in &svc.providers {
            if !providers.contains(&p.as_str()) {
                providers.push(p);
            }
        }
    }
    let mut ordered: Vec<&str> = preferred
        .iter()
        .map(String::as_str)
        .filter(|p| providers.contains(p))
        .collect();
    for p in providers {
        if !ordered.contains(&p) {
            ordered.push(p);
        }
    }
    let mut out = Vec::new();
    for name in ordered {
        if let Some(id) = node_id_of(name) {
            let ep = ControlEndpoint::fabric(id);
            if !out.contains(&ep) {
                out.push(ep);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(service: &str, providers: &[&str]) -> ServiceRecordSpec {
        ServiceRecordSpec {
            service: service.to_owned(),
            providers: providers.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    fn id(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    #[test]
    fn endpoints_round_trip_and_classify() {
        let f = ControlEndpoint::fabric(NodeId([7; 32]));
        assert_eq!(f.to_string().parse::<ControlEndpoint>(), Ok(f.clone()));
        assert!(!f.is_compat());
        let c: ControlEndpoint = "http://vpn.example:19191/api/v1"
            .parse()
            .expect("http parses");
        assert!(c.is_compat());
        assert!("ftp://x".parse::<ControlEndpoint>().is_err());
        assert!("fabric://nothex/control"
            .parse::<ControlEndpoint>()
            .is_err());
    }

    #[test]
    fn canonical_endpoints_are_control_api_providers_with_keys_preferred_first() {
        let services = [
            svc("update-store", &["s1"]),
            svc(CONTROL_API_SERVICE, &["c1", "c2", "c3"]),
        ];
        let ids = |n: &str| match n {
            "c1" => Some(id(1)),
            "c2" => Some(id(2)),
            "s1" => Some(id(9)),
            _ => None,
        };
        // c3 has no key: skipped; s1 provides another service: ignored.
        assert_eq!(
            canonical_control_endpoints(&services, ids, &[]),
            vec![
                ControlEndpoint::fabric(id(1)),
                ControlEndpoint::fabric(id(2))
            ]
        );
        // A preferred provider comes first; an unknown preferred name is ignored.
        assert_eq!(
            canonical_control_endpoints(&services, ids, &["c2".into(), "zz".into()]),
            vec![
                ControlEndpoint::fabric(id(2)),
                ControlEndpoint::fabric(id(1))
            ]
        );
    }

    #[test]
    fn a_provider_named_twice_gives_one_endpoint() {
        let services = [
            svc(CONTROL_API_SERVICE, &["c1", "c1"]),
            svc(CONTROL_API_SERVICE, &["c1"]),
        ];
        let eps = canonical_control_endpoints(&services, |_| Some(id(1)), &[]);
        assert_eq!(eps, vec![ControlEndpoint::fabric(id(1))]);
    }
}
