//! The heartbeat a node sends on its control session, the control plane's
//! reply, and the compat bridge's command.
//!
//! A heartbeat is node-authored data: it is never authoritative
//! control-plane state. The control plane reads it through these types only
//! (the intake validates it, the audit and the orchestrator read typed
//! fields), so a field's meaning is written down once, here.

use std::collections::BTreeMap;

use fabric_schemas::kinds::Component;
use serde::{Deserialize, Serialize};

use crate::edge::EdgeEntry;
use crate::endpoint::ControlEndpoint;
use crate::host::HostStatus;
use crate::node_id::NodeId;
use crate::update::{UpdateReport, UpdateState};

/// The version of this contract that this build writes. Absent on the wire
/// means 1 (the first version, before the field existed).
pub const SCHEMA_VERSION: u32 = 1;

fn schema_v1() -> u32 {
    1
}

/// Largest heartbeat or reply frame on the `control` channel and largest HTTP
/// heartbeat body; a heartbeat is a few KiB even with many edge listeners.
pub const MAX_HEARTBEAT_BYTES: usize = 256 * 1024;

/// Largest heartbeat reply accepted from a compat (HTTP) control endpoint.
pub const MAX_COMPAT_REPLY_BYTES: usize = 256 * 1024;

/// The only inter-node transport value that passes acceptance criterion 1.
pub const QUIC_UDP: &str = "quic-udp";

/// Which intake path delivered a heartbeat (stamped by the server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IntakePath {
    /// The fabric channel service `control` (canonical).
    Fabric,
    /// `POST /api/v1/heartbeat` on the Control API ingress.
    ControlApi,
    /// `POST /api/v1/heartbeat` on the `compat-overlap` listener (legacy).
    CompatOverlap,
}

impl IntakePath {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            IntakePath::Fabric => "fabric",
            IntakePath::ControlApi => "control-api",
            IntakePath::CompatOverlap => "compat-overlap",
        }
    }
}

/// `fabric_registry_runtime_report` as a node reports it (seed P1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryRuntimeReport {
    /// `missing`, `candidate_only` or `active`.
    pub status: String,
    /// Core-service records resolved to a provider that answered a live probe.
    #[serde(default)]
    pub active_records: usize,
    /// Core-service records resolved, but with no live provider yet.
    #[serde(default)]
    pub candidate_records: usize,
    /// Core service -> providers the node resolves it to.
    #[serde(default)]
    pub resolved_core_services: BTreeMap<String, Vec<String>>,
    /// Unix milliseconds of the last live probe, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_live_probe_ms: Option<u64>,
}

/// The seed's P3 metrics, spelled as it spells them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerMetrics {
    /// Peers with a confirmed direct path.
    pub direct_ready_count: u32,
    /// Peers reachable through a ready relay.
    pub relay_ready_count: u32,
    /// Ready peers in another area.
    pub external_area_ready_count: u32,
    /// Ready peers behind independent ingress (different NAT groups).
    pub independent_ingress_ready_count: u32,
    /// Independent ways back to the control edge.
    pub recovery_path_count: u32,
}

impl PeerMetrics {
    /// Each metric as `(name, help, value)`, in the seed's order: what every
    /// `/metrics` exposition writes under these names.
    pub fn named(&self) -> [(&'static str, &'static str, u32); 5] {
        [
            (
                "direct_ready_count",
                "Peers ready on a direct path.",
                self.direct_ready_count,
            ),
            (
                "relay_ready_count",
                "Peers ready through a relay.",
                self.relay_ready_count,
            ),
            (
                "external_area_ready_count",
                "Ready peers in another area.",
                self.external_area_ready_count,
            ),
            (
                "independent_ingress_ready_count",
                "Ready peers behind distinct public ingress (NAT groups).",
                self.independent_ingress_ready_count,
            ),
            (
                "recovery_path_count",
                "Ready paths outside the node's own area.",
                self.recovery_path_count,
            ),
        ]
    }
}

/// State of the node's updater subscription plane (seed P0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdaterSubscription {
    /// The updater loop is listening and stamped progress recently.
    Alive,
    /// `updater_subscription_gap`: the updater loop stopped listening.
    #[default]
    Gap,
}

/// The node's updater plane as it reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdaterReport {
    /// Whether the updater is listening (measured from its progress stamps).
    pub subscription: UpdaterSubscription,
    /// Whether this node-agent wakes its local updater from heartbeat update
    /// hints (the seed's `0.2.325-updatehintwake` capability).
    pub supports_hint_wake: bool,
    /// Unix milliseconds of the updater's last status; stale when old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_at_ms: Option<u64>,
    /// The update attempt the node is on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<HeartbeatUpdate>,
}

