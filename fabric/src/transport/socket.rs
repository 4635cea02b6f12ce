//! The node's one UDP socket, extended with virtual addresses for relay tunnels
//! and with the relay data path.
//!
//! quinn drives a single endpoint over [`FabricSocket`]. Datagrams to real
//! addresses go out of the UDP socket unchanged. Datagrams to a *virtual* address
//! (from a reserved range that never appears on a wire) are the packets of an
//! inner end-to-end connection: they leave the same UDP socket for the relay's
//! address, each prefixed with a [`RelayHeader`] carrying the relay-issued token.
//!
//! On receive, everything that is not QUIC (first byte below 0x40, see
//! [`crate::relay`]) is taken out before quinn sees it:
//! - `ToRelay` packets (we are the relay) are checked against the forwarding
//!   table and sent on to the other leg, in place and as one GSO batch when the
//!   kernel handed us a GRO batch;
//! - `FromRelay` packets (we are a tunnel endpoint) have their header stripped and
//!   are handed to quinn as if they had arrived from the tunnel's virtual address.
//!
//! The relay only ever handles the inner connection's encrypted packets.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use crate::relay::{
    is_relay_packet, ForwardTable, Hop, Refusal, RelayCounters, RelayHeader, RelayKind, RelayStats,
    Token,
};
use crate::topology::NodeId;

/// How many tunnel packets that could not be delivered in place may wait for the
/// endpoint before we drop (like a full UDP receive buffer would).
const INJECT_QUEUE: usize = 4096;
/// Largest UDP payload we hand the kernel in one (GSO) send.
const MAX_SEND: usize = 65_000;
const HDR: usize = RelayHeader::LEN;

/// Virtual tunnel addresses, IPv4: 240.0.0.0/4 (reserved, never routed).
const VIRTUAL_V4_PREFIX: u32 = 0xF000_0000;
const VIRTUAL_V4_MASK: u32 = 0xF000_0000;
/// Virtual tunnel addresses, IPv6: fdfa:b51c::/96 (a ULA prefix of our own).
const VIRTUAL_V6_PREFIX: u128 = 0xfdfa_b51c_u128 << 96;
const VIRTUAL_V6_MASK: u128 = !0u128 << 32;

/// Whether `addr` lies in one of the virtual tunnel ranges (either family, and
/// IPv4 in its v4-mapped IPv6 form, as a dual-stack socket reports it).
pub(crate) fn is_virtual(addr: &SocketAddr) -> bool {
    let v4 = |ip: Ipv4Addr| u32::from(ip) & VIRTUAL_V4_MASK == VIRTUAL_V4_PREFIX;
    match addr.ip() {
        IpAddr::V4(ip) => v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(mapped) => v4(mapped),
            None => u128::from(ip) & VIRTUAL_V6_MASK == VIRTUAL_V6_PREFIX,
        },
    }
}

/// Where packets for one virtual address go.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TunnelRoute {
    /// The relay's UDP address (the remote of our outer connection to it).
    pub relay: SocketAddr,
    /// Our local IP on the outer connection, so tunnel packets leave from the
    /// address the relay bound our token to.
    pub local_ip: Option<IpAddr>,
    /// Relay-issued token of our leg.
    pub token: Token,
    pub via: NodeId,
}

#[derive(Clone, Copy, Debug)]
struct Inbound {
    vaddr: SocketAddr,
    relay: SocketAddr,
}

