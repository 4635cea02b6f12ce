//! The Fabric control plane: manifest sources (a GitOps folder, `apply`
//! through the Control API), the durable store (embedded or PostgreSQL), the
//! reconcile loops that publish signed records and write `observedGeneration`
//! and conditions back, the update orchestrator, the Control API and the
//! fleet audit. [`replica`] wires them into the production process
//! (`fabric-reconciler serve`); `docs/control-plane.md` has the design.

pub mod api;
pub mod audit;
pub mod orchestrator;
pub mod rollout;

pub mod store;

pub mod source;

pub mod controller;
pub mod publish;
