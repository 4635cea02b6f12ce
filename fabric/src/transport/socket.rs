//! The node's one UDP socket, extended with virtual addresses for relay tunnels.
//!
//! quinn drives a single endpoint over [`FabricSocket`]. Datagrams to real
//! addresses go out of the UDP socket. Datagrams to a *virtual* address (from a
//! reserved range that never appears on a wire) are wrapped into a QUIC datagram
//! on the outer connection to a relay; packets the relay forwards back are
//! injected here as if they had arrived from that virtual address. The inner QUIC
//! connection is thus an ordinary end-to-end connection of the same endpoint: the
//! relay only ever handles its encrypted packets.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use crate::relay::{TunnelHeader, TunnelKind};
use crate::topology::NodeId;

/// How many forwarded packets may wait for the endpoint before we drop (like a
/// full UDP receive buffer would).
const INJECT_QUEUE: usize = 4096;

/// Where packets for one virtual address go.
#[derive(Clone, Debug)]
pub(crate) struct TunnelRoute {
    /// Outer connection to the relay.
    pub conn: quinn::Connection,
    /// Relay-assigned tunnel id on that connection.
    pub tunnel: u64,
    pub via: NodeId,
}

pub(crate) struct FabricSocket {
    real: Arc<dyn AsyncUdpSocket>,
    local: SocketAddr,
    routes: RwLock<HashMap<SocketAddr, TunnelRoute>>,
    /// (outer connection stable id, tunnel id) -> virtual address.
    inbound: RwLock<HashMap<(usize, u64), SocketAddr>>,
    inject_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    inject_rx: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    next_virtual: AtomicU64,
    /// Alternates which source poll_recv tries first so neither starves the other.
    prefer_virtual: AtomicBool,
}