/// The update a node last reported on (the rollout planner's input).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatUpdate {
    /// The `UpdateIntent` name.
    pub intent: String,
    /// The intent generation the attempt is for.
    pub generation: u64,
    /// `node-agent` or `host-agent`.
    pub phase: String,
    /// The lease the attempt runs under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// `blocked`, `leased`, `staged`, `applying`, `healthy`, `rolled_back`, `aborted`.
    pub state: String,
}

impl HeartbeatUpdate {
    /// The typed report; `None` when its phase or state is not one this
    /// version knows (an old or newer agent's vocabulary is not guessed at).
    pub fn report(&self) -> Option<UpdateReport> {
        let phase: Component =
            serde_json::from_value(serde_json::Value::String(self.phase.clone())).ok()?;
        Some(UpdateReport {
            intent: self.intent.clone(),
            generation: self.generation,
            phase,
            lease_id: self.lease_id.clone(),
            state: UpdateState::parse(&self.state)?,
        })
    }

    /// The wire form of a typed report.
    pub fn from_report(r: &UpdateReport) -> HeartbeatUpdate {
        HeartbeatUpdate {
            intent: r.intent.clone(),
            generation: r.generation,
            phase: r.phase.as_str().to_owned(),
            lease_id: r.lease_id.clone(),
            state: r.state.as_str().to_owned(),
        }
    }
}

/// The node's own health checks, as it reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// True when every check passed.
    pub healthy: bool,
    /// The checks that failed, each with a reason.
    #[serde(default)]
    pub failing: BTreeMap<String, String>,
}

/// What the node knows of the fleet (acceptance criterion 4).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryReport {
    /// Records held.
    pub records: usize,
    /// `FabricNode` records held.
    pub nodes: usize,
    /// `ServiceRecord`s held.
    pub services: usize,
    /// The peer cache state (`fresh`, `restored N records`, ...); empty when
    /// the node keeps no peer cache.
    #[serde(default)]
    pub peer_cache: String,
}

/// The heartbeat body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatBody {
    /// The contract version the node wrote ([`SCHEMA_VERSION`]).
    #[serde(default = "schema_v1")]
    pub schema: u32,
    /// The node's `FabricNode` name.
    pub node: String,
    /// The node's ed25519 public key (64 hex).
    pub node_id: String,
    /// The running node-agent's version.
    pub agent_version: String,
    /// The host agent's version; `None` when no host agent supervises the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_agent_version: Option<String>,
    /// The host agent's full status, when one supervises the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostStatus>,
    /// The endpoint the node's *live* control session uses (not the configured
    /// one): this is what says whether it still depends on compat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric_control_endpoint: Option<String>,
    /// Endpoints the node falls back to when no canonical endpoint resolves:
    /// its recovery path (P4.3 needs none of them on the compat contract).
    #[serde(default)]
    pub control_recovery_endpoints: Vec<String>,
    /// `quic-udp` for every current node-agent.
    #[serde(default)]
    pub inter_node_transport: String,
    /// The node's registry runtime status (seed P1).
    pub fabric_registry_runtime_report: RegistryRuntimeReport,
    /// What the node knows of the fleet.
    #[serde(default)]
    pub directory: DirectoryReport,
    /// The seed's P3 peer metrics.
    pub peer_metrics: PeerMetrics,
    /// The updater plane.
    pub updater: UpdaterReport,
    /// The node's own health checks; `None` from a node that does not run
    /// them (read as healthy: it is alive enough to report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthReport>,
    /// Every TCP listener of the node's process.
    #[serde(default)]
    pub edge_listeners: Vec<EdgeEntry>,
    /// Unix milliseconds on the node's clock (informational; freshness uses
    /// the server's receive time).
    #[serde(default)]
    pub sent_at_ms: u64,
    /// `Some(false)`: this agent predates the orchestrator and cannot verify
    /// or hold rollout leases, so the orchestrator updates it through the
    /// compat bridge ([`HeartbeatReply::bridge`]). Absent means lease-capable
    /// (every current agent), which keeps old heartbeats meaning what they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_support: Option<bool>,
    /// Stamped by the server on intake; whatever a node sends is overwritten,
    /// so a node cannot hide that it used the compat contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_via: Option<IntakePath>,
}

