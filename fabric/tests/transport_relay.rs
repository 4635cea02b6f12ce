//! Relays: when B is unreachable directly, A's channel goes through a relay R,
//! stays end-to-end encrypted and authenticated to B's NodeId, and a relay that
//! alters packets breaks the channel instead of altering the data.

mod transport_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use fabric::path::PathKind;
use fabric::relay::RelayTap;
use fabric::topology::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use transport_support::*;

const MARKER: &[u8] = b"PLAINTEXT-MARKER-the-relay-must-never-see-this-7f3a";

#[derive(Default)]
struct RecordingTap {
    seen: Mutex<Vec<u8>>,
    packets: AtomicUsize,
    tamper: AtomicBool,
    tampered: AtomicUsize,
}

impl RelayTap for RecordingTap {
    fn on_forward(&self, _from: NodeId, _to: NodeId, payload: &mut BytesMut) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut seen) = self.seen.lock() {
            seen.extend_from_slice(payload);
        }
        if self.tamper.load(Ordering::Relaxed) && !payload.is_empty() {
            // Flip one bit in the middle of the (encrypted) packet.
            let i = payload.len() / 2;
            payload[i] ^= 0x01;
            self.tampered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

struct RelayedPair {
    a: Node,
    b: Node,
    r: Node,
    tap: Arc<RecordingTap>,
    peers_at_b: tokio::sync::mpsc::UnboundedReceiver<NodeId>,
}

/// A knows B only at a closed loopback port; R (relay role) knows B's real address.
async fn relayed_pair() -> RelayedPair {
    let a = node(false).await;
    let b = node(false).await;
    let r = node(true).await;
    let tap = Arc::new(RecordingTap::default());
    r.t.set_relay_tap(Some(tap.clone()));
    let peers_at_b = spawn_echo(&b.t, "echo");
    a.t.set_peer(b.id, public(closed_udp_port()));
    a.t.set_peer(r.id, relay_at(r.addr));
    r.t.set_peer(b.id, public(b.addr));
    // Targets take tunnel offers only from relays their address book knows.
    b.t.set_peer(r.id, relay_at(r.addr));
    RelayedPair {
        a,
        b,
        r,
        tap,
        peers_at_b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_to_unreachable_node_goes_through_the_relay_end_to_end() {
    let mut p = relayed_pair().await;
    let mut ch = timeout(STEP, p.a.t.open(p.b.id, "echo"))
        .await
        .expect("in time")
        .expect("open via relay");
    assert_eq!(
        p.a.t.path_to(p.b.id),
        Some(PathKind::Relayed { via: p.r.id })
    );
    assert_eq!(ch.peer(), p.b.id, "A authenticated B end-to-end");
    let seen = timeout(STEP, p.peers_at_b.recv())
        .await
        .expect("in time")
        .expect("peer");
    assert_eq!(seen, p.a.id, "B authenticated A end-to-end, not the relay");
    assert_eq!(
        p.b.t.path_to(p.a.id),
        Some(PathKind::Relayed { via: p.r.id })
    );
    assert_eq!(p.r.t.relayed_tunnels(), 1);

    let msg = MARKER.repeat(2000);
    let back = timeout(STEP, round_trip(&mut ch, &msg))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(back, msg);

    // R forwarded all of it (the payload went both ways through R) but only as
    // ciphertext: the marker appears nowhere in what it handled.
    let seen = p.tap.seen.lock().expect("lock").clone();
    assert!(
        seen.len() > 2 * msg.len(),
        "relay forwarded {} bytes for {} bytes echoed",
        seen.len(),
        msg.len()
    );
    assert!(!contains(&seen, MARKER), "relay saw plaintext");
    assert!(
        !contains(&seen, &MARKER[..16]),
        "relay saw a plaintext fragment"
    );
    // R's own connections are to A and B directly; it terminates no connection
    // between them, so it holds no key of the A<->B session.
    assert_eq!(
        p.r.t.path_to(p.a.id),
        Some(PathKind::Direct { addr: p.a.addr })
    );
    assert_eq!(
        p.r.t.path_to(p.b.id),
        Some(PathKind::Direct { addr: p.b.addr })
    );

    for n in [&p.a, &p.b, &p.r] {
        n.t.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_flips_bytes_breaks_the_channel_instead_of_altering_data() {
    let p = relayed_pair().await;
    let mut ch = timeout(STEP, p.a.t.open(p.b.id, "echo"))
        .await
        .expect("in time")
        .expect("open via relay");
    let back = timeout(STEP, round_trip(&mut ch, b"before tampering"))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(back, b"before tampering");

    p.tap.tamper.store(true, Ordering::Relaxed);
    let original = b"after tampering: this must arrive intact or not at all".to_vec();
    ch.write_all(&original)
        .await
        .expect("write is buffered locally");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    // Read whatever comes back within 3 s: altered bytes must never appear.
    let _ = timeout(Duration::from_secs(3), async {
        loop {
            match ch.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        got.is_empty() || original.starts_with(&got),
        "channel delivered altered data: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        got.len() < original.len(),
        "tampered packets must not all get through"
    );
    assert!(
        p.tap.tampered.load(Ordering::Relaxed) > 0,
        "the relay really tampered"
    );

    // A new channel through the tampering relay cannot be established either.
    p.a.t.disconnect(p.b.id);
    let res = timeout(STEP, p.a.t.open(p.b.id, "echo"))
        .await
        .expect("in time");
    assert!(res.is_err(), "open through a tampering relay must fail");

    for n in [&p.a, &p.b, &p.r] {
        n.t.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_relay_role_refuses_to_relay() {
    let a = node(false).await;
    let b = node(false).await;
    let not_relay = node(false).await;
    let _peers = spawn_echo(&b.t, "echo");
    a.t.set_peer(b.id, public(closed_udp_port()));
    // A believes it is a relay; it is not configured as one.
    a.t.set_peer(not_relay.id, relay_at(not_relay.addr));
    not_relay.t.set_peer(b.id, public(b.addr));
    let err = timeout(STEP, a.t.open(b.id, "echo"))
        .await
        .expect("in time")
        .expect_err("no relay available");
    assert!(
        err.to_string().contains("does not have the relay role"),
        "{err}"
    );
    for n in [&a, &b, &not_relay] {
        n.t.shutdown().await;
    }
}
