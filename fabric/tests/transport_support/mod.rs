//! A small fleet builder for transport tests: real quinn endpoints on 127.0.0.1
//! with timers short enough that failure tests finish in seconds.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use fabric::identity::NodeIdentity;
use fabric::path::PeerInfo;
use fabric::topology::NodeId;
use fabric::transport::{Transport, TransportConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper bound for any single test step.
pub(crate) const STEP: Duration = Duration::from_secs(20);

pub(crate) struct Node {
    pub t: Transport,
    pub id: NodeId,
    pub addr: SocketAddr,
    pub identity: NodeIdentity,
}

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub(crate) fn test_config(relay: bool) -> TransportConfig {
    let mut c = TransportConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.relay = relay;
    c.connect_timeout = Duration::from_millis(800);
    c.header_timeout = Duration::from_secs(2);
    c.idle_timeout = Duration::from_secs(5);
    c.keep_alive = Duration::from_millis(500);
    c.path_upgrade_interval = Some(Duration::from_millis(300));
    c.drain_grace = Duration::from_secs(1);
    c
}

pub(crate) async fn node_with(identity: NodeIdentity, config: TransportConfig) -> Node {
    init_tracing();
    let t = Transport::bind(&identity, config)
        .await
        .expect("bind transport");
    let addr = t.local_addr().expect("local addr");
    Node {
        id: identity.node_id(),
        t,
        addr,
        identity,
    }
}

pub(crate) async fn node(relay: bool) -> Node {
    node_with(NodeIdentity::generate(), test_config(relay)).await
}

pub(crate) fn public(addr: SocketAddr) -> PeerInfo {
    PeerInfo::public(addr)
}

pub(crate) fn relay_at(addr: SocketAddr) -> PeerInfo {
    PeerInfo {
        is_relay: true,
        ..public(addr)
    }
}

/// A loopback UDP port nobody listens on: QUIC to it never answers.
pub(crate) fn closed_udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind probe");
    let addr = s.local_addr().expect("addr");
    drop(s);
    addr
}

/// Serves `service` on `t` by echoing every byte back, reporting each peer.
pub(crate) fn spawn_echo(
    t: &Transport,
    service: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<NodeId> {
    let mut listener = t.listen(service).expect("listen");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(ch) = listener.accept().await {
            let _ = tx.send(ch.peer());
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(ch);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    rx
}

/// Writes `msg` and reads the same number of bytes back.
pub(crate) async fn round_trip<S>(ch: &mut S, msg: &[u8]) -> std::io::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ch.write_all(msg).await?;
    ch.flush().await?;
    let mut back = vec![0u8; msg.len()];
    ch.read_exact(&mut back).await?;
    Ok(back)
}

/// Polls `f` every 50 ms until it returns true or `STEP` passes.
pub(crate) async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