impl fmt::Debug for FabricSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FabricSocket")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl FabricSocket {
    pub(crate) fn new(real: Arc<dyn AsyncUdpSocket>) -> io::Result<Self> {
        let local = real.local_addr()?;
        let (inject_tx, inject_rx) = mpsc::channel(INJECT_QUEUE);
        Ok(Self {
            real,
            local,
            routes: RwLock::new(HashMap::new()),
            inbound: RwLock::new(HashMap::new()),
            inject_tx,
            inject_rx: Mutex::new(inject_rx),
            next_virtual: AtomicU64::new(1),
            prefer_virtual: AtomicBool::new(false),
        })
    }

    /// A fresh virtual address in the family of the real socket (quinn refuses
    /// IPv6 destinations on an IPv4 socket). IPv4 uses 240.0.0.0/4 (reserved,
    /// never routed); IPv6 uses a ULA prefix.
    fn allocate_virtual(&self) -> SocketAddr {
        let n = self.next_virtual.fetch_add(1, Ordering::Relaxed);
        // Port 0 is invalid for quinn, so ports run 1..=65535.
        let port = (n % 65535) as u16 + 1;
        let host = n / 65535;
        if self.local.is_ipv4() {
            let ip = 0xF000_0000u32 | (host as u32 & 0x0FFF_FFFF);
            SocketAddr::new(Ipv4Addr::from(ip).into(), port)
        } else {
            let ip = (0xfdfa_b51c_u128 << 96) | host as u128;
            SocketAddr::new(Ipv6Addr::from(ip).into(), port)
        }
    }

    pub(crate) fn route(&self, addr: &SocketAddr) -> Option<TunnelRoute> {
        self.routes.read().ok()?.get(addr).cloned()
    }

    /// Registers a tunnel and returns the virtual address quinn should use for it.
    pub(crate) fn register_tunnel(&self, route: TunnelRoute) -> SocketAddr {
        let vaddr = self.allocate_virtual();
        let key = (route.conn.stable_id(), route.tunnel);
        if let Ok(mut inbound) = self.inbound.write() {
            inbound.insert(key, vaddr);
        }
        if let Ok(mut routes) = self.routes.write() {
            routes.insert(vaddr, route);
        }
        vaddr
    }

    pub(crate) fn unregister_tunnel(&self, vaddr: &SocketAddr) {
        let removed = self.routes.write().ok().and_then(|mut r| r.remove(vaddr));
        if let Some(route) = removed {
            if let Ok(mut inbound) = self.inbound.write() {
                inbound.remove(&(route.conn.stable_id(), route.tunnel));
            }
        }
    }

    pub(crate) fn tunnel_count(&self) -> usize {
        self.routes.read().map(|r| r.len()).unwrap_or(0)
    }

    /// Drops every route (used at shutdown to break the socket <-> connection cycle).
    pub(crate) fn clear(&self) {
        if let Ok(mut r) = self.routes.write() {
            r.clear();
        }
        if let Ok(mut i) = self.inbound.write() {
            i.clear();
        }
    }

    /// Hands a packet the relay forwarded to us to quinn. Returns false if the
    /// tunnel is unknown (stale or forged id) or the queue is full.
    pub(crate) fn inject(&self, outer_conn: usize, tunnel: u64, packet: Bytes) -> bool {
        let vaddr = match self
            .inbound
            .read()
            .ok()
            .and_then(|i| i.get(&(outer_conn, tunnel)).copied())
        {
            Some(v) => v,
            None => return false,
        };
        self.inject_tx.try_send((vaddr, packet)).is_ok()
    }

    fn send_virtual(&self, route: &TunnelRoute, transmit: &Transmit<'_>) {
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for packet in transmit.contents.chunks(segment) {
            let mut buf = BytesMut::with_capacity(TunnelHeader::LEN + packet.len());
            TunnelHeader {
                kind: TunnelKind::ToRelay,
                tunnel: route.tunnel,
            }
            .write(&mut buf);
            buf.put_slice(packet);
            // Like UDP, a tunnel may lose packets (relay gone, datagram too big for
            // the outer path, congestion); the inner QUIC connection recovers or
            // times out, so a failure here is only worth a trace.
            if let Err(e) = route.conn.send_datagram(buf.freeze()) {
                tracing::trace!(via = %route.via.short(), error = %e, "tunnel packet dropped");
            }
        }
    }

    fn poll_injected(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let Ok(mut rx) = self.inject_rx.lock() else {
            return Poll::Pending;
        };
        loop {
            match rx.poll_recv(cx) {
                Poll::Ready(Some((addr, packet))) => {
                    let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
                        return Poll::Ready(Ok(0));
                    };
                    if packet.len() > buf.len() {
                        // Cannot happen with quinn's buffer sizes; drop rather than truncate.
                        continue;
                    }
                    buf[..packet.len()].copy_from_slice(&packet);
                    *m = RecvMeta {
                        addr,
                        len: packet.len(),
                        stride: packet.len(),
                        ecn: None,
                        dst_ip: None,
                    };
                    return Poll::Ready(Ok(1));
                }
                // We hold a sender ourselves, so the queue never closes.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncUdpSocket for FabricSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        // Tunnel sends never block, so writability is the real socket's.
        self.real.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if let Some(route) = self.route(&transmit.destination) {
            self.send_virtual(&route, transmit);
            return Ok(());
        }
        self.real.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Both sources register the waker on every poll, so whichever becomes ready
        // first wakes the endpoint driver.
        let virtual_first = self.prefer_virtual.fetch_xor(true, Ordering::Relaxed);
        if virtual_first {
            if let Poll::Ready(r) = self.poll_injected(cx, bufs, meta) {
                return Poll::Ready(r);
            }
            self.real.poll_recv(cx, bufs, meta)
        } else {
            if let Poll::Ready(r) = self.real.poll_recv(cx, bufs, meta) {
                return Poll::Ready(r);
            }
            self.poll_injected(cx, bufs, meta)
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn max_transmit_segments(&self) -> usize {
        self.real.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.real.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.real.may_fragment()
    }
}
