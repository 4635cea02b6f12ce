//! Edge listeners: the only place where the process accepts TCP.
//!
//! Every TCP listener is opened through [`EdgeInventory::bind`] with an
//! [`EdgeRole`], so the inventory always knows what listens and why; it is
//! serialised into node status and the fleet audit. A listening socket the
//! process holds but the inventory did not open shows up in
//! [`EdgeInventory::audit`] with role `unclassified` and is flagged as a bug.
//! Ordinary code cannot create such an entry: [`EdgeRole`] has no unclassified
//! variant. (`clippy.toml` of this crate also forbids calling the TCP bind
//! functions directly.)
//!
//! An ingress edge ([`spawn_ingress`]) turns each external TCP connection into a
//! fabric channel to a named service on some node and copies bytes both ways.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::topology::NodeId;
use crate::transport::Transport;

/// Why a TCP listener exists. Every listener must have one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EdgeRole {
    /// External clients reaching a fabric service (mapped into channels).
    ServiceIngress,
    /// The operators' Control API.
    ControlApiIngress,
    /// Artifact delivery to machines outside the fabric.
    ArtifactEdge,
    /// Temporary overlap with the legacy system during migration.
    CompatOverlap,
    /// A Prometheus `/metrics` endpoint (loopback by default).
    MetricsEdge,
}

pub use fabric_proto::edge::{EdgeEntry, EdgeTarget, ReportedRole};

impl From<EdgeRole> for ReportedRole {
    fn from(r: EdgeRole) -> Self {
        match r {
            EdgeRole::ServiceIngress => ReportedRole::ServiceIngress,
            EdgeRole::ControlApiIngress => ReportedRole::ControlApiIngress,
            EdgeRole::ArtifactEdge => ReportedRole::ArtifactEdge,
            EdgeRole::CompatOverlap => ReportedRole::CompatOverlap,
            EdgeRole::MetricsEdge => ReportedRole::MetricsEdge,
        }
    }
}

/// Why an edge listener could not be opened or audited.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// Binding the listener, or reading back its bound address, failed.
    #[error("opening {role:?} edge listener on {addr}: {source}")]
    Bind {
        /// The role the listener was requested for.
        role: EdgeRole,
        /// The address it was asked to bind.
        addr: SocketAddr,
        /// The underlying socket error.
        source: std::io::Error,
    },
    /// Listing this process's listening sockets (from `/proc`) failed.
    #[error("auditing listening sockets: {0}")]
    Audit(std::io::Error),
}

#[derive(Debug, Default)]
struct InventoryState {
    next_id: AtomicU64,
    entries: Mutex<BTreeMap<u64, EdgeEntry>>,
}

/// Registry of every TCP listener of the process. Clone it freely.
#[derive(Clone, Debug, Default)]
pub struct EdgeInventory {
    state: Arc<InventoryState>,
}

/// An open, registered TCP listener; dropping it closes it and removes its entry.
#[derive(Debug)]
pub struct EdgeListener {
    listener: TcpListener,
    id: u64,
    state: Arc<InventoryState>,
}

impl EdgeListener {
    /// The address the listener is bound to (the real port when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Waits for the next TCP connection and its peer address.
    pub async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        self.listener.accept().await
    }

    /// This listener's entry id in the inventory (matches [`EdgeEntry::id`]).
    pub fn entry_id(&self) -> u64 {
        self.id
    }
}

impl Drop for EdgeListener {
    fn drop(&mut self) {
        if let Ok(mut e) = self.state.entries.lock() {
            e.remove(&self.id);
        }
    }
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

impl EdgeInventory {
    /// An empty inventory; equivalent to `default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens a TCP listener with a declared role and records it.
    pub async fn bind(
        &self,
        role: EdgeRole,
        addr: SocketAddr,
        target: EdgeTarget,
    ) -> Result<EdgeListener, EdgeError> {
        // The one sanctioned TCP bind in the codebase.
        #[allow(clippy::disallowed_methods)]
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| EdgeError::Bind { role, addr, source })?;
        let bound =
            listener
                .local_addr()
                .map_err(|source| EdgeError::Bind { role, addr, source })?;
        let id = self.state.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = EdgeEntry {
            id,
            role: role.into(),
            bind: bound,
            target,
            opened_at: now_rfc3339(),
            anomaly: None,
        };
        tracing::info!(?role, %bound, target = ?entry.target, "edge listener opened");
        if let Ok(mut e) = self.state.entries.lock() {
            e.insert(id, entry);
        }
        Ok(EdgeListener {
            listener,
            id,
            state: self.state.clone(),
        })
    }

