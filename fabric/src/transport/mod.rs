//! The QUIC transport: one UDP socket and one quinn endpoint per node, an address
//! book of peers, a cache of authenticated connections, and the path ladder
//! (ranked direct candidates, then relays).
//!
//! Services use [`Transport::open`] and [`Transport::listen`] and get
//! [`Channel`]s; which path carries them is visible only through
//! [`Transport::path_to`] (tests, metrics).

mod config;
mod error;
mod socket;
#[cfg(test)]
mod tests;
mod tunnel;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

pub use config::TransportConfig;
pub use error::{PathAttempt, TransportError};

use crate::channel::{
    encode_header, read_header, validate_service, Channel, ChannelCount, ChannelGuard,
    ChannelListener, HeaderError, Status,
};
use crate::identity::NodeIdentity;
use crate::path::{DefaultPathRanker, DialOutcome, PathKind, PathRanker, PeerInfo};
use crate::relay::{RelayStats, RelayTap, RELAY_ACCEPT_SERVICE, RELAY_SERVICE};
use crate::tls::{self, IdentityMismatch, TlsIdentity, SERVER_NAME};
use crate::topology::NodeId;
use socket::FabricSocket;

/// QUIC application close codes, so a peer's log says why we hung up.
pub(crate) mod close_code {
    pub(crate) const SHUTDOWN: u32 = 0;
    pub(crate) const PATH_REPLACED: u32 = 1;
    pub(crate) const RELAY_LOST: u32 = 2;
    pub(crate) const IDENTITY: u32 = 3;
    pub(crate) const DISCONNECT: u32 = 4;
    pub(crate) const PROBE_DONE: u32 = 5;
    pub(crate) const PEER_LIMIT: u32 = 6;
}

/// A live, authenticated connection to a peer and how it is carried.
#[derive(Clone, Debug)]
pub(crate) struct ConnEntry {
    pub conn: quinn::Connection,
    pub peer: NodeId,
    pub path: PathKind,
    /// We dialled it (only the dialler moves a relayed connection to a direct path).
    pub outbound: bool,
    pub channels: Arc<ChannelCount>,
}

impl ConnEntry {
    fn is_alive(&self) -> bool {
        self.conn.close_reason().is_none()
    }
}

pub(crate) struct Inner {
    node_id: NodeId,
    tls: TlsIdentity,
    config: TransportConfig,
    endpoint: quinn::Endpoint,
    socket: Arc<FabricSocket>,
    direct_tc: Arc<quinn::TransportConfig>,
    tunnel_tc: Arc<quinn::TransportConfig>,
    tunnel_server: Arc<quinn::ServerConfig>,
    book: RwLock<HashMap<NodeId, PeerInfo>>,
    ranker: RwLock<Arc<dyn PathRanker>>,
    /// Direct dials per `(peer, address)`, so tests and metrics can prove which
    /// addresses were (never) tried. Bounded by `max_probe_entries`.
    probes: Mutex<ProbeTable>,
    /// The connection each peer's channels use (one per peer).
    conns: Mutex<HashMap<NodeId, ConnEntry>>,
    /// Every registered connection that has not ended yet, per peer: the cached
    /// one plus replaced ones still draining. What `max_connections` and
    /// `max_connections_per_peer` count.
    live: Mutex<LiveConns>,
    /// Incoming handshakes in progress (they count against `max_connections`).
    handshaking: Arc<AtomicUsize>,
    /// Per-peer dial locks; an entry exists only while someone dials that peer.
    dialing: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
    /// Relay role: tunnels granted, in total and per requesting node.
    relay_slots: Arc<tunnel::TunnelSlots>,
    /// Target role: tunnels terminated here, in total and per offering relay.
    target_slots: Arc<tunnel::TunnelSlots>,
    services: Mutex<HashMap<String, mpsc::Sender<Channel>>>,
    shutdown: watch::Sender<bool>,
}

/// A node's fabric transport. Cheap to clone; call [`Transport::shutdown`] to stop it.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node_id", &self.inner.node_id)
            .field("local", &self.inner.socket)
            .finish_non_exhaustive()
    }
}

/// Dial counters per `(peer, address)` with least-recently-dialled eviction.
#[derive(Debug, Default)]
struct ProbeTable {
    counts: HashMap<(NodeId, SocketAddr), ProbeCount>,
    /// Monotonic dial sequence; the entry with the smallest `last` is evicted.
    seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct ProbeCount {
    count: u64,
    last: u64,
}

impl ProbeTable {
    fn record(&mut self, key: (NodeId, SocketAddr), limit: usize) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(c) = self.counts.get_mut(&key) {
            c.count += 1;
            c.last = seq;
            return;
        }
        // A full table forgets the entry dialled longest ago: counters exist for
        // tests and metrics and must not grow with every address a peer (or a
        // caller of `probe`) ever named. O(n), but only on a miss when full.
        while self.counts.len() >= limit.max(1) {
            let oldest = self
                .counts
                .iter()
                .min_by_key(|(_, c)| c.last)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => self.counts.remove(&k),
                None => break,
            };
        }
        self.counts.insert(
            key,
            ProbeCount {
                count: 1,
                last: seq,
            },
        );
    }
}

