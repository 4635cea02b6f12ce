//! Transport settings and the QUIC parameters derived from them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, MtuDiscoveryConfig, VarInt};

use crate::topology::TopologyLabels;

/// Direct connections start at 1280 bytes of UDP payload: 1280 + 28 bytes of
/// IP/UDP header fits every path that can carry IPv6. MTU discovery then raises it.
pub(crate) const DIRECT_INITIAL_MTU: u16 = 1280;
/// Inner (tunnelled) connections: QUIC's minimum, so that with the 17-byte relay
/// header (1217 bytes) a tunnel works on any path that carries IPv6, probing up to
/// what a 1452-byte path carries after the relay header.
pub(crate) const TUNNEL_INITIAL_MTU: u16 = 1200;
pub(crate) const TUNNEL_MAX_MTU: u16 = 1452 - crate::relay::RelayHeader::LEN as u16;

/// How a node's transport behaves. `Default` is for production; tests shorten
/// the timers.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// The one UDP socket of the node.
    pub bind: SocketAddr,
    /// Where this node sits; the path ranker compares it with peers' labels.
    pub labels: TopologyLabels,
    /// Act as a relay for other nodes (the node has the relay role).
    pub relay: bool,
    /// A connection with no traffic for this long is dead.
    pub idle_timeout: Duration,
    /// Keep-alive so NAT bindings and the idle timer stay fresh.
    pub keep_alive: Duration,
    /// Per path attempt (one candidate or one relay).
    pub connect_timeout: Duration,
    /// How long a peer may take to send a stream header or control message.
    pub header_timeout: Duration,
    /// How often relayed connections we opened retry their direct candidates;
    /// `None` disables moving back to a direct path.
    pub path_upgrade_interval: Option<Duration>,
    /// How long a replaced connection may keep serving open channels.
    pub drain_grace: Duration,
    /// Concurrent bidirectional streams a peer may open on one connection.
    pub max_streams_per_connection: u32,
    /// Connections at once, counting incoming handshakes still in progress and
    /// displaced connections still draining; incoming connections beyond it are
    /// refused.
    pub max_connections: usize,
    /// Live connections per peer `NodeId` (the cached one plus replaced ones
    /// still draining). Beyond it the oldest replaced connections are closed at
    /// once, so one key cannot pile up connections by reconnecting.
    pub max_connections_per_peer: usize,
    /// Bytes a peer may have in flight to us on one connection, all streams
    /// together (QUIC connection flow-control window). Bounds what one peer can
    /// make us buffer.
    pub receive_window: u64,
    /// Bytes a peer may have in flight to us on one stream (channel).
    pub stream_receive_window: u64,
    /// Tunnels this node relays, and tunnels it terminates, at once.
    pub max_tunnels: usize,
    /// Relay role: tunnels one requesting `NodeId` may hold through this relay
    /// at once, so a single key cannot take all `max_tunnels`.
    pub relay_tunnels_per_peer: usize,
    /// A tunnel whose end-to-end connection is not up this long after the relay
    /// granted it is torn down (at the relay and at the target), so granted but
    /// unused tunnels do not hold slots.
    pub tunnel_setup_timeout: Duration,
    /// Path ladder: relays tried per connection attempt, best ranked first.
    pub max_relays_per_open: usize,
    /// Path ladder: overall deadline for finding a path to a peer (waiting for
    /// a concurrent dial included); bounds how long the per-peer dial lock is held.
    pub open_deadline: Duration,
    /// Entries kept in the per-`(peer, address)` dial counters (`probe_count`);
    /// when full, the least recently dialled entry is forgotten.
    pub max_probe_entries: usize,
    /// Relay role: bytes per second one tunnel may push through this relay (both
    /// directions together); `None` for no limit. A backstop so one tunnel cannot
    /// monopolise a relay, not a fair-share scheduler: set it to a share of the
    /// relay's uplink.
    pub relay_tunnel_rate: Option<u64>,
    /// Relay role: bytes a tunnel may burst above `relay_tunnel_rate`.
    pub relay_tunnel_burst: u64,
    /// Incoming channels waiting for a service's `accept` before we answer busy.
    pub service_queue: usize,
}

impl TransportConfig {
    /// The defaults for a node whose UDP socket binds `bind`: no labels, no relay role.
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            bind,
            labels: TopologyLabels::default(),
            relay: false,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(5),
            path_upgrade_interval: Some(Duration::from_secs(30)),
            drain_grace: Duration::from_secs(30),
            max_streams_per_connection: 256,
            max_connections: 4096,
            max_connections_per_peer: 4,
            receive_window: 8 << 20,
            stream_receive_window: 256 << 10,
            max_tunnels: 1024,
            relay_tunnels_per_peer: 16,
            tunnel_setup_timeout: Duration::from_secs(10),
            max_relays_per_open: 3,
            open_deadline: Duration::from_secs(20),
            max_probe_entries: 4096,
            // 1 GiB/s: above any single uplink we run today, so the default only
            // stops a runaway tunnel.
            relay_tunnel_rate: Some(1 << 30),
            relay_tunnel_burst: 8 << 20,
            service_queue: 64,
        }
    }
}

fn base(config: &TransportConfig) -> quinn::TransportConfig {
    let mut tc = quinn::TransportConfig::default();
    // Fall back to quinn's default if the configured value does not fit a varint.
    if let Ok(idle) = IdleTimeout::try_from(config.idle_timeout) {
        tc.max_idle_timeout(Some(idle));
    }
    tc.keep_alive_interval(Some(config.keep_alive));
    tc.max_concurrent_bidi_streams(VarInt::from_u32(config.max_streams_per_connection));
    // quinn's default connection window is unlimited (only the per-stream window
    // bounds it, times the stream count): set both explicitly so a peer that
    // sends without the service reading cannot make us buffer unbounded data.
    // Values above the varint range are clamped to it.
    tc.receive_window(VarInt::try_from(config.receive_window).unwrap_or(VarInt::MAX));
    tc.stream_receive_window(VarInt::try_from(config.stream_receive_window).unwrap_or(VarInt::MAX));
    // Channels are bidirectional streams only.
    tc.max_concurrent_uni_streams(VarInt::from_u32(0));
    // No QUIC datagrams: relay traffic is plain UDP beside the connections (see
    // `crate::relay`), so a peer's datagrams have nowhere to go.
    tc.datagram_receive_buffer_size(None);
    tc
}

/// Parameters of connections over a real UDP path.
pub(crate) fn direct_transport(config: &TransportConfig) -> Arc<quinn::TransportConfig> {
    let mut tc = base(config);
    tc.initial_mtu(DIRECT_INITIAL_MTU);
    Arc::new(tc)
}

/// Parameters of end-to-end connections carried through a relay.
pub(crate) fn tunnel_transport(config: &TransportConfig) -> Arc<quinn::TransportConfig> {
    let mut tc = base(config);
    tc.initial_mtu(TUNNEL_INITIAL_MTU);
    tc.min_mtu(TUNNEL_INITIAL_MTU);
    let mut mtud = MtuDiscoveryConfig::default();
    mtud.upper_bound(TUNNEL_MAX_MTU);
    tc.mtu_discovery_config(Some(mtud));
    Arc::new(tc)
}
