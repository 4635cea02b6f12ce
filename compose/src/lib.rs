//! The composition root: where the control plane and the agents meet.
//!
//! The reconciler library never depends on an agent, and the agents never
//! depend on the control plane; the processes that need both are assembled
//! here:
//!
//! - [`replica`]: the production replica, a reconciler co-located with a
//!   `control-api` node (`fabric-reconciler serve --node ...`). The node keeps
//!   its own control session; it reaches its own Control API through an
//!   in-process link ([`replica::IntakeLink`]) because a transport cannot dial
//!   its own id.
//! - [`fleet`]: a whole fleet on loopback (`fabricctl up`, multi-node tests):
//!   a fresh trust root, signed records, one node-agent per node.
//! - [`inject`]: the node-side ends of record delivery (a running agent, a
//!   member of a local fleet) as the reconciler's `RecordInjector`s.
//!
//! This crate never holds a decision of its own: it only wires.

pub mod fleet;
pub mod inject;
pub mod replica;