pub(crate) struct FabricSocket {
    real: Arc<dyn AsyncUdpSocket>,
    local: SocketAddr,
    routes: RwLock<HashMap<SocketAddr, TunnelRoute>>,
    /// Our token -> (virtual address, relay address it must come from).
    inbound: RwLock<HashMap<Token, Inbound>>,
    /// Tunnels we relay for others.
    pub(crate) forwards: ForwardTable,
    counters: RelayCounters,
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
            forwards: ForwardTable::default(),
            counters: RelayCounters::default(),
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
            let ip = VIRTUAL_V4_PREFIX | (host as u32 & !VIRTUAL_V4_MASK);
            SocketAddr::new(Ipv4Addr::from(ip).into(), port)
        } else {
            let ip = VIRTUAL_V6_PREFIX | (host as u128 & !VIRTUAL_V6_MASK);
            SocketAddr::new(Ipv6Addr::from(ip).into(), port)
        }
    }

    pub(crate) fn route(&self, addr: &SocketAddr) -> Option<TunnelRoute> {
        self.routes.read().ok()?.get(addr).copied()
    }

    /// Registers a tunnel and returns the virtual address quinn should use for it.
    pub(crate) fn register_tunnel(&self, route: TunnelRoute) -> SocketAddr {
        let vaddr = self.allocate_virtual();
        if let Ok(mut inbound) = self.inbound.write() {
            inbound.insert(
                route.token,
                Inbound {
                    vaddr,
                    relay: route.relay,
                },
            );
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
                inbound.remove(&route.token);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn tunnel_count(&self) -> usize {
        self.routes.read().map(|r| r.len()).unwrap_or(0)
    }

    pub(crate) fn relay_stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Drops every route and forwarding entry (shutdown).
    pub(crate) fn clear(&self) {
        if let Ok(mut r) = self.routes.write() {
            r.clear();
        }
        if let Ok(mut i) = self.inbound.write() {
            i.clear();
        }
        self.forwards.clear();
    }

    /// Sends `buf`, a run of packets `stride` bytes apart (the last may be
    /// shorter), to `dest`, using as few GSO sends as the socket allows.
    fn send_segments(
        &self,
        dest: SocketAddr,
        src_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        buf: &[u8],
        stride: usize,
    ) -> io::Result<()> {
        let per_send = self
            .real
            .max_transmit_segments()
            .min(MAX_SEND / stride.max(1))
            .max(1);
        for chunk in buf.chunks(per_send * stride.max(1)) {
            self.real.try_send(&Transmit {
                destination: dest,
                ecn,
                contents: chunk,
                segment_size: (chunk.len() > stride).then_some(stride),
                src_ip,
            })?;
        }
        Ok(())
    }

    /// Sends an inner-connection transmit to the relay with our token in front
    /// of every packet, keeping quinn's GSO batching.
    fn send_tunnel(&self, route: &TunnelRoute, transmit: &Transmit<'_>) -> io::Result<()> {
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        let count = transmit.contents.len().div_ceil(segment);
        let header = RelayHeader {
            kind: RelayKind::ToRelay,
            token: route.token,
        };
        let mut buf = Vec::with_capacity(transmit.contents.len() + count * HDR);
        for packet in transmit.contents.chunks(segment) {
            let start = buf.len();
            buf.resize(start + HDR, 0);
            header.write_to(&mut buf[start..]);
            buf.extend_from_slice(packet);
        }
        // Errors (WouldBlock included) go back to quinn exactly as for a direct
        // send: it retries when the socket is writable.
        self.send_segments(
            route.relay,
            route.local_ip,
            transmit.ecn,
            &buf,
            segment + HDR,
        )
    }

    fn count_refusal(&self, refusal: Refusal, n: usize) {
        let c = match refusal {
            Refusal::UnknownToken => &self.counters.unknown_token,
            Refusal::WrongSource => &self.counters.wrong_source,
        };
        RelayCounters::add(c, n as u64);
    }

    /// Takes relay packets out of one received (possibly GRO-coalesced) message;
    /// what is left for quinn stays in `buf[..meta.len]`.
    fn demux(&self, buf: &mut [u8], meta: &mut RecvMeta) {
        let len = meta.len.min(buf.len());
        if len == 0 {
            return;
        }
        let stride = match meta.stride {
            0 => len,
            s => s.min(len),
        };
        let data = &mut buf[..len];
        if data.chunks(stride).all(|s| !is_relay_packet(s[0])) {
            return;
        }
        // Common case: a batch from one leg, every packet with the same header.
        let first = RelayHeader::parse(&data[..stride]);
        let uniform = first.is_some()
            && data
                .chunks(stride)
                .all(|s| s.len() > HDR && s[..HDR] == data[..HDR]);
        match first {
            Some(h) if uniform => {
                meta.len = match h.kind {
                    RelayKind::ToRelay => {
                        self.forward(&h.token, meta.addr, meta.ecn, data, stride);
                        0
                    }
                    RelayKind::FromRelay => self.deliver_in_place(&h.token, meta, data, stride),
                };
            }
            _ => meta.len = self.demux_mixed(meta, stride, data),
        }
    }

    /// Packet by packet: keeps QUIC packets (compacted to the front, so the
    /// stride stays valid: only the last packet of a batch can be short) and
    /// handles relay packets one at a time. Returns the bytes left for quinn.
    fn demux_mixed(&self, meta: &RecvMeta, stride: usize, data: &mut [u8]) -> usize {
        let mut kept = 0;
        let mut start = 0;
        while start < data.len() {
            let end = (start + stride).min(data.len());
            if !is_relay_packet(data[start]) {
                data.copy_within(start..end, kept);
                kept += end - start;
            } else {
                match RelayHeader::parse(&data[start..end]) {
                    None => RelayCounters::add(&self.counters.malformed, 1),
                    Some(h) if h.kind == RelayKind::ToRelay => {
                        let seg = &mut data[start..end];
                        let one = seg.len();
                        self.forward(&h.token, meta.addr, meta.ecn, seg, one);
                    }
                    Some(h) => self.deliver_queued(&h.token, meta.addr, &data[start + HDR..end]),
                }
            }
            start = end;
        }
        kept
    }

    /// Relay role: forwards a batch of `ToRelay` packets with `token` from `src`
    /// to the other leg, rewriting each header in place.
    fn forward(
        &self,
        token: &Token,
        src: SocketAddr,
        ecn: Option<EcnCodepoint>,
        data: &mut [u8],
        stride: usize,
    ) {
        let n = data.len().div_ceil(stride);
        let last = data.len() - (n - 1) * stride;
        let hop = match self.forwards.route(token, src, n, stride - HDR, last - HDR) {
            Ok(hop) => hop,
            Err(refusal) => {
                tracing::trace!(%src, ?refusal, packets = n, "relay dropped packets");
                self.count_refusal(refusal, n);
                return;
            }
        };
        if hop.admitted < n {
            RelayCounters::add(&self.counters.rate_limited, (n - hop.admitted) as u64);
        }
        if hop.admitted == 0 {
            return;
        }
        let end = if hop.admitted == n {
            data.len()
        } else {
            hop.admitted * stride
        };
        let out = &mut data[..end];
        let header = RelayHeader {
            kind: RelayKind::FromRelay,
            token: hop.token,
        };
        if let Some(tap) = self.forwards.tap() {
            // Diagnostics path: the tap sees (and may change) one payload at a time.
            for seg in out.chunks(stride) {
                let mut payload = BytesMut::from(&seg[HDR..]);
                tap.on_forward(hop.from_node, hop.to_node, &mut payload);
                let mut packet = vec![0u8; HDR + payload.len()];
                header.write_to(&mut packet);
                packet[HDR..].copy_from_slice(&payload);
                let len = packet.len();
                self.send_forward(&hop, ecn, &packet, len, 1, payload.len());
            }
            return;
        }
        for seg in out.chunks_mut(stride) {
            header.write_to(seg);
        }
        let payload = end - hop.admitted * HDR;
        self.send_forward(&hop, ecn, out, stride, hop.admitted, payload);
    }

    fn send_forward(
        &self,
        hop: &Hop,
        ecn: Option<EcnCodepoint>,
        buf: &[u8],
        stride: usize,
        packets: usize,
        payload: usize,
    ) {
        match self.send_segments(hop.addr, hop.local_ip, ecn, buf, stride) {
            Ok(()) => {
                RelayCounters::add(&self.counters.forwarded_packets, packets as u64);
                RelayCounters::add(&self.counters.forwarded_bytes, payload as u64);
            }
            Err(e) => {
                // Like a router: a packet that cannot go on now is dropped and the
                // end-to-end connection's loss recovery deals with it.
                tracing::trace!(to = %hop.to_node.short(), error = %e, "relay dropped packets");
                RelayCounters::add(&self.counters.send_failed, packets as u64);
            }
        }
    }

    fn inbound(&self, token: &Token, src: SocketAddr, n: usize) -> Option<SocketAddr> {
        let found = self.inbound.read().ok()?.get(token).copied();
        match found {
            None => self.count_refusal(Refusal::UnknownToken, n),
            Some(i) if i.relay != src => self.count_refusal(Refusal::WrongSource, n),
            Some(i) => {
                RelayCounters::add(&self.counters.delivered_packets, n as u64);
                return Some(i.vaddr);
            }
        }
        None
    }

    /// Endpoint role: strips the headers of a uniform `FromRelay` batch in place
    /// and presents it to quinn as coming from the tunnel's virtual address.
    /// Returns the bytes left for quinn.
    fn deliver_in_place(
        &self,
        token: &Token,
        meta: &mut RecvMeta,
        data: &mut [u8],
        stride: usize,
    ) -> usize {
        let n = data.len().div_ceil(stride);
        let Some(vaddr) = self.inbound(token, meta.addr, n) else {
            return 0;
        };
        let mut kept = 0;
        let mut start = 0;
        while start < data.len() {
            let end = (start + stride).min(data.len());
            data.copy_within(start + HDR..end, kept);
            kept += end - start - HDR;
            start = end;
        }
        meta.addr = vaddr;
        meta.stride = stride - HDR;
        meta.dst_ip = None;
        kept
    }

    /// Endpoint role, one packet out of a mixed batch: goes through the queue.
    fn deliver_queued(&self, token: &Token, src: SocketAddr, payload: &[u8]) {
        if let Some(vaddr) = self.inbound(token, src, 1) {
            if self
                .inject_tx
                .try_send((vaddr, Bytes::copy_from_slice(payload)))
                .is_err()
            {
                RelayCounters::add(&self.counters.send_failed, 1);
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

    fn poll_real(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        match self.real.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => {
                // Messages that were entirely relay traffic are left with length
                // 0, which quinn skips; returning Ready keeps its receive loop
                // (and its work limiter) going.
                for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
                    if is_virtual(&m.addr) {
                        // Virtual addresses only exist inside this process (tunnel
                        // packets are re-addressed after their relay header was
                        // checked), so a real datagram claiming one is spoofed.
                        // Handed to quinn it would pass as traffic of a relayed
                        // connection (and make an incoming handshake look relayed).
                        let datagrams = match m.stride {
                            0 => 1,
                            s => m.len.div_ceil(s).max(1),
                        };
                        RelayCounters::add(&self.counters.spoofed_virtual, datagrams as u64);
                        tracing::trace!(src = %m.addr, "dropped datagram from a virtual address");
                        m.len = 0;
                        continue;
                    }
                    self.demux(buf, m);
                }
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
}

impl AsyncUdpSocket for FabricSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        // Tunnel packets leave through the real socket, so writability is its.
        self.real.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        match self.route(&transmit.destination) {
            Some(route) => self.send_tunnel(&route, transmit),
            // A virtual address whose tunnel is gone (closed, or the
            // transport shutting down): the packet is lost, as on a dead
            // path. It must never reach the kernel as a real destination.
            None if is_virtual(&transmit.destination) => Ok(()),
            None => self.real.try_send(transmit),
        }
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
            self.poll_real(cx, bufs, meta)
        } else {
            if let Poll::Ready(r) = self.poll_real(cx, bufs, meta) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A stand-in for the kernel socket that hands out prepared datagrams, so a
    /// test can "receive" from source addresses no loopback socket can bind,
    /// and records where it was asked to send.
    #[derive(Debug, Default)]
    struct Scripted {
        queue: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
        sent: Mutex<Vec<SocketAddr>>,
    }

    #[derive(Debug)]
    struct AlwaysWritable;

    impl UdpPoller for AlwaysWritable {
        fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncUdpSocket for Scripted {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            Box::pin(AlwaysWritable)
        }

        fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
            if let Ok(mut s) = self.sent.lock() {
                s.push(transmit.destination);
            }
            Ok(())
        }

        fn poll_recv(
            &self,
            _cx: &mut Context<'_>,
            bufs: &mut [IoSliceMut<'_>],
            meta: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            let next = self.queue.lock().ok().and_then(|mut q| q.pop_front());
            let Some((addr, data)) = next else {
                return Poll::Pending;
            };
            bufs[0][..data.len()].copy_from_slice(&data);
            meta[0] = RecvMeta {
                addr,
                len: data.len(),
                stride: data.len(),
                ecn: None,
                dst_ip: None,
            };
            Poll::Ready(Ok(1))
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(SocketAddr::from(([127, 0, 0, 1], 4433)))
        }
    }

    /// Receives one message through the FabricSocket; returns (source, length
    /// left for quinn).
    fn recv_one(sock: &FabricSocket) -> (SocketAddr, usize) {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut storage = [0u8; 2048];
        let mut bufs = [IoSliceMut::new(&mut storage)];
        let mut meta = [RecvMeta::default()];
        match sock.poll_recv(&mut cx, &mut bufs, &mut meta) {
            Poll::Ready(Ok(1)) => (meta[0].addr, meta[0].len),
            other => panic!("expected one message, got {other:?}"),
        }
    }

    #[test]
    fn virtual_ranges_are_recognised() {
        for a in [
            "240.0.0.1:1",
            "255.255.255.254:9",
            "[fdfa:b51c::1]:1",
            "[fdfa:b51c::ffff:ffff]:1",
            "[::ffff:240.1.2.3]:1",
        ] {
            assert!(is_virtual(&a.parse().expect("addr")), "{a}");
        }
        for a in [
            "127.0.0.1:1",
            "239.255.255.255:1",
            "[fdfa:b51c:0:0:0:1::]:1",
            "[fdfa:b51d::1]:1",
            "[::1]:1",
            "[::ffff:10.0.0.1]:1",
        ] {
            assert!(!is_virtual(&a.parse().expect("addr")), "{a}");
        }
    }

    #[test]
    fn real_datagrams_from_virtual_sources_are_dropped_and_counted() {
        let real = Arc::new(Scripted::default());
        // A QUIC-looking long header (fixed bit set), so only the source decides.
        let quic = vec![0xc0u8; 1200];
        let spoofed: [SocketAddr; 3] = [
            "240.0.0.7:1".parse().expect("addr"),
            "[fdfa:b51c::2]:7".parse().expect("addr"),
            "[::ffff:240.0.0.9]:3".parse().expect("addr"),
        ];
        let honest: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        if let Ok(mut q) = real.queue.lock() {
            for s in spoofed {
                q.push_back((s, quic.clone()));
            }
            q.push_back((honest, quic.clone()));
        }
        let sock = FabricSocket::new(real).expect("socket");
        for s in spoofed {
            assert_eq!(recv_one(&sock), (s, 0), "spoofed datagram reached quinn");
        }
        assert_eq!(
            recv_one(&sock),
            (honest, quic.len()),
            "honest datagram kept"
        );
        let stats = sock.relay_stats();
        assert_eq!(stats.dropped_spoofed_virtual, 3);
        assert_eq!(stats.delivered_packets, 0);
    }

    #[test]
    fn a_send_to_a_virtual_address_without_a_tunnel_never_reaches_the_kernel() {
        let real = Arc::new(Scripted::default());
        let sock = FabricSocket::new(real.clone()).expect("socket");
        let send = |dest: &str| {
            let t = Transmit {
                destination: dest.parse().expect("addr"),
                ecn: None,
                contents: &[0u8; 100],
                segment_size: None,
                src_ip: None,
            };
            sock.try_send(&t)
        };
        // Quinn closing a relayed connection after its tunnel is gone.
        assert!(send("240.0.0.8:8").is_ok());
        assert!(send("[fdfa:b51c::3]:9").is_ok());
        assert!(send("127.0.0.1:5001").is_ok());
        let sent = real.sent.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(
            sent,
            vec!["127.0.0.1:5001".parse::<SocketAddr>().expect("addr")]
        );
    }
}
