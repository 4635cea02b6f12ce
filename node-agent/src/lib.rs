//! The per-node runtime.
//!
//! A node-agent joins the fabric with its own key, keeps the full directory of
//! the fleet from signed records it gets from peers (bounded push-pull gossip),
//! persists it in a crash-safe peer cache, probes the providers of the core
//! services and reports its registry status (`missing`, `candidate_only`,
//! `active`).
//!
//! - [`agent`]: the async driver ([`agent::start`]).
//! - [`node_core`]: the sans-IO node core the driver runs.
//! - [`sim`]: a deterministic simulator of fleets of node cores.
//! - [`admission`]: gossip admission backed by `fabric_schemas::accept`.
//! - [`directory`]: the fleet view derived from admitted records.
//! - [`leases`]: the node's own admission check of the leases it holds.
//! - [`membership`]: the hello frame and membership proofs at the door.
//! - [`loops`]: the probe and redial loops on the shared runtime.
//! - [`registry`]: registry runtime status and `resolve(service)` (pure).
//! - [`cache`]: the persisted peer cache.
//! - [`status`]: the node's status report.
//! - [`control`]: the control session (heartbeats, hints, endpoint convergence).
//! - [`update`]: the update plane (state machine, journal, artifacts, updater).

pub mod admission;
pub mod agent;
pub mod cache;
pub mod control;
pub mod directory;
pub mod leases;
pub mod loops;
pub mod membership;
pub mod metrics;
pub mod node_core;
pub mod registry;
pub mod sim;
pub mod status;
pub mod update;

pub use agent::{start, AgentConfig, AgentHandle};
