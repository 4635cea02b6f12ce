//! The Fabric runtime library, shared by the node-agent, the host-agent and the
//! reconciler.

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
