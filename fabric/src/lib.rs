//! The Fabric runtime library, shared by the node-agent, the host-agent and the
//! reconciler.
//!
//! - [`topology`]: `NodeId`, topology labels and endpoint candidates.
//! - [`identity`], [`tls`]: the node key on disk and TLS bound to the expected `NodeId`.
//! - [`transport`], [`channel`], [`frame`], [`path`], [`relay`]: quinn endpoint,
//!   fabric channels, framed messages, the direct/relay path ladder.
//! - [`edge`]: the inventory of every TCP listener, each with a role.
//! - [`peer_select`]: the sans-IO peer planner by failure domain (seed P3).
//! - [`gossip`]: the sans-IO peer-exchange core and its simulator.
//!
//! Inter-node traffic is QUIC over UDP only; nothing in this crate opens a TCP
//! connection between nodes. TCP exists only at registered edge listeners.

pub mod gossip;
pub mod peer_select;
pub mod topology;

pub mod channel;
pub mod edge;
pub mod frame;
pub mod identity;
pub mod path;
pub mod relay;
pub mod tls;
pub mod transport;
