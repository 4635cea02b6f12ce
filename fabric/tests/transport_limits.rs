//! Resource limits of the transport: connections per key and in total, flow
//! control windows, bounded opens, a bounded path ladder and bounded counters.

mod transport_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fabric::identity::NodeIdentity;
use fabric::transport::TransportError;
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;
use tokio::time::timeout;
use transport_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_key_displaces_its_old_connection_instead_of_leaking_it() {
    let b = node(false).await;
    let key = NodeIdentity::generate();
    let mut twins = Vec::new();
    for _ in 0..4 {
        // Same key, separate sockets: four connections from one NodeId.
        let t = node_with(key.clone(), test_config(false)).await;
        t.t.set_peer(b.id, public(b.addr));
        timeout(STEP, t.t.connect(b.id))
            .await
            .expect("in time")
            .expect("connect");
        twins.push(t);
    }
    // The displaced connections are closed (no channels: right after the short
    // settle delay), so the older twins lose theirs; keep-alive would otherwise
    // keep them open forever.
    eventually("b keeps one connection for the key", || {
        b.t.connections_to(key.node_id()) == 1 && b.t.connection_count() == 1
    })
    .await;
    eventually("older twins see their connection closed", || {
        twins[..3].iter().all(|t| t.t.path_to(b.id).is_none())
    })
    .await;
    assert!(twins[3].t.path_to(b.id).is_some(), "newest connection kept");
    for t in twins.iter().chain([&b]) {
        t.t.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_holding_channels_open_cannot_pile_up_connections() {
    let mut bc = test_config(false);
    bc.max_connections_per_peer = 2;
    // Replaced connections with open channels would drain for a long time.
    bc.drain_grace = Duration::from_secs(60);
    let b = node_with(NodeIdentity::generate(), bc).await;
    let _peers = spawn_echo(&b.t, "echo");
    let key = NodeIdentity::generate();
    let mut held = Vec::new();
    for i in 0..5 {
        let t = node_with(key.clone(), test_config(false)).await;
        t.t.set_peer(b.id, public(b.addr));
        let mut ch = timeout(STEP, t.t.open(b.id, "echo"))
            .await
            .expect("in time")
            .expect("open");
        let back = timeout(STEP, round_trip(&mut ch, b"hold"))
            .await
            .expect("in time")
            .expect("echo");
        assert_eq!(back, b"hold");
        assert!(
            b.t.connections_to(key.node_id()) <= 2,
            "after {} connections b holds {}",
            i + 1,
            b.t.connections_to(key.node_id())
        );
        held.push((t, ch));
    }
    // The newest connection still works.
    let (_, ch) = held.last_mut().expect("one");
    let back = timeout(STEP, round_trip(ch, b"still"))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(back, b"still");
    for (t, _) in &held {
        t.t.shutdown().await;
    }
    b.t.shutdown().await;
}

/// Forwards datagrams from anyone to `to` and drops every answer: handshakes
/// through it start at `to` and never finish.
async fn black_hole_towards(to: SocketAddr) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let front = sock.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if from != to {
                let _ = sock.send_to(&buf[..n], to).await;
            }
        }
    });
    front
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_handshakes_in_progress_count_against_max_connections() {
    let mut bc = test_config(false);
    bc.max_connections = 2;
    bc.connect_timeout = Duration::from_secs(2);
    let b = node_with(NodeIdentity::generate(), bc).await;
    let hole = black_hole_towards(b.addr).await;
    let mut stallers = Vec::new();
    for _ in 0..2 {
        let s = node(false).await;
        s.t.set_peer(b.id, public(hole));
        let t = s.t.clone();
        let id = b.id;
        tokio::spawn(async move {
            let _ = t.connect(id).await;
        });
        stallers.push(s);
    }
    // Let both Initials reach b (loopback: well under this).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = node(false).await;
    c.t.set_peer(b.id, public(b.addr));
    let refused = timeout(STEP, c.t.connect(b.id)).await.expect("in time");
    assert!(
        refused.is_err(),
        "a third connection got in while two handshakes were in progress"
    );
    assert_eq!(b.t.connection_count(), 0);
    // Once the stalled handshakes give up, their places are free again.
    let deadline = Instant::now() + STEP;
    loop {
        match timeout(STEP, c.t.connect(b.id)).await.expect("in time") {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "never admitted: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in stallers.iter().chain([&b, &c]) {
        n.t.shutdown().await;
    }
}

/// Writes to `ch` until no write makes progress for 300 ms; returns the bytes
/// accepted (bounded by the receiver's flow-control credit).
async fn write_until_stalled<W: tokio::io::AsyncWrite + Unpin>(ch: &mut W, cap: usize) -> usize {
    let chunk = vec![0x5au8; 16 * 1024];
    let mut total = 0;
    while total < cap {
        match timeout(Duration::from_millis(300), ch.write(&chunk)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_make_a_node_buffer_more_than_its_receive_windows() {
    let mut bc = test_config(false);
    bc.stream_receive_window = 64 << 10;
    bc.receive_window = 256 << 10;
    let b = node_with(NodeIdentity::generate(), bc).await;
    // A listener that never accepts: everything sent sits in b's buffers.
    let _listener = b.t.listen("sink").expect("listen");
    let a = node(false).await;
    a.t.set_peer(b.id, public(b.addr));
    let cap = 4 << 20;
    let mut first = timeout(STEP, a.t.open(b.id, "sink"))
        .await
        .expect("in time")
        .expect("open");
    let one = write_until_stalled(&mut first, cap).await;
    assert!(
        one > 0 && one <= (64 << 10) + (16 << 10),
        "one stream took {one} bytes"
    );
    let mut chans = vec![first];
    let mut total = one;
    for _ in 0..7 {
        // Once the connection window is used up even a new channel's header
        // cannot be sent: that open times out, which is the window working.
        match timeout(STEP, a.t.open(b.id, "sink"))
            .await
            .expect("in time")
        {
            Ok(mut ch) => {
                total += write_until_stalled(&mut ch, cap).await;
                chans.push(ch);
            }
            Err(TransportError::Timeout { .. }) => break,
            Err(e) => panic!("open: {e}"),
        }
    }
    assert!(
        total <= (256 << 10) + (16 << 10),
        "8 streams took {total} bytes, connection window is 256 KiB"
    );
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_does_not_hang_when_the_peer_withholds_stream_credit() {
    let mut bc = test_config(false);
    bc.max_streams_per_connection = 1;
    let b = node_with(NodeIdentity::generate(), bc).await;
    let _peers = spawn_echo(&b.t, "echo");
    let a = node(false).await;
    a.t.set_peer(b.id, public(b.addr));
    let _first = timeout(STEP, a.t.open(b.id, "echo"))
        .await
        .expect("in time")
        .expect("open");
    // b allows one stream; the second open waits for credit that never comes.
    let started = Instant::now();
    let second = timeout(Duration::from_secs(8), a.t.open(b.id, "echo"))
        .await
        .expect("open must give up by itself (header_timeout), not hang");
    match second {
        Err(TransportError::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_ladder_tries_only_the_best_relays() {
    let mut ac = test_config(false);
    ac.connect_timeout = Duration::from_millis(300);
    ac.max_relays_per_open = 2;
    let a = node_with(NodeIdentity::generate(), ac).await;
    let b = NodeIdentity::generate().node_id();
    a.t.set_peer(b, public(closed_udp_port()));
    let relays: Vec<(fabric::topology::NodeId, SocketAddr)> = (0..5)
        .map(|_| (NodeIdentity::generate().node_id(), closed_udp_port()))
        .collect();
    for (id, at) in &relays {
        a.t.set_peer(*id, relay_at(*at));
    }
    let err = timeout(STEP, a.t.open(b, "echo"))
        .await
        .expect("in time")
        .expect_err("nothing answers");
    match &err {
        TransportError::Unreachable { attempts, .. } => {
            assert_eq!(attempts.len(), 3, "one direct + two relays: {err}")
        }
        other => panic!("expected Unreachable, got {other}"),
    }
    let dialled = relays
        .iter()
        .filter(|(id, at)| a.t.probe_count(*id, *at) > 0)
        .count();
    assert_eq!(dialled, 2, "relays dialled");
    a.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_ladder_stops_at_the_open_deadline() {
    let mut ac = test_config(false);
    ac.connect_timeout = Duration::from_millis(800);
    ac.open_deadline = Duration::from_secs(1);
    let a = node_with(NodeIdentity::generate(), ac).await;
    let b = NodeIdentity::generate().node_id();
    a.t.set_peer(b, public(closed_udp_port()));
    for _ in 0..3 {
        a.t.set_peer(
            NodeIdentity::generate().node_id(),
            relay_at(closed_udp_port()),
        );
    }
    let started = Instant::now();
    let err = timeout(STEP, a.t.open(b, "echo"))
        .await
        .expect("in time")
        .expect_err("nothing answers");
    let took = started.elapsed();
    // Direct (0.8 s) + three relays (0.8 s each) would take 3.2 s.
    assert!(took < Duration::from_millis(1600), "open took {took:?}");
    assert!(err.to_string().contains("open_deadline"), "{err}");
    // A second opener waiting for the same dial lock is bounded too.
    let (x, y) = tokio::join!(a.t.open(b, "echo"), a.t.open(b, "echo"));
    assert!(x.is_err() && y.is_err());
    assert!(started.elapsed() < took + Duration::from_millis(1600));
    a.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_counters_are_bounded_and_forgotten_with_the_peer() {
    let mut ac = test_config(false);
    ac.connect_timeout = Duration::from_millis(200);
    ac.max_probe_entries = 3;
    let a = node_with(NodeIdentity::generate(), ac).await;
    let peer = NodeIdentity::generate().node_id();
    let addrs: Vec<SocketAddr> = (0..6).map(|_| closed_udp_port()).collect();
    for at in &addrs {
        let _ = timeout(STEP, a.t.probe(peer, *at)).await.expect("in time");
    }
    let counts = a.t.probe_counts();
    assert_eq!(counts.len(), 3, "{counts:?}");
    // The most recent ones are kept.
    for at in &addrs[3..] {
        assert_eq!(a.t.probe_count(peer, *at), 1);
    }
    a.t.remove_peer(peer);
    assert!(a.t.probe_counts().is_empty());
    a.t.shutdown().await;
}
