//! Relaying: how a node with the relay role forwards an end-to-end QUIC connection
//! between two nodes that cannot reach each other directly.
//!
//! The relay never terminates the inner connection. A and B run an ordinary
//! mutually-authenticated QUIC connection; its UDP packets travel as plain UDP
//! datagrams A -> R -> B (and back), each prefixed with a [`RelayHeader`] that
//! carries a relay-issued token. R moves opaque, already-encrypted packets from
//! one leg to the other by token; it holds no key of the inner session, so it can
//! neither read nor alter the payload undetected (a flipped bit fails B's AEAD
//! check and the packet is dropped).
//!
//! Why plain UDP and not QUIC datagrams on the A<->R and R<->B connections: the
//! inner connection already provides confidentiality, integrity and
//! authentication end to end. Wrapping it again costs four extra AEAD operations
//! per packet (encrypt at A, decrypt + encrypt at R, decrypt at B) and buys only
//! the hiding of traffic metadata between an endpoint and the relay, which the
//! relay sees anyway. Control (asking for, offering and tearing down tunnels) stays
//! on the authenticated A<->R and R<->B connections; only the data path is plain.
//!
//! Tokens are 128-bit random values, one per leg (A's leg, B's leg), issued by R
//! over the authenticated control streams, bound to the address R sees the leg's
//! node at, and deleted with the tunnel. R drops packets with an unknown token or
//! from the wrong address, and rate-limits each tunnel.
//!
//! Demultiplexing against QUIC on the node's one UDP socket follows RFC 9443: a
//! QUIC packet always has the fixed bit (0x40) set in its first byte, because
//! every fabric endpoint disables QUIC-bit greasing (so no peer may clear it), and
//! long headers also set 0x80. Relay packets start with a byte below 0x40.
//!
//! Control: A opens the reserved service [`RELAY_SERVICE`] on R and asks for B;
//! R opens [`RELAY_ACCEPT_SERVICE`] on B and offers B's token; both control
//! streams stay open for the tunnel's lifetime, and closing either tears it down.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::BytesMut;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::topology::NodeId;

/// Reserved service A opens on a relay to ask for a tunnel.
pub(crate) const RELAY_SERVICE: &str = "fabric.relay";
/// Reserved service a relay opens on the target to offer a tunnel.
pub(crate) const RELAY_ACCEPT_SERVICE: &str = "fabric.relay.accept";
/// Control messages are tiny; anything bigger is an attack or a bug.
pub(crate) const CONTROL_MAX_FRAME: usize = 4096;

/// A relay-issued tunnel token: 128 random bits, so it cannot be guessed.
pub(crate) type Token = [u8; 16];

/// A fresh token from the OS random generator.
pub(crate) fn new_token() -> Token {
    let mut t = [0u8; 16];
    OsRng.fill_bytes(&mut t);
    t
}

pub(crate) fn token_to_hex(t: &Token) -> String {
    hex::encode(t)
}

/// Parses a token from a control message; `None` if it is not 32 hex digits.
pub(crate) fn token_from_hex(s: &str) -> Option<Token> {
    let bytes = hex::decode(s).ok()?;
    bytes.try_into().ok()
}

/// Whether a UDP datagram on the node's socket is a relay packet rather than
/// QUIC: relay packets start below 0x40, QUIC packets never do (see module docs).
pub(crate) fn is_relay_packet(first_byte: u8) -> bool {
    first_byte < 0x40
}

/// Direction of a relay packet. Both values are below 0x40 (see
/// [`is_relay_packet`]). Keeping the directions apart means a node that is both
/// a relay and a tunnel endpoint never confuses the two tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RelayKind {
    /// Sent by a tunnel endpoint to the relay.
    ToRelay = 0x01,
    /// Sent by the relay to a tunnel endpoint.
    FromRelay = 0x02,
}

/// `u8 kind | [u8; 16] token` before every relayed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayHeader {
    pub kind: RelayKind,
    pub token: Token,
}

impl RelayHeader {
    pub(crate) const LEN: usize = 17;

    pub(crate) fn write_to(&self, out: &mut [u8]) {
        out[0] = self.kind as u8;
        out[1..Self::LEN].copy_from_slice(&self.token);
    }

