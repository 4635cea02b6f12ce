//! Relaying: how a node with the relay role forwards an end-to-end QUIC connection
//! between two nodes that cannot reach each other directly.
//!
//! The relay never terminates the inner connection. A and B run an ordinary
//! mutually-authenticated QUIC connection whose UDP packets travel as QUIC
//! datagrams on the A<->R and R<->B connections, each prefixed with a small
//! [`TunnelHeader`]. R moves opaque, already-encrypted packets from one connection
//! to the other by tunnel id; it holds no key of the inner session, so it can
//! neither read nor alter the payload undetected (a flipped bit fails B's AEAD
//! check and the packet is dropped).
//!
//! Control: A opens the reserved service [`RELAY_SERVICE`] on R and asks for B;
//! R opens [`RELAY_ACCEPT_SERVICE`] on B and offers a tunnel id; both control
//! streams stay open for the tunnel's lifetime, and closing either tears it down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::topology::NodeId;

/// Reserved service A opens on a relay to ask for a tunnel.
pub(crate) const RELAY_SERVICE: &str = "fabric.relay";
/// Reserved service a relay opens on the target to offer a tunnel.
pub(crate) const RELAY_ACCEPT_SERVICE: &str = "fabric.relay.accept";
/// Control messages are tiny; anything bigger is an attack or a bug.
pub(crate) const CONTROL_MAX_FRAME: usize = 4096;

/// Direction of a tunnel datagram on an outer connection. Keeping the two
/// directions apart lets one connection carry tunnels where either side is the
/// relay without id collisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum TunnelKind {
    /// Sent by a tunnel endpoint to the relay.
    ToRelay = 0,
    /// Sent by the relay to a tunnel endpoint.
    FromRelay = 1,
}

/// `u8 kind | u64 tunnel id (big endian)` before every tunnelled packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TunnelHeader {
    pub kind: TunnelKind,
    pub tunnel: u64,
}

impl TunnelHeader {
    pub(crate) const LEN: usize = 9;

    pub(crate) fn write(&self, out: &mut BytesMut) {
        out.put_u8(self.kind as u8);
        out.put_u64(self.tunnel);
    }

    /// Parses a header; `None` for anything malformed (dropped by the caller).
    pub(crate) fn parse(mut data: &[u8]) -> Option<Self> {
        if data.len() < Self::LEN {
            return None;
        }
        let kind = match data.get_u8() {
            0 => TunnelKind::ToRelay,
            1 => TunnelKind::FromRelay,
            _ => return None,
        };
        Some(Self {
            kind,
            tunnel: data.get_u64(),
        })
    }
}

/// Test and diagnostics hook on a relay: sees every forwarded tunnel payload (an
/// encrypted inner QUIC packet) and may modify it in place.
pub trait RelayTap: Send + Sync + 'static {
    fn on_forward(&self, from: NodeId, to: NodeId, payload: &mut BytesMut);
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub(crate) enum RelayRequest {
    Connect { target: NodeId },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub(crate) enum RelayResponse {
    Ok { tunnel: u64 },
    Refused { reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TunnelOffer {
    pub tunnel: u64,
    /// Who asked for the tunnel, as the relay saw it. Informational only: the
    /// target authenticates the initiator end-to-end in the inner handshake.
    pub from: NodeId,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub(crate) enum OfferResponse {
    Accepted,
    Refused { reason: String },
}

#[derive(Clone, Debug)]
struct Forward {
    to: quinn::Connection,
    tunnel: u64,
    from_node: NodeId,
    to_node: NodeId,
}

/// The relay's forwarding table: (incoming connection, tunnel id) -> where to send.
#[derive(Debug, Default)]
pub(crate) struct ForwardTable {
    map: RwLock<HashMap<(usize, u64), Forward>>,
    next_id: AtomicU64,
}

impl ForwardTable {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Number of active tunnels (each has two directions).
    pub(crate) fn tunnels(&self) -> usize {
        self.map.read().map(|m| m.len() / 2).unwrap_or(0)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert_pair(
        &self,
        a: &quinn::Connection,
        a_tunnel: u64,
        a_node: NodeId,
        b: &quinn::Connection,
        b_tunnel: u64,
        b_node: NodeId,
    ) {
        if let Ok(mut m) = self.map.write() {
            m.insert(
                (a.stable_id(), a_tunnel),
                Forward {
                    to: b.clone(),
                    tunnel: b_tunnel,
                    from_node: a_node,
                    to_node: b_node,
                },
            );
            m.insert(
                (b.stable_id(), b_tunnel),
                Forward {
                    to: a.clone(),
                    tunnel: a_tunnel,
                    from_node: b_node,
                    to_node: a_node,
                },
            );
        }
    }

    pub(crate) fn remove_pair(
        &self,
        a: &quinn::Connection,
        a_tunnel: u64,
        b: &quinn::Connection,
        b_tunnel: u64,
    ) {
        if let Ok(mut m) = self.map.write() {
            m.remove(&(a.stable_id(), a_tunnel));
            m.remove(&(b.stable_id(), b_tunnel));
        }
    }

    /// Drops every entry touching a closed connection.
    pub(crate) fn remove_conn(&self, conn: usize) {
        if let Ok(mut m) = self.map.write() {
            let to_drop: Vec<(usize, u64)> = m
                .iter()
                .filter(|(k, f)| k.0 == conn || f.to.stable_id() == conn)
                .map(|(k, _)| *k)
                .collect();
            for k in to_drop {
                m.remove(&k);
            }
        }
    }

    pub(crate) fn clear(&self) {
        if let Ok(mut m) = self.map.write() {
            m.clear();
        }
    }

    /// Forwards one tunnel packet. Returns false for unknown tunnels.
    pub(crate) fn forward(
        &self,
        from_conn: usize,
        tunnel: u64,
        payload: &[u8],
        tap: Option<&Arc<dyn RelayTap>>,
    ) -> bool {
        let Some(fwd) = self
            .map
            .read()
            .ok()
            .and_then(|m| m.get(&(from_conn, tunnel)).cloned())
        else {
            return false;
        };
        let mut out = BytesMut::with_capacity(TunnelHeader::LEN + payload.len());
        TunnelHeader {
            kind: TunnelKind::FromRelay,
            tunnel: fwd.tunnel,
        }
        .write(&mut out);
        out.put_slice(payload);
        if let Some(tap) = tap {
            let mut body = out.split_off(TunnelHeader::LEN);
            tap.on_forward(fwd.from_node, fwd.to_node, &mut body);
            out.unsplit(body);
        }
        let out: Bytes = out.freeze();
        if let Err(e) = fwd.to.send_datagram(out) {
            // Same semantics as a router: a packet that cannot go on is dropped and
            // the end-to-end connection's loss recovery deals with it.
            tracing::trace!(to = %fwd.to_node.short(), error = %e, "relay dropped a packet");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let mut buf = BytesMut::new();
        let h = TunnelHeader {
            kind: TunnelKind::FromRelay,
            tunnel: 0xdead_beef,
        };
        h.write(&mut buf);
        assert_eq!(TunnelHeader::parse(&buf), Some(h));
        assert_eq!(TunnelHeader::parse(&buf[..5]), None);
        let mut bad = buf.to_vec();
        bad[0] = 7;
        assert_eq!(TunnelHeader::parse(&bad), None);
    }
}
