//! Semantic checks on one object and reference checks across a set: what the
//! type system cannot say (a `maxParallel` of 0, a provider that does not exist).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::{ManifestError, Object};
use crate::kinds::{
    EndpointScopeSpec, FabricNodeSpec, Kind, RolloutPolicySpec, ServiceRecordSpec, Spec, Strategy,
    UpdateIntentSpec,
};
use crate::trust::TrustAnchor;

struct Errors<'a> {
    obj: &'a Object,
    out: Vec<ManifestError>,
}

impl<'a> Errors<'a> {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out.push(ManifestError {
            file: self.obj.source.file.display().to_string(),
            line: Some(self.obj.source.line),
            column: None,
            kind: Some(self.obj.kind.as_str().to_owned()),
            name: Some(self.obj.metadata.name.clone()),
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Checks one object on its own.
pub fn check_object(obj: &Object) -> Vec<ManifestError> {
    let mut e = Errors {
        obj,
        out: Vec::new(),
    };
    if let Err(m) = dns_subdomain(&obj.metadata.name) {
        e.push("metadata.name", m);
    }
    match &obj.spec {
        Spec::FabricNode(s) => node(s, &mut e),
        Spec::ServiceRecord(s) => service(s, &mut e),
        Spec::UpdateIntent(s) => intent(s, &mut e),
        Spec::RolloutPolicy(s) => policy(s, &mut e),
        Spec::RolloutLease(_) => e.push(
            "",
            "RolloutLease is issued and signed by the orchestrator; operators never write one",
        ),
        Spec::TrustRoot(s) => {
            if let Err(err) = TrustAnchor::from_spec(s) {
                e.push("spec", err.to_string());
            }
        }
    }
    e.out
}

/// A DNS-1123 subdomain, as Kubernetes requires for object names.
fn dns_subdomain(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a DNS-1123 name (lower-case letters, digits, '-' and '.', at most 253 characters)"
        ))
    }
}

fn label_value(field: &str, v: &str, e: &mut Errors<'_>) {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        e.push(
            field,
            format!("{v:?} must be 1-63 characters of letters, digits, '-', '_' or '.'"),
        );
    }
}

fn node(s: &FabricNodeSpec, e: &mut Errors<'_>) {
    label_value("spec.area", &s.area, e);
    label_value("spec.siteId", &s.site_id, e);
    label_value("spec.localityGroup", &s.locality_group, e);
    label_value("spec.natGroup", &s.nat_group, e);
    if let Some(id) = &s.node_id {
        let mut pk = [0u8; 32];
        if hex::decode_to_slice(id, &mut pk).is_err()
            || ed25519_dalek::VerifyingKey::from_bytes(&pk).is_err()
        {
            e.push(
                "spec.nodeId",
                format!("{id:?} is not a 64-hex-digit ed25519 public key"),
            );
        }
    }
    let mut roles = BTreeSet::new();
    for (i, r) in s.roles.iter().enumerate() {
        if !roles.insert(r) {
            e.push(
                format!("spec.roles[{i}]"),
                format!("duplicate role {}", r.as_str()),
            );
        }
    }
    let mut addrs = BTreeSet::new();
    for (i, ep) in s.endpoints.iter().enumerate() {
        match ep.address.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => {
                e.push(format!("spec.endpoints[{i}].address"), "port must not be 0")
            }
            Ok(a) => {
                if !addrs.insert(a) {
                    e.push(
                        format!("spec.endpoints[{i}].address"),
                        format!("duplicate endpoint {a}"),
                    );
                }
            }
            Err(_) => e.push(
                format!("spec.endpoints[{i}].address"),
                format!("{:?} is not ip:port (use [v6]:port for IPv6)", ep.address),
            ),
        }
        if ep.scope == EndpointScopeSpec::Public
            && (ep.locality_group.is_some() || ep.nat_group.is_some())
        {
            e.push(
                format!("spec.endpoints[{i}]"),
                "a public endpoint is reachable from anywhere; localityGroup/natGroup only apply to private ones",
            );
        }
    }
    if s.resilience_target.is_some() && !s.critical {
        e.push(
            "spec.resilienceTarget",
            "only critical nodes are held to a resilience target; set critical: true or remove it",
        );
    }
}

