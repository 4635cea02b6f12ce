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
    /// The path that was tried (a direct address or a relay).
    pub path: PathKind,
    /// Why that path failed.
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
    /// The node's UDP socket could not be bound.
    #[error("binding the node's UDP socket on {addr}: {source}")]
    Bind {
        /// The configured bind address.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The node's TLS material or QUIC crypto configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No node record for the node is known, so there is nothing to dial.
    #[error(
        "node {node} is not in the address book; add its signed node record with \
         Transport::set_peer first"
    )]
    UnknownPeer {
        /// The node asked for.
        node: NodeId,
    },
    /// The caller asked for a channel to this node's own id.
    #[error("refusing to open a channel to this node itself ({node})")]
    SelfDial {
        /// This node's id.
        node: NodeId,
    },
    /// The service name is not acceptable (syntax, or the reserved prefix).
    #[error(transparent)]
    InvalidService(#[from] ServiceNameError),
    /// A second listener was requested for a service that already has one.
    #[error("service {service:?} already has a listener on this node")]
    AlreadyListening {
        /// The service name.
        service: String,
    },
    /// The peer proved a different key than its node record names.
    #[error(transparent)]
    IdentityMismatch(#[from] IdentityMismatch),
    /// The QUIC handshake with an endpoint failed, or the peer's identity could
    /// not be confirmed.
    #[error("connecting to {endpoint}: {reason}")]
    Connect {
        /// The address dialled or accepted from, or a relay description.
        endpoint: String,
        /// What quinn or the identity check reported.
        reason: String,
    },
    /// A step did not finish within its configured time limit.
    #[error("timed out after {after:?} {during}")]
    Timeout {
        /// The step that timed out, phrased to follow "timed out after ...".
        during: String,
        /// The limit that expired.
        after: Duration,
    },
    /// Every direct candidate and relay was tried and none gave a connection.
    #[error("no path to node {node} worked: {}", format_attempts(.attempts))]
    Unreachable {
        /// The node that could not be reached.
        node: NodeId,
        /// Each path tried and why it failed, in the order tried.
        attempts: Vec<PathAttempt>,
    },
    /// A relay answered a tunnel request with a refusal.
    #[error("relay {relay} refused a tunnel to {target}: {reason}")]
    RelayRefused {
        /// The relay asked.
        relay: NodeId,
        /// The node the tunnel was for.
        target: NodeId,
        /// The relay's stated reason.
        reason: String,
    },
    /// The peer has no listener for the service.
    #[error("node {node} has no listener for service {service:?}")]
    UnknownService {
        /// The peer.
        node: NodeId,
        /// The service asked for.
        service: String,
    },
    /// The peer's queue of channels for the service is full (its listener is not
    /// keeping up); retrying later may work.
    #[error("node {node} is too busy to accept a channel for service {service:?}; retry later")]
    ServiceBusy {
        /// The peer.
        node: NodeId,
        /// The busy service.
        service: String,
    },
    /// The connection under the operation closed; see [`TransportError::is_connection_lost`].
    #[error("connection to node {node} was lost ({reason}); open a new channel to reconnect")]
    ConnectionLost {
        /// The peer of the lost connection.
        node: NodeId,
        /// The stream or connection error that showed it.
        reason: String,
    },
    /// The peer (or a relay) sent something the protocol does not allow.
    #[error("protocol error with node {node}: {reason}")]
    Protocol {
        /// The misbehaving peer or relay.
        node: NodeId,
        /// What was wrong.
        reason: String,
    },
    /// [`Transport::shutdown`](super::Transport::shutdown) was called; no new operations.
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
