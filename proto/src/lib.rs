//! The wire contract between a node, its host agent and the control plane.
//!
//! Every type that crosses a process boundary between those three lives
//! here, with serde, so that each side names one definition:
//!
//! - [`node_id`]: a node's identity ([`NodeId`], its ed25519 public key).
//! - [`edge`]: the edge-listener inventory lines a node reports.
//! - [`heartbeat`]: the heartbeat body, the reply, the bridge command.
//! - [`endpoint`]: control endpoints and the one rule computing the
//!   canonical ones ([`endpoint::canonical_control_endpoints`]).
//! - [`hints`]: the one rule computing update hints ([`hints::update_hints`]).
//! - [`update`]: the seven update states and the update report.
//! - [`host`]: the host agent's status, carried in every heartbeat.
//!
//! This crate never does I/O: no sockets, no files, no clocks (times are
//! fields and arguments), no tokio. It depends on nothing of ours but
//! `fabric-schemas`, so the host agent, the node-agent and the reconciler can
//! all name these types without pulling in each other or the transport.
//!
//! Versioning: every heartbeat and reply carries [`heartbeat::SCHEMA_VERSION`]
//! in its `schema` field (absent on the wire means 1, the first version).
//! Fields are only ever added with a default, and nothing here denies unknown
//! fields, so an older reader keeps reading a newer writer.

pub mod edge;
pub mod endpoint;
pub mod heartbeat;
pub mod hints;
pub mod host;
pub mod node_id;
pub mod update;

pub use endpoint::{ControlEndpoint, EndpointParseError};
pub use heartbeat::{HeartbeatBody, HeartbeatReply};
pub use node_id::{NodeId, NodeIdParseError};
pub use update::{UpdateReport, UpdateState};
