//! The Fabric control plane.
//!
//! It will hold the manifest sources (a GitOps folder watched with notify, and
//! `apply` through the Control API), the durable store (embedded by default,
//! PostgreSQL in production), the reconcile loops that write `observedGeneration`
//! and conditions back, registry signing, the update orchestrator and the fleet
//! audit.

pub mod api;
pub mod audit;
pub mod heartbeat;
pub mod orchestrator;
pub mod rollout;

pub mod store;

pub mod runtime;

pub mod source;

pub mod controller;
pub mod publish;
pub mod replica;