    /// Parses the header of a relay packet. `None` for anything malformed: too
    /// short to carry a header plus at least one byte, or an unknown kind.
    pub(crate) fn parse(data: &[u8]) -> Option<Self> {
        if data.len() <= Self::LEN {
            return None;
        }
        let kind = match data[0] {
            0x01 => RelayKind::ToRelay,
            0x02 => RelayKind::FromRelay,
            _ => return None,
        };
        let token = data[1..Self::LEN].try_into().ok()?;
        Some(Self { kind, token })
    }
}

/// Test and diagnostics hook on a relay: sees every forwarded tunnel payload (an
/// encrypted inner QUIC packet) and may modify it in place.
pub trait RelayTap: Send + Sync + 'static {
    /// Called once per forwarded packet before it is sent on: `from` sent it to
    /// the relay, `to` will receive it. Whatever `payload` holds on return is what
    /// gets forwarded.
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
    /// `token` (hex) goes in front of every packet the initiator sends to the
    /// relay's UDP address, and arrives in front of every packet back.
    Ok {
        token: String,
    },
    Refused {
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TunnelOffer {
    /// The target's token (hex) for this tunnel.
    pub token: String,
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

/// Counters of the relay data path on one node (as relay and as tunnel endpoint).
/// Every relay packet is counted exactly once: forwarded, delivered or dropped
/// with a reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RelayStats {
    /// Packets this node forwarded as a relay.
    pub forwarded_packets: u64,
    /// Payload bytes (without relay headers) this node forwarded as a relay.
    pub forwarded_bytes: u64,
    /// Tunnel packets delivered to this node's own endpoint (tunnel endpoint role).
    pub delivered_packets: u64,
    /// Dropped: the token belongs to no live tunnel (forged, guessed or expired).
    pub dropped_unknown_token: u64,
    /// Dropped: valid token, but not from the address it is bound to (e.g. a
    /// packet replayed from another tunnel's endpoint).
    pub dropped_wrong_source: u64,
    /// Dropped by the per-tunnel rate limit.
    pub dropped_rate_limited: u64,
    /// Dropped: below 0x40 but not a well-formed relay packet.
    pub dropped_malformed: u64,
    /// Dropped: the onward send or the hand-over to the endpoint failed.
    pub dropped_send_failed: u64,
    /// Dropped: a datagram arrived on the real socket from an address inside
    /// the virtual tunnel ranges. Those addresses never appear on a wire, so
    /// such a source is spoofed (it would otherwise pass as tunnel traffic).
    pub dropped_spoofed_virtual: u64,
}

#[derive(Debug, Default)]
pub(crate) struct RelayCounters {
    pub forwarded_packets: AtomicU64,
    pub forwarded_bytes: AtomicU64,
    pub delivered_packets: AtomicU64,
    pub unknown_token: AtomicU64,
    pub wrong_source: AtomicU64,
    pub rate_limited: AtomicU64,
    pub malformed: AtomicU64,
    pub send_failed: AtomicU64,
    pub spoofed_virtual: AtomicU64,
}

impl RelayCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RelayStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RelayStats {
            forwarded_packets: g(&self.forwarded_packets),
            forwarded_bytes: g(&self.forwarded_bytes),
            delivered_packets: g(&self.delivered_packets),
            dropped_unknown_token: g(&self.unknown_token),
            dropped_wrong_source: g(&self.wrong_source),
            dropped_rate_limited: g(&self.rate_limited),
            dropped_malformed: g(&self.malformed),
            dropped_send_failed: g(&self.send_failed),
            dropped_spoofed_virtual: g(&self.spoofed_virtual),
        }
    }
}

/// Token bucket in bytes, shared by both directions of a tunnel.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64, burst: u64) -> Self {
        Self {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    /// How many of `n` packets of `size` bytes (the last one `last_size`) may
    /// pass now; consumes their bytes.
    fn admit(&mut self, n: usize, size: usize, last_size: usize) -> usize {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let mut admitted = 0;
        while admitted < n {
            let cost = if admitted + 1 == n { last_size } else { size } as f64;
            if self.tokens < cost {
                break;
            }
            self.tokens -= cost;
            admitted += 1;
        }
        admitted
    }
}

/// Per-tunnel rate limit of a relay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateLimit {
    pub bytes_per_sec: u64,
    pub burst_bytes: u64,
}