/// Registered, not yet ended connections per peer.
#[derive(Debug, Default)]
struct LiveConns {
    by_peer: HashMap<NodeId, Vec<ConnEntry>>,
    total: usize,
}

impl LiveConns {
    fn remove(&mut self, peer: NodeId, stable_id: usize) {
        if let Some(list) = self.by_peer.get_mut(&peer) {
            let before = list.len();
            list.retain(|e| e.conn.stable_id() != stable_id);
            self.total -= before - list.len();
            if list.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
    }
}

/// Decrements a counter when dropped (an incoming handshake ended, however).
struct CountGuard(Arc<AtomicUsize>);

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A handle on one peer's dial lock. Dropping the last handle removes the lock
/// from the map, so `dialing` only holds peers being dialled right now.
struct DialSlot<'a> {
    inner: &'a Inner,
    node: NodeId,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> DialSlot<'a> {
    fn new(inner: &'a Inner, node: NodeId) -> Self {
        let lock = match inner.dialing.lock() {
            Ok(mut d) => d.entry(node).or_default().clone(),
            Err(_) => Arc::new(tokio::sync::Mutex::new(())),
        };
        Self { inner, node, lock }
    }
}

impl Drop for DialSlot<'_> {
    fn drop(&mut self) {
        if let Ok(mut d) = self.inner.dialing.lock() {
            // Handles are only cloned under this mutex, so a count of two (the
            // map's and ours) cannot grow while we look: nobody else waits.
            if Arc::strong_count(&self.lock) == 2
                && d.get(&self.node)
                    .is_some_and(|l| Arc::ptr_eq(l, &self.lock))
            {
                d.remove(&self.node);
            }
        }
    }
}

/// Removes a service's registration when its listener is dropped.
struct ListenerRegistration {
    inner: std::sync::Weak<Inner>,
    service: String,
}

impl Drop for ListenerRegistration {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            if let Ok(mut s) = inner.services.lock() {
                s.remove(&self.service);
            }
        }
    }
}