/// Why a heartbeat was refused at intake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    /// A field is malformed.
    #[error("heartbeat field {field}: {reason}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The sender's key is not the node id the heartbeat claims.
    #[error(
        "heartbeat sent by {presented} claims node id {claimed}: a node may only report itself"
    )]
    WrongSender {
        /// The node id in the body.
        claimed: String,
        /// The key the channel verified.
        presented: String,
    },
    /// The node id differs from the node's `FabricNode` record.
    #[error(
        "heartbeat for node {node:?} carries node id {claimed}, but its FabricNode has {expected}"
    )]
    NodeIdMismatch {
        /// The node's name.
        node: String,
        /// The node id in the body.
        claimed: String,
        /// The node id its `FabricNode` names.
        expected: String,
    },
}

impl HeartbeatBody {
    /// A minimal heartbeat of the current schema: registry `missing`, nothing
    /// known, nothing measured. The node fills in what it measured.
    pub fn new(node: &str, node_id: &str, agent_version: &str) -> HeartbeatBody {
        HeartbeatBody {
            schema: SCHEMA_VERSION,
            node: node.to_owned(),
            node_id: node_id.to_owned(),
            agent_version: agent_version.to_owned(),
            host_agent_version: None,
            host: None,
            fabric_control_endpoint: None,
            control_recovery_endpoints: Vec::new(),
            inter_node_transport: QUIC_UDP.to_owned(),
            fabric_registry_runtime_report: RegistryRuntimeReport {
                status: "missing".to_owned(),
                ..RegistryRuntimeReport::default()
            },
            directory: DirectoryReport::default(),
            peer_metrics: PeerMetrics::default(),
            updater: UpdaterReport::default(),
            health: None,
            edge_listeners: Vec::new(),
            sent_at_ms: 0,
            lease_support: None,
            received_via: None,
        }
    }

    /// The typed update report, if the node made one this version can read.
    pub fn update_report(&self) -> Option<UpdateReport> {
        self.updater.update.as_ref()?.report()
    }

    /// False for an agent that predates the orchestrator (`lease_support:
    /// false`): it cannot verify or hold leases.
    pub fn lease_capable(&self) -> bool {
        self.lease_support != Some(false)
    }

    /// Whether the node's own checks pass; a node that reports no checks is
    /// read as healthy (it is alive enough to report).
    pub fn healthy(&self) -> bool {
        self.health.as_ref().is_none_or(|h| h.healthy)
    }

    /// Structural checks done at intake before anything is stored.
    pub fn validate(&self) -> Result<(), HeartbeatError> {
        let bad = |field, reason: &str| {
            Err(HeartbeatError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.node.is_empty()
            || self.node.len() > 253
            || self.node.contains('/')
            || self.node.chars().any(char::is_control)
        {
            return bad("node", "must be a FabricNode name (1..=253 bytes, no '/')");
        }
        if self.node_id.parse::<NodeId>().is_err() {
            return bad("node_id", "must be 64 hex digits (the node's public key)");
        }
        if let Some(ep) = &self.fabric_control_endpoint {
            if let Err(e) = ep.parse::<ControlEndpoint>() {
                return bad("fabric_control_endpoint", &e.reason);
            }
        }
        match self.fabric_registry_runtime_report.status.as_str() {
            "missing" | "candidate_only" | "active" => Ok(()),
            _ => bad(
                "fabric_registry_runtime_report.status",
                "must be missing, candidate_only or active",
            ),
        }
    }

    /// The live control endpoint, parsed (`None` if absent or unparsable).
    pub fn control_endpoint(&self) -> Option<ControlEndpoint> {
        self.fabric_control_endpoint.as_deref()?.parse().ok()
    }

    /// True when this heartbeat shows a dependency on the compat control
    /// contract: it arrived on the compat overlap listener, or the node's live
    /// session is on an HTTP control endpoint.
    pub fn depends_on_compat_control(&self) -> bool {
        self.received_via == Some(IntakePath::CompatOverlap)
            || self.control_endpoint().is_some_and(|e| e.is_compat())
    }

    /// True when a recovery endpoint is on the compat contract (or unparsable,
    /// which a legacy agent's URL may well be).
    pub fn recovery_depends_on_compat(&self) -> bool {
        self.control_recovery_endpoints
            .iter()
            .any(|e| e.parse::<ControlEndpoint>().map_or(true, |e| e.is_compat()))
    }
}

/// The control plane's answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The contract version the control plane wrote ([`SCHEMA_VERSION`]).
    #[serde(default = "schema_v1")]
    pub schema: u32,
    /// False when the heartbeat was refused (see `error`) or the intake is
    /// full (retry later).
    pub accepted: bool,
    /// Update hints: the newest `UpdateIntent` generation per component
    /// (`node-agent`, `host-agent`) targeting this node. A node whose updater
    /// has not seen that generation wakes it (seed P0 step 4).
    #[serde(default)]
    pub update_hints: BTreeMap<String, i64>,
    /// The canonical control endpoints (`fabric://<node-id>/control` of every
    /// `control-api` provider).
    #[serde(default)]
    pub control_endpoints: Vec<String>,
    /// Why the heartbeat was not accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The compat bridge's explicit update command, present only in replies to
    /// the one compat node the orchestrator is updating right now. Omitted
    /// otherwise, so the reply's bytes are unchanged for every other node, and
    /// old agents (which ignore unknown fields: no `deny_unknown_fields` here)
    /// read it as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<BridgeCommand>,
    /// Signed envelopes (hex) for the node: the `UpdateIntent` records its
    /// hints name when its updater has not reported them yet, and its
    /// `RolloutLease` records. The node admits them through `accept` like
    /// any other record (the Control API is one intent source of several);
    /// omitted when empty, so other replies are unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<String>,
}

impl Default for HeartbeatReply {
    fn default() -> Self {
        HeartbeatReply {
            schema: SCHEMA_VERSION,
            accepted: false,
            update_hints: BTreeMap::new(),
            control_endpoints: Vec::new(),
            error: None,
            bridge: None,
            records: Vec::new(),
        }
    }
}

/// An update command for a node that predates the orchestrator (it heartbeats
/// with `lease_support: false`). It replaces the lease such a node cannot
/// verify: install `version` of `component` from `artifact`, then report the
/// new version in the next heartbeat. A node that gives up reports
/// `updater.update = {intent, generation, phase: component, state:
/// "rolled_back"}` (or `aborted`), which stops the bridge for an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeCommand {
    /// The `UpdateIntent` this command carries out.
    pub intent: String,
    /// The intent's generation.
    pub generation: u64,
    /// `node-agent` or `host-agent`.
    pub component: String,
    /// The version to install.
    pub version: String,
    /// Where to get it and how to check it.
    pub artifact: BridgeArtifact,
    /// Unix seconds: a node still not on `version` by then counts as failed.
    pub deadline: i64,
}