/// One side of a tunnel as the relay sees it, when setting it up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LegEnd {
    pub node: NodeId,
    pub token: Token,
    /// The address the relay sees this node at (its outer connection's remote).
    pub addr: SocketAddr,
    /// The relay's local IP on that outer connection, so replies leave from the
    /// address the node talks to.
    pub local_ip: Option<IpAddr>,
    /// Stable id of the relay's outer connection to this node (cleanup).
    pub conn: usize,
}

/// Where packets carrying one leg's token go.
#[derive(Debug, Clone)]
struct Leg {
    from: LegEnd,
    to: LegEnd,
    limit: Option<Arc<Mutex<Bucket>>>,
    /// Set once a packet from `from` was accepted: the relay's only sign that
    /// the end-to-end connection it carries got going.
    used: Arc<AtomicBool>,
}

/// Where the relay sends an admitted batch of packets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hop {
    pub from_node: NodeId,
    pub to_node: NodeId,
    pub token: Token,
    pub addr: SocketAddr,
    pub local_ip: Option<IpAddr>,
    /// How many packets of the batch the rate limit lets through (a prefix).
    pub admitted: usize,
}

/// Why the relay refuses a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    UnknownToken,
    WrongSource,
}

/// The relay's forwarding table: token -> the leg it belongs to.
#[derive(Default)]
pub(crate) struct ForwardTable {
    map: RwLock<HashMap<Token, Leg>>,
    tap: RwLock<Option<Arc<dyn RelayTap>>>,
}

impl std::fmt::Debug for ForwardTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardTable")
            .field("tunnels", &self.tunnels())
            .finish_non_exhaustive()
    }
}

impl ForwardTable {
    /// Number of active tunnels (each has two legs).
    pub(crate) fn tunnels(&self) -> usize {
        self.map.read().map(|m| m.len() / 2).unwrap_or(0)
    }

    pub(crate) fn contains(&self, token: &Token) -> bool {
        self.map.read().is_ok_and(|m| m.contains_key(token))
    }

    pub(crate) fn set_tap(&self, tap: Option<Arc<dyn RelayTap>>) {
        if let Ok(mut t) = self.tap.write() {
            *t = tap;
        }
    }

    pub(crate) fn tap(&self) -> Option<Arc<dyn RelayTap>> {
        self.tap.read().ok()?.clone()
    }

    pub(crate) fn insert_pair(&self, a: LegEnd, b: LegEnd, limit: Option<RateLimit>) {
        let limit =
            limit.map(|l| Arc::new(Mutex::new(Bucket::new(l.bytes_per_sec, l.burst_bytes))));
        if let Ok(mut m) = self.map.write() {
            m.insert(
                a.token,
                Leg {
                    from: a,
                    to: b,
                    limit: limit.clone(),
                    used: Arc::new(AtomicBool::new(false)),
                },
            );
            m.insert(
                b.token,
                Leg {
                    from: b,
                    to: a,
                    limit,
                    used: Arc::new(AtomicBool::new(false)),
                },
            );
        }
    }

    /// Re-binds both legs to the addresses the relay currently sees the nodes at
    /// (QUIC follows a NAT rebinding on the outer connection; the tunnel follows
    /// the outer connection).
    pub(crate) fn refresh(&self, a: &Token, a_addr: SocketAddr, b: &Token, b_addr: SocketAddr) {
        let stale = self.map.read().is_ok_and(|m| {
            m.get(a).is_some_and(|l| l.from.addr != a_addr)
                || m.get(b).is_some_and(|l| l.from.addr != b_addr)
        });
        if !stale {
            return;
        }
        if let Ok(mut m) = self.map.write() {
            for (mine, theirs, mine_addr, theirs_addr) in
                [(a, b, a_addr, b_addr), (b, a, b_addr, a_addr)]
            {
                if let Some(l) = m.get_mut(mine) {
                    if l.to.token == *theirs {
                        l.from.addr = mine_addr;
                        l.to.addr = theirs_addr;
                    }
                }
            }
        }
    }

    /// Whether both legs of a tunnel have sent at least one packet through it
    /// (an end-to-end handshake needs both directions).
    pub(crate) fn carried(&self, a: &Token, b: &Token) -> bool {
        self.map.read().is_ok_and(|m| {
            [a, b]
                .iter()
                .all(|t| m.get(*t).is_some_and(|l| l.used.load(Ordering::Relaxed)))
        })
    }

    pub(crate) fn remove_pair(&self, a: &Token, b: &Token) {
        if let Ok(mut m) = self.map.write() {
            m.remove(a);
            m.remove(b);
        }
    }