impl Transport {
    /// Binds the node's UDP socket and starts accepting connections.
    pub async fn bind(
        identity: &NodeIdentity,
        config: TransportConfig,
    ) -> Result<Self, TransportError> {
        let bind_err = |source| TransportError::Bind {
            addr: config.bind,
            source,
        };
        let std_socket = std::net::UdpSocket::bind(config.bind).map_err(bind_err)?;
        std_socket.set_nonblocking(true).map_err(bind_err)?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let real = runtime.wrap_udp_socket(std_socket).map_err(bind_err)?;
        let socket = Arc::new(FabricSocket::new(real).map_err(bind_err)?);

        let tls = TlsIdentity::new(identity)?;
        let server_crypto = tls::server_crypto(&tls)?;
        let direct_tc = config::direct_transport(&config);
        let tunnel_tc = config::tunnel_transport(&config);
        let mut server = quinn::ServerConfig::with_crypto(server_crypto.clone());
        server.transport_config(direct_tc.clone());
        let mut tunnel_server = quinn::ServerConfig::with_crypto(server_crypto);
        tunnel_server.transport_config(tunnel_tc.clone());

        let mut endpoint_config = quinn::EndpointConfig::default();
        // Relay packets share the socket with QUIC and are told apart by the QUIC
        // fixed bit (RFC 9443). Not advertising grease_quic_bit means no peer may
        // clear that bit in packets to us.
        endpoint_config.grease_quic_bit(false);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server),
            socket.clone(),
            runtime,
        )
        .map_err(bind_err)?;

        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            node_id: identity.node_id(),
            tls,
            config,
            endpoint,
            socket,
            direct_tc,
            tunnel_tc,
            tunnel_server: Arc::new(tunnel_server),
            book: RwLock::new(HashMap::new()),
            ranker: RwLock::new(Arc::new(DefaultPathRanker)),
            probes: Mutex::new(ProbeTable::default()),
            conns: Mutex::new(HashMap::new()),
            live: Mutex::new(LiveConns::default()),
            handshaking: Arc::new(AtomicUsize::new(0)),
            dialing: Mutex::new(HashMap::new()),
            relay_slots: Arc::new(tunnel::TunnelSlots::default()),
            target_slots: Arc::new(tunnel::TunnelSlots::default()),
            services: Mutex::new(HashMap::new()),
            shutdown,
        });
        tracing::info!(
            node_id = %inner.node_id,
            addr = ?inner.endpoint.local_addr().ok(),
            relay = inner.config.relay,
            "fabric transport listening"
        );
        inner.spawn(inner.clone().accept_loop());
        if let Some(every) = inner.config.path_upgrade_interval {
            inner.spawn(inner.clone().upgrade_loop(every));
        }
        Ok(Self { inner })
    }

    /// This node's id, the public half of its identity key.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The address of the node's UDP socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Records (or replaces) what the signed node record says about a peer.
    pub fn set_peer(&self, node: NodeId, info: PeerInfo) {
        if let Ok(mut book) = self.inner.book.write() {
            book.insert(node, info);
        }
    }

    /// Forgets a peer's node record and its dial counts (see [`Transport::probe_count`]).
    /// Connections already open to it are left alone.
    pub fn remove_peer(&self, node: NodeId) {
        if let Ok(mut book) = self.inner.book.write() {
            book.remove(&node);
        }
        if let Ok(mut p) = self.inner.probes.lock() {
            p.counts.retain(|(n, _), _| *n != node);
        }
    }

    /// Replaces the path ranking (the peer planner plugs in here).
    pub fn set_path_ranker(&self, ranker: Arc<dyn PathRanker>) {
        if let Ok(mut r) = self.inner.ranker.write() {
            *r = ranker;
        }
    }

    /// Installs a hook that sees every packet this node relays (tests, diagnostics).
    pub fn set_relay_tap(&self, tap: Option<Arc<dyn RelayTap>>) {
        self.inner.socket.forwards.set_tap(tap);
    }

    /// Opens a channel to `service` on `node`, connecting first if needed.
    pub async fn open(&self, node: NodeId, service: &str) -> Result<Channel, TransportError> {
        validate_service(service, false)?;
        self.until_shutdown(self.open_inner(node, service)).await
    }

    /// Runs `op` unless the transport shuts down first: a dial waiting out its
    /// connect timeout would otherwise hold the endpoint (and its UDP port)
    /// for that long after `shutdown`.
    async fn until_shutdown<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, TransportError>>,
    ) -> Result<T, TransportError> {
        let mut shutdown = self.inner.shutdown_signal();
        tokio::select! {
            r = op => r,
            _ = shutdown.wait_for(|stop| *stop) => Err(TransportError::Shutdown),
        }
    }

    async fn open_inner(&self, node: NodeId, service: &str) -> Result<Channel, TransportError> {
        let entry = self.inner.connection_to(node).await?;
        match self.inner.open_on(&entry, service).await {
            Err(e) if e.is_connection_lost() => {
                // The cached connection died under us (relay gone, peer restarted):
                // one fresh attempt walks the path ladder again.
                tracing::info!(
                    peer = %node, path = %entry.path, error = %e,
                    "cached connection lost, reconnecting"
                );
                self.inner.forget(node, entry.conn.stable_id());
                let entry = self.inner.connection_to(node).await?;
                self.inner.open_on(&entry, service).await
            }
            other => other,
        }
    }

    /// Starts serving `service`; incoming channels carry the peer's verified NodeId.
    pub fn listen(&self, service: &str) -> Result<ChannelListener, TransportError> {
        validate_service(service, false)?;
        let (tx, rx) = mpsc::channel(self.inner.config.service_queue.max(1));
        let mut services = self
            .inner
            .services
            .lock()
            .map_err(|_| TransportError::Shutdown)?;
        if services.get(service).is_some_and(|s| !s.is_closed()) {
            return Err(TransportError::AlreadyListening {
                service: service.to_owned(),
            });
        }
        services.insert(service.to_owned(), tx);
        let registration = ListenerRegistration {
            inner: Arc::downgrade(&self.inner),
            service: service.to_owned(),
        };
        Ok(ChannelListener::new(
            service.to_owned(),
            rx,
            Box::new(registration),
        ))
    }

    /// Establishes (or reuses) a connection to `node` and reports its path.
    pub async fn connect(&self, node: NodeId) -> Result<PathKind, TransportError> {
        self.until_shutdown(async { Ok(self.inner.connection_to(node).await?.path) })
            .await
    }

    /// Closes the cached connection to `node`, if any (channels on it fail).
    pub fn disconnect(&self, node: NodeId) {
        let removed = self
            .inner
            .conns
            .lock()
            .ok()
            .and_then(|mut c| c.remove(&node));
        if let Some(e) = removed {
            e.conn
                .close(close_code::DISCONNECT.into(), b"disconnected by local node");
        }
    }

    /// The path of the live connection to `node`, if there is one. For tests and
    /// metrics; services must not depend on it.
    pub fn path_to(&self, node: NodeId) -> Option<PathKind> {
        let conns = self.inner.conns.lock().ok()?;
        conns.get(&node).filter(|e| e.is_alive()).map(|e| e.path)
    }

    /// QUIC statistics of the live connection to `node` (RTT, MTU, losses), for
    /// metrics.
    pub fn connection_stats(&self, node: NodeId) -> Option<quinn::ConnectionStats> {
        let conns = self.inner.conns.lock().ok()?;
        conns
            .get(&node)
            .filter(|e| e.is_alive())
            .map(|e| e.conn.stats())
    }

    /// Validates one endpoint: dials `addr` expecting `node`, and hangs up as
    /// soon as the handshake has proved the peer's identity. Returns the
    /// handshake RTT. The caller chose the address, so the ranker is not asked
    /// (it is told the outcome); the connection cache is not touched. This is
    /// how an observer checks a peer's public endpoint for others
    /// (behaviours 5 and 6) even while it already has a path to that peer.
    pub async fn probe(&self, node: NodeId, addr: SocketAddr) -> Result<Duration, TransportError> {
        if self.inner.is_shut_down() {
            return Err(TransportError::Shutdown);
        }
        if node == self.inner.node_id {
            return Err(TransportError::SelfDial { node });
        }
        let conn = self.inner.dial_endpoint(node, addr).await?;
        let rtt = conn.rtt();
        conn.close(close_code::PROBE_DONE.into(), b"probe done");
        Ok(rtt)
    }

    /// How many times this node has dialled `addr` expecting `node` (path
    /// ladder, path upgrades, relay-to-target dials and explicit probes).
    pub fn probe_count(&self, node: NodeId, addr: SocketAddr) -> u64 {
        self.inner
            .probes
            .lock()
            .ok()
            .and_then(|p| p.counts.get(&(node, addr)).map(|c| c.count))
            .unwrap_or(0)
    }

    /// Every `(peer, address)` dialled so far with its count, sorted.
    pub fn probe_counts(&self) -> Vec<(NodeId, SocketAddr, u64)> {
        let mut out: Vec<(NodeId, SocketAddr, u64)> = match self.inner.probes.lock() {
            Ok(p) => p
                .counts
                .iter()
                .map(|((n, a), c)| (*n, *a, c.count))
                .collect(),
            Err(_) => Vec::new(),
        };
        out.sort();
        out
    }

    /// Connections this node holds right now: one per connected peer plus
    /// replaced ones still draining (what `max_connections` counts, besides
    /// incoming handshakes in progress). For metrics and tests.
    pub fn connection_count(&self) -> usize {
        self.inner.live.lock().map(|l| l.total).unwrap_or(0)
    }

    /// Peers with a live cached connection, sorted.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = match self.inner.conns.lock() {
            Ok(c) => c
                .iter()
                .filter(|(_, e)| e.is_alive())
                .map(|(id, _)| *id)
                .collect(),
            Err(_) => Vec::new(),
        };
        out.sort();
        out
    }

    /// Live connections to or from `node` (cached plus draining).
    pub fn connections_to(&self, node: NodeId) -> usize {
        self.inner
            .live
            .lock()
            .ok()
            .and_then(|l| l.by_peer.get(&node).map(Vec::len))
            .unwrap_or(0)
    }

    /// Tunnels this node currently relays for others.
    pub fn relayed_tunnels(&self) -> usize {
        self.inner.socket.forwards.tunnels()
    }

    /// Counters of the relay data path (forwarded, delivered, and dropped by
    /// reason), for metrics and tests.
    pub fn relay_stats(&self) -> RelayStats {
        self.inner.socket.relay_stats()
    }

    /// Stops the node: closes every connection (peers see it at once) and the socket.
    pub async fn shutdown(&self) {
        tracing::info!(node_id = %self.inner.node_id, "fabric transport shutting down");
        let _ = self.inner.shutdown.send(true);
        self.inner
            .endpoint
            .close(close_code::SHUTDOWN.into(), b"node shutting down");
        // Break the socket -> tunnel -> connection -> endpoint reference cycles.
        self.inner.socket.clear();
        if let Ok(mut c) = self.inner.conns.lock() {
            c.clear();
        }
        if let Ok(mut l) = self.inner.live.lock() {
            *l = LiveConns::default();
        }
        if let Ok(mut s) = self.inner.services.lock() {
            s.clear();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

impl Inner {
    fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Spawns a task of this transport that ends at shutdown at the latest.
    /// Each such task holds the endpoint and so the UDP socket: one left
    /// waiting out a handshake or header timeout would keep the node's port
    /// bound after `shutdown`.
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut shutdown = self.shutdown_signal();
        tokio::spawn(async move {
            tokio::select! {
                () = task => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
        });
    }

    fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn live_entry(&self, node: NodeId) -> Option<ConnEntry> {
        let conns = self.conns.lock().ok()?;
        conns.get(&node).filter(|e| e.is_alive()).cloned()
    }

    /// Whether a registered, live connection has `addr` as its remote (a
    /// tunnel's virtual address: did the end-to-end connection arrive?).
    fn has_connection_from(&self, addr: SocketAddr) -> bool {
        self.live.lock().is_ok_and(|l| {
            l.by_peer
                .values()
                .flatten()
                .any(|e| e.is_alive() && e.conn.remote_address() == addr)
        })
    }

    /// Forgets the cache entry for `node` if it is still the given connection.
    fn forget(&self, node: NodeId, stable_id: usize) {
        if let Ok(mut conns) = self.conns.lock() {
            if conns
                .get(&node)
                .is_some_and(|e| e.conn.stable_id() == stable_id)
            {
                conns.remove(&node);
            }
        }
    }

    fn ranker(&self) -> Arc<dyn PathRanker> {
        match self.ranker.read() {
            Ok(r) => r.clone(),
            Err(_) => Arc::new(DefaultPathRanker),
        }
    }

    fn peer_info(&self, node: NodeId) -> Option<PeerInfo> {
        self.book.read().ok()?.get(&node).cloned()
    }

    /// Puts a fresh connection in the cache and starts serving it; returns the
    /// connection the peer's channels should use from now on.
    ///
    /// There is one cached connection per peer. The one it displaces is not left
    /// running (with keep-alive below the idle timeout it would never time out,
    /// and a peer could pile up connections by reconnecting): it drains its open
    /// channels for up to `drain_grace` and is closed. When both nodes dialled
    /// each other at once, both keep the connection dialled by the smaller
    /// `NodeId`, so they agree on which one to close.
    fn register(
        self: &Arc<Self>,
        conn: quinn::Connection,
        peer: NodeId,
        path: PathKind,
        outbound: bool,
    ) -> ConnEntry {
        let entry = ConnEntry {
            conn,
            peer,
            path,
            outbound,
            channels: Arc::new(ChannelCount::default()),
        };
        let (winner, displaced) = match self.conns.lock() {
            Ok(mut conns) => match conns.get(&peer).filter(|e| e.is_alive()).cloned() {
                Some(old) if old.outbound != outbound && self.keep_crossed(&old) => {
                    (old, Some(entry.clone()))
                }
                old => {
                    conns.insert(peer, entry.clone());
                    (entry.clone(), old)
                }
            },
            Err(_) => (entry.clone(), None),
        };
        let evicted = match self.live.lock() {
            Ok(mut live) => {
                let list = live.by_peer.entry(peer).or_default();
                list.push(entry.clone());
                // Oldest first; the connection in use is never the one evicted.
                let limit = self.config.max_connections_per_peer.max(1);
                let mut evicted = Vec::new();
                while list.len() > limit {
                    let keep = winner.conn.stable_id();
                    match list.iter().position(|e| e.conn.stable_id() != keep) {
                        Some(i) => evicted.push(list.remove(i)),
                        None => break,
                    }
                }
                live.total += 1;
                live.total -= evicted.len();
                evicted
            }
            Err(_) => Vec::new(),
        };
        for e in evicted {
            tracing::warn!(
                peer = %peer.short(), limit = self.config.max_connections_per_peer,
                "closing a replaced connection: too many connections from one peer"
            );
            e.conn
                .close(close_code::PEER_LIMIT.into(), b"too many connections");
        }
        tracing::info!(
            node_id = %self.node_id.short(), peer = %peer.short(), path = %path, outbound,
            "connection established"
        );
        self.spawn(self.clone().drive_connection(entry.clone()));
        if let Some(old) = displaced {
            tracing::debug!(peer = %peer.short(), path = %old.path, "draining replaced connection");
            self.spawn(drain_and_close(old, self.config.drain_grace));
        }
        winner
    }

    /// Two connections dialled in opposite directions: whether to keep `old`
    /// (the one we had) over the new one. Both ends decide the same way.
    fn keep_crossed(&self, old: &ConnEntry) -> bool {
        let old_dialler = if old.outbound { self.node_id } else { old.peer };
        old_dialler < if old.outbound { old.peer } else { self.node_id }
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            // Handshakes in progress count too: otherwise a burst of incoming
            // connections all pass the check before any of them is registered.
            let live = self.live.lock().map(|l| l.total).unwrap_or(0);
            let open = live + self.handshaking.load(Ordering::Relaxed);
            if open >= self.config.max_connections {
                tracing::warn!(
                    remote = %incoming.remote_address(), open,
                    "refusing connection: at max_connections"
                );
                incoming.refuse();
                continue;
            }
            self.handshaking.fetch_add(1, Ordering::Relaxed);
            let in_progress = CountGuard(self.handshaking.clone());
            let inner = self.clone();
            self.spawn(async move {
                let _in_progress = in_progress;
                let remote = incoming.remote_address();
                if let Err(e) = inner.handle_incoming(incoming).await {
                    tracing::debug!(%remote, error = %e, "incoming connection failed");
                }
            });
        }
    }

    async fn handle_incoming(
        self: &Arc<Self>,
        incoming: quinn::Incoming,
    ) -> Result<(), TransportError> {
        let remote = incoming.remote_address();
        let route = self.socket.route(&remote);
        let connecting = match route {
            // Tunnelled connections need the smaller MTU of a relay path.
            Some(_) => incoming.accept_with(self.tunnel_server.clone()),
            None => incoming.accept(),
        }
        .map_err(|e| TransportError::Connect {
            endpoint: remote.to_string(),
            reason: e.to_string(),
        })?;
        let conn = tokio::time::timeout(self.config.connect_timeout, connecting)
            .await
            .map_err(|_| TransportError::Timeout {
                during: format!("accepting a connection from {remote}"),
                after: self.config.connect_timeout,
            })?
            .map_err(|e| TransportError::Connect {
                endpoint: remote.to_string(),
                reason: e.to_string(),
            })?;
        let Some(peer) = tls::peer_node_id(&conn) else {
            conn.close(close_code::IDENTITY.into(), b"no node identity");
            return Err(TransportError::Connect {
                endpoint: remote.to_string(),
                reason: "peer presented no usable node certificate".into(),
            });
        };
        let path = match route {
            Some(r) => PathKind::Relayed { via: r.via },
            None => PathKind::Direct { addr: remote },
        };
        self.register(conn, peer, path, false);
        Ok(())
    }

    /// Serves one connection until it closes: incoming streams.
    async fn drive_connection(self: Arc<Self>, entry: ConnEntry) {
        let reason = loop {
            match entry.conn.accept_bi().await {
                Ok((send, recv)) => {
                    self.spawn(self.clone().handle_stream(entry.clone(), send, recv));
                }
                Err(e) => break e,
            }
        };
        self.forget(entry.peer, entry.conn.stable_id());
        if let Ok(mut live) = self.live.lock() {
            live.remove(entry.peer, entry.conn.stable_id());
        }
        // Tunnels whose control ran on this connection expire with it.
        self.socket.forwards.remove_conn(entry.conn.stable_id());
        tracing::info!(
            node_id = %self.node_id.short(), peer = %entry.peer.short(), path = %entry.path,
            reason = %reason, "connection closed"
        );
    }

    async fn handle_stream(
        self: Arc<Self>,
        entry: ConnEntry,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let header =
            match tokio::time::timeout(self.config.header_timeout, read_header(&mut recv)).await {
                Ok(r) => r,
                Err(_) => Err(HeaderError::Timeout),
            };
        let service = match header {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer = %entry.peer.short(), error = %e, "refusing stream with bad header");
                refuse(&mut send, &mut recv, Status::BadHeader).await;
                return;
            }
        };
        let guard = ChannelGuard::new(entry.channels.clone());
        match service.as_str() {
            RELAY_SERVICE | RELAY_ACCEPT_SERVICE => {
                if send.write_all(&[Status::Accepted as u8]).await.is_err() {
                    return;
                }
                let ch = Channel::new(send, recv, entry.peer, service.clone(), guard);
                if service == RELAY_SERVICE {
                    self.serve_relay(entry, ch).await;
                } else {
                    self.serve_offer(entry, ch).await;
                }
            }
            _ => {
                let tx = self
                    .services
                    .lock()
                    .ok()
                    .and_then(|s| s.get(&service).cloned());
                let permit = match tx.as_ref().map(|tx| tx.try_reserve()) {
                    Some(Ok(permit)) => permit,
                    Some(Err(mpsc::error::TrySendError::Full(()))) => {
                        tracing::warn!(service, peer = %entry.peer.short(), "service queue full, answering busy");
                        refuse(&mut send, &mut recv, Status::Busy).await;
                        return;
                    }
                    _ => {
                        tracing::debug!(service, peer = %entry.peer.short(), "no listener for service");
                        refuse(&mut send, &mut recv, Status::UnknownService).await;
                        return;
                    }
                };
                if send.write_all(&[Status::Accepted as u8]).await.is_err() {
                    return;
                }
                permit.send(Channel::new(send, recv, entry.peer, service, guard));
            }
        }
    }

    /// Opens a channel on an existing connection (header, then the peer's status).
    ///
    /// The whole exchange is bounded by `header_timeout`, not just the status
    /// read: a peer that withholds stream credit (`open_bi` waits for it) or
    /// flow-control credit (the header write waits for it) would otherwise block
    /// the caller forever, and callers may hold a per-peer dial lock.
    async fn open_on(&self, entry: &ConnEntry, service: &str) -> Result<Channel, TransportError> {
        let lost = |reason: String| TransportError::ConnectionLost {
            node: entry.peer,
            reason,
        };
        let exchange = async {
            let (mut send, mut recv) = entry
                .conn
                .open_bi()
                .await
                .map_err(|e| lost(e.to_string()))?;
            send.write_all(&encode_header(service))
                .await
                .map_err(|e| lost(e.to_string()))?;
            let mut status = [0u8; 1];
            recv.read_exact(&mut status)
                .await
                .map_err(|e| lost(e.to_string()))?;
            Ok::<_, TransportError>((send, recv, status))
        };
        let (send, recv, status) =
            match tokio::time::timeout(self.config.header_timeout, exchange).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(TransportError::Timeout {
                        during: format!(
                            "opening a channel to service {service:?} on node {}",
                            entry.peer
                        ),
                        after: self.config.header_timeout,
                    })
                }
            };
        let node = entry.peer;
        match Status::from_byte(status[0]) {
            Some(Status::Accepted) => Ok(Channel::new(
                send,
                recv,
                node,
                service.to_owned(),
                ChannelGuard::new(entry.channels.clone()),
            )),
            Some(Status::UnknownService) => Err(TransportError::UnknownService {
                node,
                service: service.to_owned(),
            }),
            Some(Status::Busy) => Err(TransportError::ServiceBusy {
                node,
                service: service.to_owned(),
            }),
            Some(Status::BadHeader) | None => Err(TransportError::Protocol {
                node,
                reason: format!("unexpected channel status byte {}", status[0]),
            }),
        }
    }

    /// A live connection to `node`, walking the path ladder if there is none.
    async fn connection_to(self: &Arc<Self>, node: NodeId) -> Result<ConnEntry, TransportError> {
        self.connection(node, true).await
    }

    /// Like [`Inner::connection_to`] but never through a relay and never reusing a
    /// relayed connection: what a relay uses to reach a tunnel target.
    async fn direct_connection_to(
        self: &Arc<Self>,
        node: NodeId,
    ) -> Result<ConnEntry, TransportError> {
        self.connection(node, false).await
    }

    async fn connection(
        self: &Arc<Self>,
        node: NodeId,
        allow_relay: bool,
    ) -> Result<ConnEntry, TransportError> {
        if self.is_shut_down() {
            return Err(TransportError::Shutdown);
        }
        if node == self.node_id {
            return Err(TransportError::SelfDial { node });
        }
        let usable = |e: &ConnEntry| allow_relay || matches!(e.path, PathKind::Direct { .. });
        if let Some(e) = self.live_entry(node).filter(usable) {
            return Ok(e);
        }
        // The whole ladder, waiting for a concurrent dial included, gets one
        // deadline: each attempt has its own timeout, but a peer with many
        // candidates and a long relay list would otherwise hold the dial lock
        // (and the caller) for the sum of them all.
        let deadline = tokio::time::Instant::now() + self.config.open_deadline;
        let out_of_time = |attempts: Vec<PathAttempt>, path: Option<PathKind>| {
            let error = TransportError::Timeout {
                during: format!("finding a path to node {node} (open_deadline)"),
                after: self.config.open_deadline,
            };
            match path {
                Some(path) => {
                    let mut attempts = attempts;
                    attempts.push(PathAttempt { path, error });
                    TransportError::Unreachable { node, attempts }
                }
                None if attempts.is_empty() => error,
                None => TransportError::Unreachable { node, attempts },
            }
        };
        // One dial per peer at a time; concurrent opens share its result.
        let slot = DialSlot::new(self, node);
        let Ok(_dialing) = tokio::time::timeout_at(deadline, slot.lock.lock()).await else {
            return Err(out_of_time(Vec::new(), None));
        };
        if let Some(e) = self.live_entry(node).filter(usable) {
            return Ok(e);
        }
        let peer = self
            .peer_info(node)
            .ok_or(TransportError::UnknownPeer { node })?;
        let ranker = self.ranker();
        let mut attempts = Vec::new();
        for candidate in ranker.rank_direct_for(&self.config.labels, node, &peer) {
            let path = PathKind::Direct {
                addr: candidate.addr,
            };
            match tokio::time::timeout_at(deadline, self.dial_direct(node, candidate.addr)).await {
                Ok(Ok(entry)) => return Ok(entry),
                Ok(Err(error)) => {
                    tracing::info!(peer = %node.short(), %path, %error, "direct path failed");
                    attempts.push(PathAttempt { path, error });
                }
                Err(_) => return Err(out_of_time(attempts, Some(path))),
            }
        }
        if allow_relay {
            let relays: Vec<(NodeId, PeerInfo)> = match self.book.read() {
                Ok(book) => book
                    .iter()
                    .filter(|(id, info)| info.is_relay && **id != node && **id != self.node_id)
                    .map(|(id, info)| (*id, info.clone()))
                    .collect(),
                Err(_) => Vec::new(),
            };
            // Only the best few: every relay costs a connection, a control
            // exchange and a handshake, and an address book can list hundreds.
            let ranked = ranker.rank_relays(&self.config.labels, &relays);
            for via in ranked.into_iter().take(self.config.max_relays_per_open) {
                let path = PathKind::Relayed { via };
                match tokio::time::timeout_at(deadline, self.dial_via_relay(node, via)).await {
                    Ok(Ok(entry)) => return Ok(entry),
                    Ok(Err(error)) => {
                        tracing::info!(peer = %node.short(), %path, %error, "relay path failed");
                        attempts.push(PathAttempt { path, error });
                    }
                    Err(_) => return Err(out_of_time(attempts, Some(path))),
                }
            }
        }
        tracing::warn!(peer = %node.short(), attempts = attempts.len(), "no path to peer");
        Err(TransportError::Unreachable { node, attempts })
    }

    /// Dials one endpoint, accepting only the key `node`.
    async fn dial_direct(
        self: &Arc<Self>,
        node: NodeId,
        addr: SocketAddr,
    ) -> Result<ConnEntry, TransportError> {
        let conn = self.dial_endpoint(node, addr).await?;
        Ok(self.register(conn, node, PathKind::Direct { addr }, true))
    }

    /// One counted handshake to a real address; the ranker learns the outcome.
    async fn dial_endpoint(
        &self,
        node: NodeId,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, TransportError> {
        if let Ok(mut p) = self.probes.lock() {
            p.record((node, addr), self.config.max_probe_entries);
        }
        let result = self
            .handshake(node, addr, addr.to_string(), self.direct_tc.clone())
            .await;
        let outcome = match &result {
            Ok(conn) => Some(DialOutcome::Reached { rtt: conn.rtt() }),
            // Local failures say nothing about the endpoint.
            Err(TransportError::Tls(_) | TransportError::Shutdown) => None,
            Err(_) => Some(DialOutcome::Failed),
        };
        if let Some(outcome) = outcome {
            self.ranker().record_dial(node, addr, outcome);
        }
        result
    }

    /// Runs a client handshake to `addr` (real or virtual) expecting `node`.
    async fn handshake(
        &self,
        node: NodeId,
        addr: SocketAddr,
        endpoint_desc: String,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::Connection, TransportError> {
        let (crypto, mismatch) = tls::client_crypto(&self.tls, node)?;
        let mut client = quinn::ClientConfig::new(crypto);
        client.transport_config(transport);
        let connecting = self
            .endpoint
            .connect_with(client, addr, SERVER_NAME)
            .map_err(|e| TransportError::Connect {
                endpoint: endpoint_desc.clone(),
                reason: e.to_string(),
            })?;
        let result = tokio::time::timeout(self.config.connect_timeout, connecting).await;
        let presented = mismatch.lock().ok().and_then(|mut s| s.take());
        if let Some(presented) = presented {
            tracing::warn!(
                expected = %node, %presented, endpoint = %endpoint_desc,
                "peer presented the wrong node identity"
            );
            return Err(TransportError::IdentityMismatch(IdentityMismatch {
                expected: node,
                presented,
                endpoint: endpoint_desc,
            }));
        }
        let conn = result
            .map_err(|_| TransportError::Timeout {
                during: format!("connecting to {endpoint_desc}"),
                after: self.config.connect_timeout,
            })?
            .map_err(|e| TransportError::Connect {
                endpoint: endpoint_desc.clone(),
                reason: e.to_string(),
            })?;
        // The verifier already enforced this; checking again costs nothing and
        // keeps the invariant local.
        if tls::peer_node_id(&conn) != Some(node) {
            conn.close(close_code::IDENTITY.into(), b"unexpected node identity");
            return Err(TransportError::Connect {
                endpoint: endpoint_desc,
                reason: "peer identity could not be confirmed".into(),
            });
        }
        Ok(conn)
    }

    /// Periodically tries to move relayed connections we opened back to a direct path.
    async fn upgrade_loop(self: Arc<Self>, every: Duration) {
        let mut shutdown = self.shutdown_signal();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let relayed: Vec<ConnEntry> = match self.conns.lock() {
                Ok(c) => c
                    .values()
                    .filter(|e| {
                        e.outbound && e.is_alive() && matches!(e.path, PathKind::Relayed { .. })
                    })
                    .cloned()
                    .collect(),
                Err(_) => return,
            };
            for old in relayed {
                self.try_upgrade(old).await;
            }
        }
    }

    async fn try_upgrade(self: &Arc<Self>, old: ConnEntry) {
        let Some(peer) = self.peer_info(old.peer) else {
            return;
        };
        let slot = DialSlot::new(self, old.peer);
        let _dialing = slot.lock.lock().await;
        // Someone may have replaced it while we waited.
        match self.live_entry(old.peer) {
            Some(current) if current.conn.stable_id() == old.conn.stable_id() => {}
            _ => return,
        }
        for candidate in self
            .ranker()
            .rank_direct_for(&self.config.labels, old.peer, &peer)
        {
            match self.dial_direct(old.peer, candidate.addr).await {
                Ok(new) => {
                    // `register` displaced the relayed connection and drains it.
                    tracing::info!(
                        peer = %old.peer.short(), from = %old.path, to = %new.path,
                        "direct path is back; moving off the relay"
                    );
                    return;
                }
                Err(error) => {
                    tracing::debug!(peer = %old.peer.short(), addr = %candidate.addr, %error, "direct path still down");
                }
            }
        }
    }
}

/// Lets channels on a replaced connection finish (up to `grace`), then closes it.
async fn drain_and_close(old: ConnEntry, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    // A channel the peer opened just before it learnt of the replacement may
    // still be in flight (two nodes that dialled each other at once agree on the
    // survivor only when both handshakes are done): give it a moment to arrive
    // and be counted before deciding that nothing is open.
    tokio::time::sleep(grace.min(Duration::from_millis(500))).await;
    while old.channels.get() > 0 && tokio::time::Instant::now() < deadline && old.is_alive() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    old.conn
        .close(close_code::PATH_REPLACED.into(), b"path replaced");
}

/// Answers a stream we will not serve, then abandons it.
async fn refuse(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, status: Status) {
    let _ = send.write_all(&[status as u8]).await;
    let _ = send.finish();
    let _ = recv.stop(quinn::VarInt::from_u32(status as u32));
}
