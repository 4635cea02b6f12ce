//! The node side of the control session: heartbeats out, update hints and
//! canonical control endpoints back (seed P0, Step A).
//!
//! Three parts:
//!
//! - **Wire types** ([`HeartbeatBody`], [`HeartbeatReply`], [`ControlRequest`],
//!   [`ControlEndpoint`]). They live here, with the node that authors them;
//!   the reconciler's intake (`fabric_reconciler::heartbeat`) re-exports them.
//! - **[`decide`]**, a pure, level-triggered decision: given the live session,
//!   the canonical endpoints (the providers of the signed `control-api` record)
//!   and the session config, keep the session, connect, or reconnect. It
//!   compares *the live session* with *the canonical endpoints*; it never asks
//!   whether a config file changed. That is the fix for the seed's
//!   noop-rewrite restart bug: a control-endpoint rewrite that produced
//!   identical bytes left the node on its old (compat) session forever,
//!   because the restart was triggered by "config file changed".
//! - **[`ControlDriver`]**, a thin driver: every tick it re-reads the config
//!   file, asks its [`CanonicalSource`], calls [`decide`], executes the action
//!   (a fabric channel to `(provider, "control")`, or HTTP on the legacy
//!   compat contract) and sends one heartbeat on the live session.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use fabric::channel::Channel;
use fabric::edge::EdgeEntry;
use fabric::frame::Framed;
use fabric::topology::NodeId;
use fabric::transport::Transport;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::directory::Directory;
use crate::status::NodeStatus;

// ---------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------

/// The fabric service name of the control session (heartbeat in, hints out).
pub const CONTROL_SERVICE: &str = "control";

/// Largest heartbeat or reply frame on the `control` channel and largest HTTP
/// heartbeat body; a heartbeat is a few KiB even with many edge listeners.
pub const MAX_HEARTBEAT_BYTES: usize = 256 * 1024;

/// The only inter-node transport value that passes acceptance criterion 1.
pub const QUIC_UDP: &str = "quic-udp";

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
    Fabric { node_id: NodeId, service: String },
    Compat { url: String },
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
    pub input: String,
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
    #[serde(default)]
    pub active_records: usize,
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerMetrics {
    pub direct_ready_count: u32,
    pub relay_ready_count: u32,
    pub external_area_ready_count: u32,
    pub independent_ingress_ready_count: u32,
    pub recovery_path_count: u32,
}

/// State of the node's updater subscription plane (seed P0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdaterSubscription {
    Alive,
    /// `updater_subscription_gap`: the updater loop stopped listening.
    #[default]
    Gap,
}

/// The node's updater plane as it reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdaterReport {
    pub subscription: UpdaterSubscription,
    /// Whether this node-agent wakes its local updater from heartbeat update
    /// hints (the seed's `0.2.325-updatehintwake` capability).
    pub supports_hint_wake: bool,
    /// Unix milliseconds of the updater's last status; stale when old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<HeartbeatUpdate>,
}

/// The update a node last reported on (the rollout planner's input).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatUpdate {
    pub intent: String,
    pub generation: u64,
    /// `node-agent` or `host-agent`.
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// `blocked`, `leased`, `staged`, `applying`, `healthy`, `rolled_back`, `aborted`.
    pub state: String,
}

/// What the node knows of the fleet (acceptance criterion 4).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryReport {
    pub records: usize,
    pub nodes: usize,
    pub services: usize,
    /// The peer cache state (`fresh`, `restored N records`, ...); empty when
    /// the node keeps no peer cache.
    #[serde(default)]
    pub peer_cache: String,
}