    /// Drops every leg touching a closed outer connection.
    pub(crate) fn remove_conn(&self, conn: usize) {
        if let Ok(mut m) = self.map.write() {
            m.retain(|_, l| l.from.conn != conn && l.to.conn != conn);
        }
    }

    pub(crate) fn clear(&self) {
        if let Ok(mut m) = self.map.write() {
            m.clear();
        }
    }

    /// Decides where a batch of `n` packets with `token` from `src` goes and how
    /// many of them the tunnel's rate limit admits. `size` is the payload size of
    /// each packet but the last, `last_size` that of the last one.
    pub(crate) fn route(
        &self,
        token: &Token,
        src: SocketAddr,
        n: usize,
        size: usize,
        last_size: usize,
    ) -> Result<Hop, Refusal> {
        let map = self.map.read().map_err(|_| Refusal::UnknownToken)?;
        let leg = map.get(token).ok_or(Refusal::UnknownToken)?;
        if leg.from.addr != src {
            return Err(Refusal::WrongSource);
        }
        if !leg.used.load(Ordering::Relaxed) {
            leg.used.store(true, Ordering::Relaxed);
        }
        let admitted = match &leg.limit {
            Some(bucket) => bucket
                .lock()
                .map(|mut b| b.admit(n, size, last_size))
                .unwrap_or(0),
            None => n,
        };
        Ok(Hop {
            from_node: leg.from.node,
            to_node: leg.to.node,
            token: leg.to.token,
            addr: leg.to.addr,
            local_ip: leg.to.local_ip,
            admitted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let h = RelayHeader {
            kind: RelayKind::FromRelay,
            token: new_token(),
        };
        let mut buf = [0u8; RelayHeader::LEN + 1];
        h.write_to(&mut buf);
        assert!(is_relay_packet(buf[0]));
        assert_eq!(RelayHeader::parse(&buf), Some(h));
        // A header alone carries no packet.
        assert_eq!(RelayHeader::parse(&buf[..RelayHeader::LEN]), None);
        assert_eq!(RelayHeader::parse(&buf[..5]), None);
        let mut bad = buf;
        bad[0] = 0x07;
        assert_eq!(RelayHeader::parse(&bad), None);
        // QUIC short and long headers are never taken for relay packets.
        assert!(!is_relay_packet(0x40));
        assert!(!is_relay_packet(0xc0));
    }

    #[test]
    fn tokens_are_random_and_round_trip_as_hex() {
        let a = new_token();
        assert_ne!(a, new_token());
        assert_eq!(token_from_hex(&token_to_hex(&a)), Some(a));
        assert_eq!(token_from_hex("abcd"), None);
        assert_eq!(token_from_hex("zz"), None);
    }

    #[test]
    fn route_checks_token_and_source_and_rate_limits() {
        let table = ForwardTable::default();
        let ids: Vec<NodeId> = (0..2)
            .map(|_| crate::identity::NodeIdentity::generate().node_id())
            .collect();
        let a = LegEnd {
            node: ids[0],
            token: new_token(),
            addr: "127.0.0.1:1000".parse().expect("addr"),
            local_ip: None,
            conn: 1,
        };
        let b = LegEnd {
            node: ids[1],
            token: new_token(),
            addr: "127.0.0.1:2000".parse().expect("addr"),
            local_ip: None,
            conn: 2,
        };
        table.insert_pair(
            a,
            b,
            Some(RateLimit {
                bytes_per_sec: 1,
                burst_bytes: 3000,
            }),
        );
        let hop = table.route(&a.token, a.addr, 3, 1200, 1000).expect("route");
        assert_eq!((hop.token, hop.addr, hop.admitted), (b.token, b.addr, 2));
        assert_eq!(
            table.route(&a.token, b.addr, 1, 10, 10).err(),
            Some(Refusal::WrongSource)
        );
        assert_eq!(
            table.route(&new_token(), a.addr, 1, 10, 10).err(),
            Some(Refusal::UnknownToken)
        );
        table.refresh(
            &a.token,
            "127.0.0.1:1001".parse().expect("addr"),
            &b.token,
            b.addr,
        );
        assert!(table.route(&a.token, a.addr, 1, 1, 1).is_err());
        table.remove_conn(2);
        assert_eq!(table.tunnels(), 0);
    }
}
