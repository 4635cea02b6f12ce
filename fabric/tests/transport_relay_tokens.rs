//! The relay's plain-UDP data path: packets carry a relay-issued 128-bit token
//! bound to one tunnel leg and to the address the relay sees that leg's node at.
//! Unknown or forged tokens, packets replayed from another tunnel's endpoint,
//! tokens of a closed tunnel and garbage are dropped and counted; a tunnel is
//! rate-limited; none of it crashes or wedges the relay.

mod transport_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fabric::path::PathKind;
use tokio::net::UdpSocket;
use tokio::time::timeout;
use transport_support::*;

/// First byte of a packet an endpoint sends to the relay (see `fabric::relay`).
const TO_RELAY: u8 = 0x01;
/// First byte of a packet the relay sends to an endpoint.
const FROM_RELAY: u8 = 0x02;
const HEADER: usize = 17;

/// An on-path observer in front of the relay: forwards UDP both ways between one
/// client and the relay, and records every relay data packet the client sends.
/// The relay sees the client at `upstream`'s address.
struct Proxy {
    /// Where the client should think the relay is.
    front_addr: SocketAddr,
    /// The socket facing the relay; sending from it looks like the client.
    upstream: Arc<UdpSocket>,
    captured: Arc<Mutex<Vec<Vec<u8>>>>,
}