/// Where to fetch a bridged update and how to check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeArtifact {
    /// Lower-case hex SHA-256 of the artifact; install nothing that differs.
    pub sha256: String,
    /// Exact length in bytes.
    pub size: u64,
    /// Where the artifact may be downloaded.
    #[serde(default)]
    pub mirrors: Vec<String>,
}

/// A request on the `control` channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ControlRequest {
    /// One heartbeat; answered with a [`HeartbeatReply`].
    Heartbeat(Box<HeartbeatBody>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_without_schema_reads_as_version_one_and_round_trips() {
        let hb = HeartbeatBody::new("n1", &"ab".repeat(32), "0.1.0");
        let mut json = serde_json::to_value(&hb).expect("serialises");
        assert_eq!(json["schema"], SCHEMA_VERSION);
        json.as_object_mut().expect("object").remove("schema");
        let back: HeartbeatBody = serde_json::from_value(json).expect("parses");
        assert_eq!(back.schema, 1);
        assert_eq!(back, hb);
        assert!(back.validate().is_ok());
    }

    #[test]
    fn unknown_fields_from_a_newer_writer_are_ignored() {
        let mut json = serde_json::to_value(HeartbeatReply::default()).expect("serialises");
        json["field_of_a_later_version"] = serde_json::json!(true);
        let back: HeartbeatReply = serde_json::from_value(json).expect("parses");
        assert_eq!(back, HeartbeatReply::default());
    }

    #[test]
    fn the_update_report_is_typed_only_when_every_word_is_known() {
        let mut hb = HeartbeatBody::new("n1", &"ab".repeat(32), "0.1.0");
        let report = UpdateReport {
            intent: "i".into(),
            generation: 3,
            phase: Component::NodeAgent,
            lease_id: Some("l".into()),
            state: UpdateState::Staged,
        };
        hb.updater.update = Some(HeartbeatUpdate::from_report(&report));
        assert_eq!(hb.update_report(), Some(report));
        if let Some(u) = hb.updater.update.as_mut() {
            u.state = "finished".into();
        }
        assert_eq!(hb.update_report(), None);
    }

    #[test]
    fn health_and_lease_support_default_to_what_old_agents_meant() {
        let mut hb = HeartbeatBody::new("n1", &"ab".repeat(32), "0.1.0");
        assert!(hb.healthy() && hb.lease_capable());
        hb.health = Some(HealthReport {
            healthy: false,
            failing: [("transport".to_owned(), "down".to_owned())].into(),
        });
        hb.lease_support = Some(false);
        assert!(!hb.healthy() && !hb.lease_capable());
    }
}
