//! Peer selection by failure domain: the seed's P3 as a sans-IO planner.
//!
//! [`plan()`] is a pure function from the local node, the directory's
//! candidates, the runtime observations and a [`PlannerConfig`] to a ranked
//! [`PeerPlan`]: which peers to keep direct, which through a relay, each
//! peer's endpoints classified and in probe order, and the seed's metrics
//! (`direct_ready_count`, `relay_ready_count`, `external_area_ready_count`,
//! `independent_ingress_ready_count`, `recovery_path_count`). No sockets, no
//! clock, no randomness: the node-agent feeds it from the peer cache and the
//! transport, and the transport plugs [`rank_endpoints`] into its dialer
//! through [`PlannerRanker`] (module [`ranker`], the one stateful piece: a
//! lock around the live observations).
//!
//! It is not the transport: it never probes, and "ready" always means what
//! the transport reported, never what the plan intends.
//!
//! Modules: [`input`] (what goes in), `labels` (comparing labels, unknown is
//! never evidence), [`endpoint`] (behaviours 5–8), `score` (behaviours 1–2),
//! [`plan`](mod@plan) (selection and behaviour 4), [`metrics`] (behaviour 3
//! and the metric definitions), [`resilience`] (targets of critical nodes).
//! The scoring and a worked example are in `docs/peer-selection.md`.
//!
//! ```
//! use fabric::peer_select::{plan, Assignment, LocalNode, Observations, PeerCandidate, PlannerConfig};
//! use fabric::topology::{EndpointCandidate, EndpointScope, NodeId, TopologyLabels};
//!
//! let labels = |area: &str, nat: &str| TopologyLabels {
//!     area: area.into(),
//!     nat_group: nat.into(),
//!     ..Default::default()
//! };
//! let me = LocalNode { id: NodeId([1; 32]), labels: labels("home", "home-nat") };
//! let usa = PeerCandidate {
//!     id: NodeId([2; 32]),
//!     labels: labels("usa", ""),
//!     endpoints: vec![EndpointCandidate {
//!         addr: "192.0.2.50:7443".parse()?,
//!         scope: EndpointScope::Public,
//!         locality_group: None,
//!         nat_group: None,
//!     }],
//!     roles: Default::default(),
//!     critical: false,
//! };
//! let p = plan(&me, &[usa], &Observations::default(), &PlannerConfig::default())?;
//! assert_eq!(p.peers[0].assignment, Assignment::Direct);
//! assert_eq!(p.metrics.direct_ready_count, 0); // planned, not ready yet
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod endpoint;
pub mod input;
mod labels;
pub mod metrics;
pub mod plan;
pub mod ranker;
pub mod resilience;
mod score;

#[cfg(test)]
mod tests;

pub use endpoint::{
    classify_endpoints, looks_local, rank_endpoints, ClassifiedEndpoint, EndpointClass,
    EndpointHealth,
};
pub use input::{
    EndpointObservation, LocalNode, Observations, ObserverReport, PeerCandidate, PeerObservation,
    PeerRoles, PlannerConfig, ProbeOutcome,
};
pub use labels::IngressKey;
pub use metrics::{compute_metrics, PathReadiness, PeerMetrics};
pub use plan::{plan, Assignment, PeerDecision, PeerPlan, PickReason, PlanError, RecoveryStatus};
pub use ranker::{candidate_from_info, PlannerRanker};
pub use resilience::{evaluate, Metric, ResilienceReport, ResilienceTarget, UnmetTarget};
pub use score::DirectTier;