async fn proxy_to(relay: SocketAddr) -> Proxy {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind front"));
    let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind up"));
    let front_addr = front.local_addr().expect("addr");
    let captured = Arc::new(Mutex::new(Vec::new()));
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    {
        let (front, upstream, captured, client) = (
            front.clone(),
            upstream.clone(),
            captured.clone(),
            client.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().expect("lock") = Some(from);
                if n > HEADER && buf[0] == TO_RELAY {
                    captured.lock().expect("lock").push(buf[..n].to_vec());
                }
                let _ = upstream.send_to(&buf[..n], relay).await;
            }
        });
    }
    {
        let (front, upstream) = (front.clone(), upstream.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = upstream.recv_from(&mut buf).await {
                let to = *client.lock().expect("lock");
                if let Some(to) = to {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
    }
    Proxy {
        front_addr,
        upstream,
        captured,
    }
}

fn random_bytes(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            // xorshift: cheap deterministic junk.
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

fn packet(kind: u8, token: &[u8], payload_len: usize, seed: &mut u64) -> Vec<u8> {
    let mut p = vec![kind];
    p.extend_from_slice(token);
    p.extend(random_bytes(seed, payload_len));
    p
}

async fn echo_ok(a: &Node, b: &Node, msg: &[u8]) {
    let mut ch = timeout(STEP, a.t.open(b.id, "echo"))
        .await
        .expect("in time")
        .expect("open");
    let back = timeout(STEP, round_trip(&mut ch, msg))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(back, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_unknown_tokens_are_dropped_and_counted() {
    let a = node(false).await;
    let b = node(false).await;
    let r = node(true).await;
    let _peers = spawn_echo(&b.t, "echo");
    a.t.set_peer(b.id, public(closed_udp_port()));
    a.t.set_peer(r.id, relay_at(r.addr));
    r.t.set_peer(b.id, public(b.addr));
    // Targets take tunnel offers only from relays their address book knows.
    b.t.set_peer(r.id, relay_at(r.addr));
    echo_ok(&a, &b, b"through the relay").await;
    assert_eq!(a.t.path_to(b.id), Some(PathKind::Relayed { via: r.id }));
    let before_r = r.t.relay_stats();
    let before_b = b.t.relay_stats();
    assert!(before_r.forwarded_packets > 0, "{before_r:?}");

    // Forged tokens, in both directions: to the relay as if from an endpoint,
    // and to the target as if from the relay.
    let attacker = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut seed = 0x1234_5678_9abc_def1u64;
    for i in 0..200 {
        let token = random_bytes(&mut seed, 16);
        let p = packet(TO_RELAY, &token, 1200, &mut seed);
        let _ = attacker.send_to(&p, r.addr).await;
        let p = packet(FROM_RELAY, &token, 1200, &mut seed);
        let _ = attacker.send_to(&p, b.addr).await;
        if i % 20 == 19 {
            // Paced so the kernel's receive buffers do not overflow: the test
            // counts what the nodes drop, not what the kernel drops.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    eventually("relay counts 200 unknown tokens", || {
        r.t.relay_stats().dropped_unknown_token >= before_r.dropped_unknown_token + 200
    })
    .await;
    eventually("target counts 200 unknown tokens", || {
        b.t.relay_stats().dropped_unknown_token >= before_b.dropped_unknown_token + 200
    })
    .await;
    let after_r = r.t.relay_stats();
    let after_b = b.t.relay_stats();
    // None of them went anywhere: the relay forwarded only the tunnel's own
    // traffic (keep-alives at most) and the target delivered none of them.
    assert!(
        after_r.forwarded_packets < before_r.forwarded_packets + 50,
        "relay forwarded forged packets: {before_r:?} -> {after_r:?}"
    );
    assert!(
        after_b.delivered_packets < before_b.delivered_packets + 50,
        "target delivered forged packets: {before_b:?} -> {after_b:?}"
    );

    // The tunnel is unharmed.
    echo_ok(&a, &b, b"still through the relay").await;
    for n in [&a, &b, &r] {
        n.t.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_replayed_from_another_tunnel_or_after_the_tunnel_closed_is_dropped() {
    let a = node(false).await;
    let c = node(false).await;
    let b = node(false).await;
    let r = node(true).await;
    let _peers = spawn_echo(&b.t, "echo");
    // A and C each reach the relay through their own on-path proxy, so the test
    // can see tokens on the wire and send from each tunnel endpoint's address.
    let pa = proxy_to(r.addr).await;
    let pc = proxy_to(r.addr).await;
    for (n, p) in [(&a, &pa), (&c, &pc)] {
        n.t.set_peer(b.id, public(closed_udp_port()));
        n.t.set_peer(r.id, relay_at(p.front_addr));
    }
    r.t.set_peer(b.id, public(b.addr));
    // Targets take tunnel offers only from relays their address book knows.
    b.t.set_peer(r.id, relay_at(r.addr));
    echo_ok(&a, &b, b"tunnel one").await;
    echo_ok(&c, &b, b"tunnel two").await;
    assert_eq!(r.t.relayed_tunnels(), 2);
    // A few dozen are plenty, and few enough that the kernel's receive buffers
    // never overflow (the test counts what the relay drops, not the kernel).
    let captured: Vec<Vec<u8>> = pa
        .captured
        .lock()
        .expect("lock")
        .iter()
        .take(30)
        .cloned()
        .collect();
    assert!(!captured.is_empty(), "the proxy saw tunnel one's packets");

    // Tunnel one's packets, replayed from tunnel two's endpoint address (a
    // tunnel user trying to ride or disturb someone else's tunnel): dropped.
    let before = r.t.relay_stats();
    for p in &captured {
        let _ = pc.upstream.send_to(p, r.addr).await;
    }
    // And from an address that belongs to no tunnel at all.
    let stranger = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for p in &captured {
        let _ = stranger.send_to(p, r.addr).await;
    }
    let n = captured.len() as u64;
    eventually("replays counted as wrong source", || {
        r.t.relay_stats().dropped_wrong_source >= before.dropped_wrong_source + 2 * n
    })
    .await;
    echo_ok(&a, &b, b"tunnel one still works").await;
    echo_ok(&c, &b, b"tunnel two still works").await;

    // Tokens expire with the tunnel: once tunnel one is gone, its packets are
    // unknown even from the right address.
    a.t.disconnect(b.id);
    eventually("relay drops tunnel one", || r.t.relayed_tunnels() == 1).await;
    let before = r.t.relay_stats();
    for p in &captured {
        let _ = pa.upstream.send_to(p, r.addr).await;
    }
    eventually("expired token counted as unknown", || {
        r.t.relay_stats().dropped_unknown_token >= before.dropped_unknown_token + n
    })
    .await;
    echo_ok(&c, &b, b"tunnel two unaffected").await;

    for n in [&a, &c, &b, &r] {
        n.t.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_to_the_relay_socket_does_not_crash_or_wedge_it() {
    let a = node(false).await;
    let b = node(false).await;
    let r = node(true).await;
    let _peers = spawn_echo(&b.t, "echo");
    a.t.set_peer(b.id, public(closed_udp_port()));
    a.t.set_peer(r.id, relay_at(r.addr));
    r.t.set_peer(b.id, public(b.addr));
    // Targets take tunnel offers only from relays their address book knows.
    b.t.set_peer(r.id, relay_at(r.addr));
    let mut ch = timeout(STEP, a.t.open(b.id, "echo"))
        .await
        .expect("in time")
        .expect("open via relay");
    assert_eq!(
        timeout(STEP, round_trip(&mut ch, b"before"))
            .await
            .expect("in time")
            .expect("echo"),
        b"before"
    );

    let junk = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..4000usize {
        let len = random_bytes(&mut seed, 2)
            .iter()
            .fold(0usize, |acc, b| acc * 256 + *b as usize)
            % 1500;
        let mut pkt = random_bytes(&mut seed, len);
        match (i % 5, pkt.first_mut()) {
            // Empty datagrams.
            (_, None) => {}
            // Every byte below 0x40: relay kinds, invalid kinds.
            (0, Some(first)) => *first = (i / 5 % 0x40) as u8,
            // A bare header (or less) with a valid kind.
            (1, Some(_)) => {
                pkt.truncate(HEADER.min(pkt.len()));
                pkt[0] = TO_RELAY;
            }
            (2, Some(first)) => *first = FROM_RELAY,
            // QUIC-looking short header.
            (3, Some(first)) => *first |= 0x40,
            _ => {}
        }
        let _ = junk.send_to(&pkt, r.addr).await;
        let _ = junk.send_to(&pkt, b.addr).await;
    }
    // Zero-length datagrams too.
    for _ in 0..10 {
        let _ = junk.send_to(&[], r.addr).await;
    }
    eventually("relay counted malformed packets", || {
        r.t.relay_stats().dropped_malformed > 0
    })
    .await;
    let stats = r.t.relay_stats();
    assert!(stats.dropped_unknown_token > 0, "{stats:?}");

    // The tunnel in use and a new one from another node both still work.
    assert_eq!(
        timeout(STEP, round_trip(&mut ch, b"after"))
            .await
            .expect("in time")
            .expect("echo"),
        b"after"
    );
    let c = node(false).await;
    c.t.set_peer(b.id, public(closed_udp_port()));
    c.t.set_peer(r.id, relay_at(r.addr));
    echo_ok(&c, &b, b"a new tunnel after the flood").await;
    assert_eq!(c.t.path_to(b.id), Some(PathKind::Relayed { via: r.id }));
    for n in [&a, &b, &c, &r] {
        n.t.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_is_rate_limited_at_the_relay() {
    let a = node(false).await;
    let b = node(false).await;
    let mut config = test_config(true);
    config.relay_tunnel_rate = Some(256 << 10);
    config.relay_tunnel_burst = 64 << 10;
    let r = node_with(fabric::identity::NodeIdentity::generate(), config).await;
    let _peers = spawn_echo(&b.t, "echo");
    a.t.set_peer(b.id, public(closed_udp_port()));
    a.t.set_peer(r.id, relay_at(r.addr));
    r.t.set_peer(b.id, public(b.addr));
    // Targets take tunnel offers only from relays their address book knows.
    b.t.set_peer(r.id, relay_at(r.addr));
    let mut ch = timeout(STEP, a.t.open(b.id, "echo"))
        .await
        .expect("in time")
        .expect("open via relay");

    // 384 KiB each way = 768 KiB through one 256 KiB/s bucket with a 64 KiB
    // burst: at least 2.75 s if the limit holds.
    let msg: Vec<u8> = (0..384 << 10).map(|i| (i % 251) as u8).collect();
    let start = Instant::now();
    let back = timeout(Duration::from_secs(40), round_trip(&mut ch, &msg))
        .await
        .expect("in time")
        .expect("echo");
    let took = start.elapsed();
    assert!(back == msg, "data intact under the rate limit");
    assert!(
        took >= Duration::from_secs(2),
        "rate limit not applied: {took:?}"
    );
    let stats = r.t.relay_stats();
    assert!(stats.dropped_rate_limited > 0, "{stats:?}");
    for n in [&a, &b, &r] {
        n.t.shutdown().await;
    }
}