fn service(s: &ServiceRecordSpec, e: &mut Errors<'_>) {
    if let Err(m) = dns_subdomain(&s.service) {
        e.push("spec.service", m);
    }
    if s.providers.is_empty() {
        e.push(
            "spec.providers",
            "a service needs at least one provider node",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, p) in s.providers.iter().enumerate() {
        if !seen.insert(p) {
            e.push(
                format!("spec.providers[{i}]"),
                format!("duplicate provider {p:?}"),
            );
        }
    }
}

fn intent(s: &UpdateIntentSpec, e: &mut Errors<'_>) {
    if s.version.trim().is_empty() {
        e.push("spec.version", "must not be empty");
    }
    let a = &s.artifact;
    if !crate::is_sha256_hex(&a.sha256) {
        e.push(
            "spec.artifact.sha256",
            format!("{:?} is not 64 lower-case hex digits", a.sha256),
        );
    }
    if a.size == 0 {
        e.push("spec.artifact.size", "must be greater than 0");
    }
    if let Some(p) = &a.pieces {
        use crate::kinds::PieceSpec;
        if !p.piece_size.is_power_of_two()
            || !(PieceSpec::MIN_PIECE_SIZE..=PieceSpec::MAX_PIECE_SIZE).contains(&p.piece_size)
        {
            e.push(
                "spec.artifact.pieces.pieceSize",
                format!(
                    "{} is not a power of two from {} to {}",
                    p.piece_size,
                    PieceSpec::MIN_PIECE_SIZE,
                    PieceSpec::MAX_PIECE_SIZE
                ),
            );
        }
        if !crate::is_sha256_hex(&p.root) {
            e.push(
                "spec.artifact.pieces.root",
                format!("{:?} is not 64 lower-case hex digits", p.root),
            );
        }
    }
    if a.mirrors.is_empty() {
        e.push("spec.artifact.mirrors", "at least one mirror URL is needed");
    }
    for (i, m) in a.mirrors.iter().enumerate() {
        if !(m.starts_with("https://") || m.starts_with("http://") || m.starts_with("fabric://")) {
            e.push(
                format!("spec.artifact.mirrors[{i}]"),
                format!("{m:?} must be an http(s):// or fabric:// URL"),
            );
        }
    }
    if s.target.is_empty() {
        e.push(
            "spec.target",
            "selects no node; name areas, sites, natGroups, roles or nodes (or all: true)",
        );
    }
    if s.policy.is_empty() {
        e.push("spec.policy", "must name a RolloutPolicy");
    }
}

fn policy(s: &RolloutPolicySpec, e: &mut Errors<'_>) {
    if s.max_parallel == 0 {
        e.push("spec.maxParallel", "must be at least 1");
    }
    for (field, v) in [
        ("spec.maxParallelPerArea", s.max_parallel_per_area),
        ("spec.maxParallelPerSite", s.max_parallel_per_site),
        ("spec.maxParallelPerNatGroup", s.max_parallel_per_nat_group),
    ] {
        if v == Some(0) {
            e.push(field, "must be at least 1 when set");
        }
    }
    if s.max_unavailable == 0 {
        e.push(
            "spec.maxUnavailable",
            "must be at least 1, or nothing can ever update",
        );
    }
    if s.failure_rate_stop_percent > 100 {
        e.push(
            "spec.failureRateStopPercent",
            format!(
                "{} is not a percentage (0-100)",
                s.failure_rate_stop_percent
            ),
        );
    }
    for (i, step) in s.canary_steps.iter().enumerate() {
        let f = format!("spec.canarySteps[{i}]");
        match (step.count, step.percent) {
            (Some(0), None) => e.push(f, "count must be at least 1"),
            (None, Some(p)) if p == 0 || p > 100 => e.push(f, "percent must be 1-100"),
            (Some(_), None) | (None, Some(_)) => {}
            _ => e.push(f, "set exactly one of count or percent"),
        }
    }
    match s.strategy {
        Strategy::Canary if s.canary_steps.is_empty() => e.push(
            "spec.canarySteps",
            "the canary strategy needs at least one step",
        ),
        Strategy::Pinned if s.pinned_nodes.is_empty() => e.push(
            "spec.pinnedNodes",
            "the pinned strategy needs the nodes to pin",
        ),
        Strategy::ForcedNode if s.forced_node.is_none() => {
            e.push("spec.forcedNode", "the forcedNode strategy needs a node")
        }
        _ => {}
    }
    if s.strategy != Strategy::Canary && !s.canary_steps.is_empty() {
        e.push("spec.canarySteps", "only the canary strategy uses steps");
    }
}

/// Checks references between objects of one set: duplicates, providers and
/// policies that must exist, node identities and endpoints that must be unique.
pub fn check_references(objects: &[Object]) -> Vec<ManifestError> {
    let mut out = Vec::new();
    let mut first: BTreeMap<(Kind, &str), &Object> = BTreeMap::new();
    for o in objects {
        if let Some(prev) = first.get(&(o.kind, o.name())) {
            let mut e = Errors {
                obj: o,
                out: Vec::new(),
            };
            e.push(
                "metadata.name",
                format!(
                    "duplicate {} {:?}, first defined at {}:{}",
                    o.kind,
                    o.name(),
                    prev.source.file.display(),
                    prev.source.line
                ),
            );
            out.extend(e.out);
        } else {
            first.insert((o.kind, o.name()), o);
        }
    }
    let has = |k: Kind, n: &str| first.contains_key(&(k, n));
    let any_nodes = objects.iter().any(|o| o.kind == Kind::FabricNode);
    let mut node_ids: BTreeMap<&str, &str> = BTreeMap::new();
    let mut endpoints: BTreeMap<&str, &str> = BTreeMap::new();
    for o in objects {
        let mut e = Errors {
            obj: o,
            out: Vec::new(),
        };
        match &o.spec {
            Spec::FabricNode(s) => {
                if let Some(id) = &s.node_id {
                    if let Some(other) = node_ids.insert(id, o.name()) {
                        e.push("spec.nodeId", format!("same key as node {other:?}"));
                    }
                }
                for (i, ep) in s.endpoints.iter().enumerate() {
                    // Private addresses repeat legitimately across NAT scopes.
                    if ep.scope == EndpointScopeSpec::Public {
                        if let Some(other) = endpoints.insert(&ep.address, o.name()) {
                            e.push(
                                format!("spec.endpoints[{i}].address"),
                                format!("public endpoint also claimed by node {other:?}"),
                            );
                        }
                    }
                }
            }
            Spec::ServiceRecord(s) if any_nodes => {
                for (i, p) in s.providers.iter().enumerate() {
                    if !has(Kind::FabricNode, p) {
                        e.push(
                            format!("spec.providers[{i}]"),
                            format!("no FabricNode named {p:?}"),
                        );
                    }
                }
            }
            Spec::UpdateIntent(s) => {
                if !has(Kind::RolloutPolicy, &s.policy) {
                    e.push(
                        "spec.policy",
                        format!("no RolloutPolicy named {:?}", s.policy),
                    );
                }
                if any_nodes {
                    for (i, n) in s.target.nodes.iter().enumerate() {
                        if !has(Kind::FabricNode, n) {
                            e.push(
                                format!("spec.target.nodes[{i}]"),
                                format!("no FabricNode named {n:?}"),
                            );
                        }
                    }
                }
            }
            Spec::RolloutPolicy(s) if any_nodes => {
                for (i, n) in s.pinned_nodes.iter().enumerate() {
                    if !has(Kind::FabricNode, n) {
                        e.push(
                            format!("spec.pinnedNodes[{i}]"),
                            format!("no FabricNode named {n:?}"),
                        );
                    }
                }
                if let Some(n) = &s.forced_node {
                    if !has(Kind::FabricNode, n) {
                        e.push("spec.forcedNode", format!("no FabricNode named {n:?}"));
                    }
                }
            }
            _ => {}
        }
        out.extend(e.out);
    }
    out
}
