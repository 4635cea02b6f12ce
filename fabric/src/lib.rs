//! The Fabric runtime library, shared by the node-agent, the host-agent and the
//! reconciler.

pub mod peer_select;
pub mod topology;