/// The heartbeat body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatBody {
    /// The node's `FabricNode` name.
    pub node: String,
    /// The node's ed25519 public key (64 hex).
    pub node_id: String,
    pub agent_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_agent_version: Option<String>,
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
    pub fabric_registry_runtime_report: RegistryRuntimeReport,
    #[serde(default)]
    pub directory: DirectoryReport,
    pub peer_metrics: PeerMetrics,
    pub updater: UpdaterReport,
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
    #[error("heartbeat field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(
        "heartbeat sent by {presented} claims node id {claimed}: a node may only report itself"
    )]
    WrongSender { claimed: String, presented: String },
    #[error(
        "heartbeat for node {node:?} carries node id {claimed}, but its FabricNode has {expected}"
    )]
    NodeIdMismatch {
        node: String,
        claimed: String,
        expected: String,
    },
}

impl HeartbeatBody {
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The compat bridge's explicit update command, present only in replies to
    /// the one compat node the orchestrator is updating right now. Omitted
    /// otherwise, so the reply's bytes are unchanged for every other node, and
    /// old agents (which ignore unknown fields: no `deny_unknown_fields` here)
    /// read it as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<BridgeCommand>,
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
    pub generation: u64,
    /// `node-agent` or `host-agent`.
    pub component: String,
    pub version: String,
    pub artifact: BridgeArtifact,
    /// Unix seconds: a node still not on `version` by then counts as failed.
    pub deadline: i64,
}

/// Where to fetch a bridged update and how to check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeArtifact {
    /// Lower-case hex SHA-256 of the artifact; install nothing that differs.
    pub sha256: String,
    pub size: u64,
    #[serde(default)]
    pub mirrors: Vec<String>,
}

/// A request on the `control` channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ControlRequest {
    Heartbeat(Box<HeartbeatBody>),
}

// ---------------------------------------------------------------------------
// The decision
// ---------------------------------------------------------------------------

/// The session-relevant part of the node's control config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionConfig {
    /// Used only while no canonical endpoint resolves (bootstrap / recovery).
    /// A legacy install has the compat URL here.
    pub fallback: Vec<ControlEndpoint>,
    /// Consecutive failed heartbeats after which a session is replaced.
    pub max_failures: u32,
}

/// The live control session as the driver holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveSession {
    pub endpoint: ControlEndpoint,
    /// Consecutive failed heartbeats on this session (0 = last one answered).
    pub consecutive_failures: u32,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionAction {
    /// The live session is on a desired endpoint and healthy.
    Keep,
    /// No session: open one to this endpoint.
    Connect(ControlEndpoint),
    /// Close the live session and open one to `to`.
    Reconnect {
        from: ControlEndpoint,
        to: ControlEndpoint,
    },
    /// Close the failing session; nothing to go to.
    Disconnect,
    /// No session and nowhere to go yet.
    Wait,
}

/// Level-triggered: what should the session be, given what it is?
///
/// Desired endpoints are the canonical ones; only when none resolves, the
/// config's fallback. A healthy live session on a canonical endpoint is kept
/// (any provider of the record will do, so sessions do not flap between
/// providers). A healthy session while nothing canonical resolves is also
/// kept: losing the registry must not cut the node off. Everything else moves
/// to the first desired endpoint, or, when the failing session is itself on a
/// desired endpoint, to the next one after it.
///
/// Nothing here looks at whether the config file changed: a rewrite with
/// identical bytes changes nothing in the inputs, and a stale session is still
/// replaced because it is not on a canonical endpoint.
pub fn decide(
    live: Option<&LiveSession>,
    canonical: &[ControlEndpoint],
    config: &SessionConfig,
) -> SessionAction {
    let healthy = |l: &LiveSession| l.consecutive_failures < config.max_failures.max(1);
    if let Some(l) = live {
        if healthy(l) && (canonical.is_empty() || canonical.contains(&l.endpoint)) {
            return SessionAction::Keep;
        }
    }
    let desired: &[ControlEndpoint] = if canonical.is_empty() {
        &config.fallback
    } else {
        canonical
    };
    let target = match live.and_then(|l| desired.iter().position(|d| *d == l.endpoint)) {
        Some(i) => desired.get((i + 1) % desired.len()),
        None => desired.first(),
    };
    match (live, target) {
        (None, Some(t)) => SessionAction::Connect(t.clone()),
        (Some(l), Some(t)) => SessionAction::Reconnect {
            from: l.endpoint.clone(),
            to: t.clone(),
        },
        (Some(_), None) => SessionAction::Disconnect,
        (None, None) => SessionAction::Wait,
    }
}