    /// The registered listeners.
    pub fn entries(&self) -> Vec<EdgeEntry> {
        self.state
            .entries
            .lock()
            .map(|e| e.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Registered listeners plus every TCP socket this process listens on that
    /// the inventory did not open, reported as `unclassified` anomalies.
    pub fn audit(&self) -> Result<Vec<EdgeEntry>, EdgeError> {
        let mut out = self.entries();
        let known: Vec<SocketAddr> = out.iter().map(|e| e.bind).collect();
        for addr in process_tcp_listeners().map_err(EdgeError::Audit)? {
            if !known.contains(&addr) {
                tracing::error!(%addr, "TCP listener not opened through the edge inventory");
                out.push(EdgeEntry {
                    id: 0,
                    role: ReportedRole::Unclassified,
                    bind: addr,
                    target: EdgeTarget::Unknown,
                    opened_at: now_rfc3339(),
                    anomaly: Some(
                        "listening TCP socket without a role: opened outside EdgeInventory (bug)"
                            .into(),
                    ),
                });
            }
        }
        Ok(out)
    }
}

/// Listening TCP sockets owned by this process (Linux: /proc; elsewhere none
/// can be discovered and only registered entries are reported).
#[cfg(target_os = "linux")]
fn process_tcp_listeners() -> std::io::Result<Vec<SocketAddr>> {
    use std::collections::HashSet;
    let mut inodes = HashSet::new();
    for fd in std::fs::read_dir("/proc/self/fd")?.flatten() {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let mut out = Vec::new();
    for (file, v6) in [("/proc/self/net/tcp", false), ("/proc/self/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retr uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            if *state != "0A" || !inodes.contains(*inode) {
                continue;
            }
            if let Some(addr) = parse_proc_addr(local, v6) {
                out.push(addr);
            }
        }
    }
    Ok(out)
}

#[cfg(not(target_os = "linux"))]
fn process_tcp_listeners() -> std::io::Result<Vec<SocketAddr>> {
    Ok(Vec::new())
}

/// Parses `/proc/net/tcp` addresses: hex IP in host byte order words, hex port.
#[cfg(target_os = "linux")]
fn parse_proc_addr(s: &str, v6: bool) -> Option<SocketAddr> {
    let (ip_hex, port_hex) = s.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    if v6 {
        if ip_hex.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, chunk) in bytes.chunks_mut(4).enumerate() {
            let word = u32::from_str_radix(ip_hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        let ip = std::net::Ipv6Addr::from(bytes);
        // A v4-mapped listener is reported as the IPv4 address it serves.
        let ip: std::net::IpAddr = match ip.to_ipv4_mapped() {
            Some(v4) => v4.into(),
            None => ip.into(),
        };
        Some(SocketAddr::new(ip, port))
    } else {
        let word = u32::from_str_radix(ip_hex, 16).ok()?;
        Some(SocketAddr::new(
            std::net::Ipv4Addr::from(word.to_ne_bytes()).into(),
            port,
        ))
    }
}

/// A running ingress edge.
#[derive(Debug)]
pub struct IngressHandle {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl IngressHandle {
    /// The address the ingress listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting; the listener closes and leaves the inventory.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for IngressHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Limits of an ingress edge. External clients are untrusted: without them one
/// client could hold unbounded connections, channels and tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngressLimits {
    /// TCP connections bridged at once; more are accepted and closed at once.
    pub max_concurrent: usize,
    /// How long opening the fabric channel may take before the client is
    /// dropped.
    pub open_timeout: Duration,
    /// A bridge with no bytes moving in either direction for this long is
    /// closed.
    pub idle_timeout: Duration,
}

impl Default for IngressLimits {
    fn default() -> Self {
        Self {
            max_concurrent: 256,
            open_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Opens a `service-ingress` listener on `bind` and maps each TCP connection
/// into a fabric channel to `service` on `node`, with [`IngressLimits::default`].
pub async fn spawn_ingress(
    inventory: &EdgeInventory,
    transport: Transport,
    bind: SocketAddr,
    node: NodeId,
    service: &str,
) -> Result<IngressHandle, EdgeError> {
    spawn_ingress_with(
        inventory,
        transport,
        bind,
        node,
        service,
        IngressLimits::default(),
    )
    .await
}

/// Like [`spawn_ingress`] with explicit limits.
pub async fn spawn_ingress_with(
    inventory: &EdgeInventory,
    transport: Transport,
    bind: SocketAddr,
    node: NodeId,
    service: &str,
    limits: IngressLimits,
) -> Result<IngressHandle, EdgeError> {
    let listener = inventory
        .bind(
            EdgeRole::ServiceIngress,
            bind,
            EdgeTarget::FabricService {
                node,
                service: service.to_owned(),
            },
        )
        .await?;
    let local_addr = listener.local_addr().map_err(|source| EdgeError::Bind {
        role: EdgeRole::ServiceIngress,
        addr: bind,
        source,
    })?;
    let (stop, mut stopped) = watch::channel(false);
    let service = service.to_owned();
    let slots = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stopped.changed() => break,
            };
            let (tcp, client) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Transient (e.g. out of file descriptors): keep serving.
                    tracing::warn!(edge = %local_addr, error = %e, "ingress accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Over the limit the client is closed right away rather than left
            // in the accept backlog: it learns at once and can retry elsewhere.
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(edge = %local_addr, %client, limit = limits.max_concurrent, "ingress at its connection limit; closing client");
                drop(tcp);
                continue;
            };
            let transport = transport.clone();
            let service = service.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = bridge(tcp, &transport, node, &service, limits).await {
                    tracing::info!(edge = %local_addr, %client, peer = %node.short(), service, error = %e, "ingress connection ended with error");
                }
            });
        }
        tracing::info!(edge = %local_addr, "ingress edge stopped");
        drop(listener);
    });
    Ok(IngressHandle { local_addr, stop })
}

#[derive(Debug, thiserror::Error)]
enum BridgeError {
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error("opening the channel took longer than {0:?}")]
    OpenTimeout(Duration),
    #[error("no data in either direction for {0:?}")]
    Idle(Duration),
    #[error("copying: {0}")]
    Io(#[from] std::io::Error),
}

async fn bridge(
    mut tcp: TcpStream,
    transport: &Transport,
    node: NodeId,
    service: &str,
    limits: IngressLimits,
) -> Result<(), BridgeError> {
    let mut channel = tokio::time::timeout(limits.open_timeout, transport.open(node, service))
        .await
        .map_err(|_| BridgeError::OpenTimeout(limits.open_timeout))??;
    let (up, down) = copy_with_idle_timeout(&mut tcp, &mut channel, limits.idle_timeout).await?;
    tracing::debug!(peer = %node.short(), service, up, down, "ingress connection done");
    Ok(())
}

/// Copies both ways until both sides have finished, like
/// `tokio::io::copy_bidirectional`, but fails with [`BridgeError::Idle`] when
/// no byte moves in either direction for `idle` (a write that cannot make
/// progress for `idle` counts as idle too). Without it a client that goes
/// silent would hold its slot, its channel and the task forever.
async fn copy_with_idle_timeout<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
) -> Result<(u64, u64), BridgeError>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let mut up_buf = vec![0u8; 16 * 1024];
    let mut down_buf = vec![0u8; 16 * 1024];
    let (mut up, mut down) = (0u64, 0u64);
    let (mut up_done, mut down_done) = (false, false);
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    while !(up_done && down_done) {
        tokio::select! {
            // Reads are cancel-safe: a read that loses the race consumed nothing.
            r = ar.read(&mut up_buf), if !up_done => {
                let n = r?;
                if n == 0 {
                    up_done = true;
                    tokio::time::timeout(idle, bw.shutdown()).await.map_err(|_| BridgeError::Idle(idle))??;
                } else {
                    tokio::time::timeout(idle, bw.write_all(&up_buf[..n])).await.map_err(|_| BridgeError::Idle(idle))??;
                    up += n as u64;
                }
            }
            r = br.read(&mut down_buf), if !down_done => {
                let n = r?;
                if n == 0 {
                    down_done = true;
                    tokio::time::timeout(idle, aw.shutdown()).await.map_err(|_| BridgeError::Idle(idle))??;
                } else {
                    tokio::time::timeout(idle, aw.write_all(&down_buf[..n])).await.map_err(|_| BridgeError::Idle(idle))??;
                    down += n as u64;
                }
            }
            _ = &mut timer => return Err(BridgeError::Idle(idle)),
        }
        timer.as_mut().reset(tokio::time::Instant::now() + idle);
    }
    Ok((up, down))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_serialise_kebab_case() {
        let s =
            serde_json::to_string(&ReportedRole::from(EdgeRole::ControlApiIngress)).expect("json");
        assert_eq!(s, "\"control-api-ingress\"");
        let s = serde_json::to_string(&ReportedRole::Unclassified).expect("json");
        assert_eq!(s, "\"unclassified\"");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn proc_addresses_parse() {
        assert_eq!(
            parse_proc_addr("0100007F:1F90", false),
            Some("127.0.0.1:8080".parse().expect("addr"))
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:0050", true),
            Some("[::1]:80".parse().expect("addr"))
        );
    }

    #[tokio::test]
    async fn dropped_listener_leaves_the_inventory() {
        let inv = EdgeInventory::new();
        let l = inv
            .bind(
                EdgeRole::ControlApiIngress,
                "127.0.0.1:0".parse().expect("addr"),
                EdgeTarget::Local {
                    handler: "control-api".into(),
                },
            )
            .await
            .expect("bind");
        assert_eq!(inv.entries().len(), 1);
        drop(l);
        assert!(inv.entries().is_empty());
    }
}
