//! Limits of an ingress edge: concurrent bridges, the channel open and idle
//! bridges are all bounded, so external TCP clients cannot hold resources
//! forever.

mod transport_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fabric::edge::{spawn_ingress_with, EdgeInventory, IngressHandle, IngressLimits};
use fabric::identity::NodeIdentity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use transport_support::*;

async fn ingress(
    edge: &Node,
    to: fabric::topology::NodeId,
    limits: IngressLimits,
) -> IngressHandle {
    spawn_ingress_with(
        &EdgeInventory::new(),
        edge.t.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        to,
        "echo",
        limits,
    )
    .await
    .expect("ingress")
}

async fn client(at: SocketAddr) -> TcpStream {
    timeout(STEP, TcpStream::connect(at))
        .await
        .expect("in time")
        .expect("tcp connect")
}

/// Waits until the edge closes `tcp` (EOF or reset); returns how long it took,
/// or `None` if it is still open after `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_edge_bridges_at_most_max_concurrent_clients() {
    let edge = node(false).await;
    let service = node(false).await;
    let _peers = spawn_echo(&service.t, "echo");
    edge.t.set_peer(service.id, public(service.addr));
    let limits = IngressLimits {
        max_concurrent: 2,
        ..IngressLimits::default()
    };
    let ing = ingress(&edge, service.id, limits).await;
    let mut first = client(ing.local_addr()).await;
    let mut second = client(ing.local_addr()).await;
    for c in [&mut first, &mut second] {
        let back = timeout(STEP, round_trip(c, b"hi"))
            .await
            .expect("in time")
            .expect("echo");
        assert_eq!(back, b"hi");
    }
    let mut third = client(ing.local_addr()).await;
    let _ = third.write_all(b"hi").await;
    assert!(
        closed_within(&mut third, Duration::from_secs(3))
            .await
            .is_some(),
        "a third client was bridged with max_concurrent = 2"
    );
    // A finished bridge frees its place.
    drop(first);
    let deadline = Instant::now() + STEP;
    loop {
        let mut c = client(ing.local_addr()).await;
        if let Ok(Ok(back)) = timeout(Duration::from_secs(2), round_trip(&mut c, b"again")).await {
            assert_eq!(back, b"again");
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(ing);
    edge.t.shutdown().await;
    service.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_bridge_is_closed() {
    let edge = node(false).await;
    let service = node(false).await;
    let _peers = spawn_echo(&service.t, "echo");
    edge.t.set_peer(service.id, public(service.addr));
    let limits = IngressLimits {
        idle_timeout: Duration::from_millis(500),
        ..IngressLimits::default()
    };
    let ing = ingress(&edge, service.id, limits).await;
    let mut c = client(ing.local_addr()).await;
    // Traffic keeps it open past the idle timeout...
    for _ in 0..4 {
        let back = timeout(STEP, round_trip(&mut c, b"tick"))
            .await
            .expect("in time")
            .expect("echo");
        assert_eq!(back, b"tick");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // ...silence closes it.
    let took = closed_within(&mut c, Duration::from_secs(4)).await;
    assert!(took.is_some(), "idle bridge still open after 4 s");
    drop(ing);
    edge.t.shutdown().await;
    service.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_channel_open_drops_the_client_at_the_open_timeout() {
    let mut ec = test_config(false);
    // Without the edge's own bound the client would wait for this.
    ec.connect_timeout = Duration::from_secs(4);
    let edge = node_with(NodeIdentity::generate(), ec).await;
    let target = NodeIdentity::generate().node_id();
    edge.t.set_peer(target, public(closed_udp_port()));
    let limits = IngressLimits {
        open_timeout: Duration::from_millis(300),
        ..IngressLimits::default()
    };
    let ing = ingress(&edge, target, limits).await;
    let mut c = client(ing.local_addr()).await;
    let took = closed_within(&mut c, Duration::from_secs(3)).await;
    match took {
        Some(t) => assert!(t < Duration::from_millis(1500), "closed after {t:?}"),
        None => panic!("client still waiting after 3 s"),
    }
    drop(ing);
    edge.t.shutdown().await;
}