/// The canonical control endpoints from the signed directory: every provider
/// of the `control-api` record that has a node record, in `preferred` order
/// first (the registry's live-first resolution), then the record's order.
pub fn canonical_from_directory(dir: &Directory, preferred: &[String]) -> Vec<ControlEndpoint> {
    let Some(svc) = dir.services.get(CONTROL_API_SERVICE) else {
        return Vec::new();
    };
    let mut names: Vec<&String> = preferred
        .iter()
        .filter(|p| svc.spec.providers.contains(p))
        .collect();
    for p in &svc.spec.providers {
        if !names.contains(&p) {
            names.push(p);
        }
    }
    names
        .into_iter()
        .filter_map(|n| dir.nodes.get(n))
        .map(|n| ControlEndpoint::fabric(n.node_id))
        .collect()
}

// ---------------------------------------------------------------------------
// Config file
// ---------------------------------------------------------------------------

/// The node's control config file (`control.json` in the state directory),
/// as written by installers and by the legacy control-endpoint rewrite.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfigFile {
    /// Fallback endpoints (`fabric://...` or a legacy `http://...` URL).
    #[serde(default)]
    pub fallback_endpoints: Vec<String>,
    #[serde(default)]
    pub max_failures: Option<u32>,
    /// Bearer token for the legacy HTTP contract, if it requires one.
    #[serde(default)]
    pub compat_token: Option<String>,
}

/// Why the control config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("reading control config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("control config {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("control session to {endpoint}: {reason}")]
    Session { endpoint: String, reason: String },
}

