//! Errors of the transport, each naming the node, service or endpoint involved.

use std::net::SocketAddr;
use std::time::Duration;

use crate::channel::ServiceNameError;
use crate::path::PathKind;
use crate::tls::{IdentityMismatch, TlsError};
use crate::topology::NodeId;

/// One failed way of reaching a node, kept so the final error explains them all.
#[derive(Debug)]
pub struct PathAttempt {
    pub path: PathKind,
    pub error: TransportError,
}

fn format_attempts(attempts: &[PathAttempt]) -> String {
    if attempts.is_empty() {
        return "no direct candidate in scope and no relay known".to_owned();
    }
    attempts
        .iter()
        .map(|a| format!("[{}: {}]", a.path, a.error))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("binding the node's UDP socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "node {node} is not in the address book; add its signed node record with \
         Transport::set_peer first"
    )]
    UnknownPeer { node: NodeId },
    #[error("refusing to open a channel to this node itself ({node})")]
    SelfDial { node: NodeId },
    #[error(transparent)]
    InvalidService(#[from] ServiceNameError),
    #[error("service {service:?} already has a listener on this node")]
    AlreadyListening { service: String },
    #[error(transparent)]
    IdentityMismatch(#[from] IdentityMismatch),
    #[error("connecting to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("timed out after {after:?} {during}")]
    Timeout { during: String, after: Duration },
    #[error("no path to node {node} worked: {}", format_attempts(.attempts))]
    Unreachable {
        node: NodeId,
        attempts: Vec<PathAttempt>,
    },
    #[error("relay {relay} refused a tunnel to {target}: {reason}")]
    RelayRefused {
        relay: NodeId,
        target: NodeId,
        reason: String,
    },
    #[error("node {node} has no listener for service {service:?}")]
    UnknownService { node: NodeId, service: String },
    #[error("node {node} is too busy to accept a channel for service {service:?}; retry later")]
    ServiceBusy { node: NodeId, service: String },
    #[error("connection to node {node} was lost ({reason}); open a new channel to reconnect")]
    ConnectionLost { node: NodeId, reason: String },
    #[error("protocol error with node {node}: {reason}")]
    Protocol { node: NodeId, reason: String },
    #[error("the transport has been shut down")]
    Shutdown,
}

impl TransportError {
    /// The identity mismatch behind this error, if a peer presented the wrong key
    /// (directly, or as one of the failed path attempts).
    pub fn identity_mismatch(&self) -> Option<&IdentityMismatch> {
        match self {
            TransportError::IdentityMismatch(m) => Some(m),
            TransportError::Unreachable { attempts, .. } => {
                attempts.iter().find_map(|a| a.error.identity_mismatch())
            }
            _ => None,
        }
    }

    /// The connection under an operation died; a fresh `open` may succeed on
    /// another path.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, TransportError::ConnectionLost { .. })
    }
}