impl ControlConfigFile {
    /// Loads the config; a missing file is the default config (no fallback
    /// endpoints), since a node on the fabric needs none.
    pub fn load(path: &Path) -> Result<ControlConfigFile, ControlError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ControlConfigFile::default())
            }
            Err(source) => {
                return Err(ControlError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        serde_json::from_str(&text).map_err(|e| ControlError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    pub fn session_config(&self, path: &Path) -> Result<SessionConfig, ControlError> {
        let fallback = self
            .fallback_endpoints
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<ControlEndpoint>, _>>()
            .map_err(|e| ControlError::Parse {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(SessionConfig {
            fallback,
            max_failures: self.max_failures.unwrap_or(DEFAULT_MAX_FAILURES),
        })
    }
}

pub const DEFAULT_MAX_FAILURES: u32 = 3;

/// Largest heartbeat reply accepted from a compat (HTTP) control endpoint.
pub const MAX_COMPAT_REPLY_BYTES: usize = 256 * 1024;

// ---------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------

/// Where canonical endpoints come from (the signed directory in production).
pub trait CanonicalSource: Send + Sync + 'static {
    fn canonical(&self) -> Vec<ControlEndpoint>;
}

impl<F> CanonicalSource for F
where
    F: Fn() -> Vec<ControlEndpoint> + Send + Sync + 'static,
{
    fn canonical(&self) -> Vec<ControlEndpoint> {
        self()
    }
}

/// Builds the heartbeat for the live endpoint.
pub trait HeartbeatSource: Send + Sync + 'static {
    fn heartbeat(
        &self,
        live: Option<&ControlEndpoint>,
        recovery: &[ControlEndpoint],
    ) -> HeartbeatBody;
}

/// What a node-agent adds to its [`NodeStatus`] to make a heartbeat.
#[derive(Clone, Debug, Default)]
pub struct HeartbeatExtras {
    pub agent_version: String,
    pub host_agent_version: Option<String>,
    /// Used when the status carries no peer plan yet (all zero); the agent's
    /// own planner metrics in [`NodeStatus::peer_metrics`] win otherwise.
    pub peer_metrics: PeerMetrics,
    pub updater: UpdaterReport,
}

impl From<fabric::peer_select::PeerMetrics> for PeerMetrics {
    fn from(m: fabric::peer_select::PeerMetrics) -> Self {
        PeerMetrics {
            direct_ready_count: m.direct_ready_count,
            relay_ready_count: m.relay_ready_count,
            external_area_ready_count: m.external_area_ready_count,
            independent_ingress_ready_count: m.independent_ingress_ready_count,
            recovery_path_count: m.recovery_path_count,
        }
    }
}

/// A heartbeat from a node's status report (registry, directory, edge
/// listeners) plus what the status does not hold.
pub fn heartbeat_from_status(
    status: &NodeStatus,
    extras: &HeartbeatExtras,
    live: Option<&ControlEndpoint>,
    recovery: &[ControlEndpoint],
) -> HeartbeatBody {
    HeartbeatBody {
        node: status.name.clone(),
        node_id: status.node_id.clone(),
        agent_version: extras.agent_version.clone(),
        host_agent_version: extras.host_agent_version.clone(),
        fabric_control_endpoint: live.map(|e| e.to_string()),
        control_recovery_endpoints: recovery.iter().map(|e| e.to_string()).collect(),
        inter_node_transport: QUIC_UDP.to_owned(),
        fabric_registry_runtime_report: RegistryRuntimeReport {
            status: status.registry.status.as_str().to_owned(),
            active_records: status.registry.active_records,
            candidate_records: status.registry.candidate_records,
            resolved_core_services: status.registry.resolved_core_services.clone(),
            last_live_probe_ms: status.registry.last_live_probe.as_ref().map(|p| p.at_ms),
        },
        directory: DirectoryReport {
            records: status.directory_records,
            nodes: status.directory_nodes,
            services: status.directory_services,
            peer_cache: status.peer_cache.clone(),
        },
        peer_metrics: if status.peer_metrics == fabric::peer_select::PeerMetrics::default() {
            extras.peer_metrics
        } else {
            status.peer_metrics.into()
        },
        updater: extras.updater.clone(),
        edge_listeners: status.edge_listeners.clone(),
        sent_at_ms: now_ms(),
        // This agent verifies leases; only legacy agents say otherwise.
        lease_support: None,
        received_via: None,
    }
}

/// A [`HeartbeatSource`] over a running agent's status.
pub struct StatusHeartbeat {
    pub status: watch::Receiver<NodeStatus>,
    pub extras: Arc<std::sync::Mutex<HeartbeatExtras>>,
}

impl HeartbeatSource for StatusHeartbeat {
    fn heartbeat(
        &self,
        live: Option<&ControlEndpoint>,
        recovery: &[ControlEndpoint],
    ) -> HeartbeatBody {
        let status = self.status.borrow().clone();
        let extras = self.extras.lock().map(|e| e.clone()).unwrap_or_default();
        heartbeat_from_status(&status, &extras, live, recovery)
    }
}

/// What the driver publishes after each tick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlState {
    /// The live session's endpoint.
    pub endpoint: Option<ControlEndpoint>,
    pub consecutive_failures: u32,
    /// Reconnects done so far (a test and metrics counter).
    pub reconnects: u64,
    pub heartbeats_ok: u64,
    pub last_action: Option<String>,
    pub last_error: Option<String>,
    /// From the last reply.
    pub update_hints: BTreeMap<String, i64>,
    pub advertised_endpoints: Vec<String>,
}

enum Session {
    Fabric {
        endpoint: ControlEndpoint,
        framed: Box<Framed<Channel>>,
    },
    Compat {
        endpoint: ControlEndpoint,
        url: String,
    },
}

impl Session {
    fn endpoint(&self) -> &ControlEndpoint {
        match self {
            Session::Fabric { endpoint, .. } | Session::Compat { endpoint, .. } => endpoint,
        }
    }
}

/// The control session driver of one node.
pub struct ControlDriver {
    transport: Transport,
    config_path: PathBuf,
    canonical: Arc<dyn CanonicalSource>,
    beats: Arc<dyn HeartbeatSource>,
    session: Option<Session>,
    /// The endpoint we mean to be on while its channel is not open (yet, or
    /// again after a broken channel); counts as the live session for decide.
    pending_fabric: Option<ControlEndpoint>,
    failures: u32,
    last_config: Option<(SessionConfig, Option<String>)>,
    request_timeout: Duration,
    state: watch::Sender<ControlState>,
}

impl ControlDriver {
    pub fn new(
        transport: Transport,
        config_path: PathBuf,
        canonical: Arc<dyn CanonicalSource>,
        beats: Arc<dyn HeartbeatSource>,
    ) -> ControlDriver {
        ControlDriver {
            transport,
            config_path,
            canonical,
            beats,
            session: None,
            pending_fabric: None,
            failures: 0,
            last_config: None,
            request_timeout: Duration::from_secs(5),
            state: watch::channel(ControlState::default()).0,
        }
    }

    /// Bound on each connect and heartbeat round trip.
    pub fn with_request_timeout(mut self, t: Duration) -> ControlDriver {
        self.request_timeout = t;
        self
    }

    /// Starts on an existing session endpoint, as a node that was already
    /// connected before this driver (or this process) took over. The session
    /// is opened lazily on the next heartbeat.
    pub fn assume_live(&mut self, endpoint: ControlEndpoint) {
        // The channel (or HTTP target) is opened on the next tick.
        self.session = None;
        self.pending_fabric = Some(endpoint);
    }

    pub fn state(&self) -> watch::Receiver<ControlState> {
        self.state.subscribe()
    }

    fn live(&self) -> Option<LiveSession> {
        let endpoint = self
            .session
            .as_ref()
            .map(|s| s.endpoint().clone())
            .or_else(|| self.pending_fabric.clone())?;
        Some(LiveSession {
            endpoint,
            consecutive_failures: self.failures,
        })
    }

    /// Re-reads the config; on a bad file keeps the last good one (a broken
    /// rewrite must not take the node off its working session).
    fn config(&mut self) -> (SessionConfig, Option<String>) {
        match ControlConfigFile::load(&self.config_path)
            .and_then(|f| Ok((f.session_config(&self.config_path)?, f.compat_token)))
        {
            Ok(c) => {
                self.last_config = Some(c.clone());
                c
            }
            Err(e) => {
                tracing::warn!(error = %e, "control config unusable; keeping the last good one");
                self.last_config.clone().unwrap_or_default()
            }
        }
    }

    /// One level-triggered step: decide, act, heartbeat.
    pub async fn tick(&mut self) -> ControlState {
        let (config, token) = self.config();
        let mut canonical = self.canonical.canonical();
        if canonical.is_empty() {
            // Nothing resolves in the signed directory yet: use what the
            // control plane advertised in its last reply. Identity is still
            // checked by the transport against the advertised node id.
            canonical = self
                .state
                .borrow()
                .advertised_endpoints
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect();
        }
        let live = self.live();
        let action = decide(live.as_ref(), &canonical, &config);
        let mut st = self.state.borrow().clone();
        match &action {
            SessionAction::Keep | SessionAction::Wait => {}
            SessionAction::Disconnect => {
                tracing::info!(from = ?live.map(|l| l.endpoint.to_string()), "control session closed: failing and nowhere to go");
                self.session = None;
                self.pending_fabric = None;
                self.failures = 0;
            }
            SessionAction::Connect(to) | SessionAction::Reconnect { to, .. } => {
                let from = live.as_ref().map(|l| l.endpoint.to_string());
                tracing::info!(from = ?from, to = %to, "control session moves to canonical endpoint");
                self.session = None;
                self.pending_fabric = Some(to.clone());
                self.failures = 0;
                st.reconnects += u64::from(from.is_some());
            }
        }
        st.last_action = Some(format!("{action:?}"));
        if let Some(ep) = self.pending_fabric.clone() {
            if let Err(e) = self.open(&ep).await {
                self.failures += 1;
                st.last_error = Some(e.to_string());
            }
        }
        if let Some(session) = self.session.as_mut() {
            let endpoint = session.endpoint().clone();
            let body = self.beats.heartbeat(Some(&endpoint), &config.fallback);
            let result =
                tokio::time::timeout(self.request_timeout, send(session, &body, token.as_deref()))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()));
            match result {
                Ok(reply) if reply.accepted => {
                    self.failures = 0;
                    st.heartbeats_ok += 1;
                    st.update_hints = reply.update_hints;
                    // Only an authenticated fabric reply may steer where the
                    // session goes next; a compat (plain HTTP) reply could be
                    // forged by anyone on the path.
                    if matches!(session, Session::Fabric { .. }) {
                        st.advertised_endpoints = reply.control_endpoints;
                    }
                    st.last_error = None;
                }
                Ok(reply) => {
                    self.failures += 1;
                    st.last_error = reply.error.or_else(|| Some("heartbeat refused".into()));
                }
                Err(e) => {
                    self.failures += 1;
                    st.last_error = Some(e);
                    // A broken channel is reopened on the next tick.
                    if matches!(self.session, Some(Session::Fabric { .. })) {
                        self.pending_fabric = Some(endpoint);
                        self.session = None;
                    }
                }
            }
        }
        st.endpoint = self.live().map(|l| l.endpoint);
        st.consecutive_failures = self.failures;
        self.state.send_replace(st.clone());
        st
    }

    async fn open(&mut self, ep: &ControlEndpoint) -> Result<(), ControlError> {
        let session = match ep {
            ControlEndpoint::Fabric { node_id, service } => {
                let ch = tokio::time::timeout(
                    self.request_timeout,
                    self.transport.open(*node_id, service),
                )
                .await
                .map_err(|_| session_err(ep, "connect timed out"))?
                .map_err(|e| session_err(ep, &e.to_string()))?;
                Session::Fabric {
                    endpoint: ep.clone(),
                    framed: Box::new(Framed::with_max_frame(ch, MAX_HEARTBEAT_BYTES)),
                }
            }
            ControlEndpoint::Compat { url } => Session::Compat {
                endpoint: ep.clone(),
                url: url.clone(),
            },
        };
        self.session = Some(session);
        self.pending_fabric = None;
        Ok(())
    }

    /// Runs [`tick`](Self::tick) every `interval` until `shutdown` flips.
    pub async fn run(mut self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.tick().await;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

fn session_err(ep: &ControlEndpoint, reason: &str) -> ControlError {
    ControlError::Session {
        endpoint: ep.to_string(),
        reason: reason.to_owned(),
    }
}

async fn send(
    session: &mut Session,
    body: &HeartbeatBody,
    token: Option<&str>,
) -> Result<HeartbeatReply, String> {
    match session {
        Session::Fabric { framed, .. } => framed
            .request::<ControlRequest, HeartbeatReply>(&ControlRequest::Heartbeat(Box::new(
                body.clone(),
            )))
            .await
            .map_err(|e| e.to_string()),
        Session::Compat { url, .. } => compat_post(url, body, token).await,
    }
}

/// `POST {url}/heartbeat` on the legacy HTTP contract.
async fn compat_post(
    base: &str,
    body: &HeartbeatBody,
    token: Option<&str>,
) -> Result<HeartbeatReply, String> {
    use http_body_util::{BodyExt, Full};
    let url = format!("{}/heartbeat", base.trim_end_matches('/'));
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{url}: only http:// is supported on the compat contract"
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url}: no host"))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(conn);
    let json = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let mut req = hyper::Request::post(uri.path())
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(hyper::body::Bytes::from(json)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    // A compat server is plain HTTP over TCP: never buffer more than a reply can be.
    let bytes = http_body_util::Limited::new(resp.into_body(), MAX_COMPAT_REPLY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("{url}: reply refused: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{url}: HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{url}: bad reply: {e}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
