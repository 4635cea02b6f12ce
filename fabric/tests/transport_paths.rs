//! Path changes: when the relay in use dies, a second relay takes over (a fresh
//! `open` works); when the direct path comes back, the transport moves to it.

mod transport_support;

use fabric::path::PathKind;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;
use transport_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_death_fails_over_to_the_second_relay_and_a_restored_direct_path_wins() {
    let a = node(false).await;
    let b = node(false).await;
    let r1 = node(true).await;
    let r2 = node(true).await;
    let _peers = spawn_echo(&b.t, "echo");
    a.t.set_peer(b.id, public(closed_udp_port()));
    a.t.set_peer(r1.id, relay_at(r1.addr));
    a.t.set_peer(r2.id, relay_at(r2.addr));
    r1.t.set_peer(b.id, public(b.addr));
    // Targets take tunnel offers only from relays their address book knows.
    b.t.set_peer(r1.id, relay_at(r1.addr));
    r2.t.set_peer(b.id, public(b.addr));
    // Targets take tunnel offers only from relays their address book knows.
    b.t.set_peer(r2.id, relay_at(r2.addr));

    let mut ch = timeout(STEP, a.t.open(b.id, "echo"))
        .await
        .expect("in time")
        .expect("open via a relay");
    assert_eq!(
        timeout(STEP, round_trip(&mut ch, b"first"))
            .await
            .expect("in time")
            .expect("echo"),
        b"first"
    );
    let Some(PathKind::Relayed { via: first }) = a.t.path_to(b.id) else {
        panic!("expected a relayed path, got {:?}", a.t.path_to(b.id));
    };
    let (dead, spare) = if first == r1.id {
        (&r1, &r2)
    } else {
        (&r2, &r1)
    };

    // Kill the relay in use.
    dead.t.shutdown().await;

    // The old channel fails (a reconnect error), it does not hang.
    let mut buf = [0u8; 8];
    let old = timeout(STEP, ch.read(&mut buf))
        .await
        .expect("old channel must fail in time");
    assert!(
        matches!(old, Ok(0) | Err(_)),
        "old channel still delivered data: {old:?}"
    );

    // A service retrying once is enough: a new open works through the other relay.
    let mut failures = 0;
    let mut ch = loop {
        match timeout(STEP, a.t.open(b.id, "echo"))
            .await
            .expect("in time")
        {
            Ok(ch) => break ch,
            Err(e) => {
                failures += 1;
                assert!(failures <= 1, "more than one reconnect error: {e}");
            }
        }
    };
    assert_eq!(a.t.path_to(b.id), Some(PathKind::Relayed { via: spare.id }));
    assert_eq!(
        timeout(STEP, round_trip(&mut ch, b"second"))
            .await
            .expect("in time")
            .expect("echo"),
        b"second"
    );
    drop(ch);

    // The direct path comes back: the signed record now lists B's real address.
    a.t.set_peer(b.id, public(b.addr));
    let direct = PathKind::Direct { addr: b.addr };
    eventually("A moves to the direct path", || {
        a.t.path_to(b.id) == Some(direct)
    })
    .await;
    let mut ch = timeout(STEP, a.t.open(b.id, "echo"))
        .await
        .expect("in time")
        .expect("open on direct path");
    assert_eq!(
        timeout(STEP, round_trip(&mut ch, b"third"))
            .await
            .expect("in time")
            .expect("echo"),
        b"third"
    );
    assert_eq!(a.t.path_to(b.id), Some(direct));
    // The replaced relayed connection is drained and closed, so the relay lets go.
    eventually("spare relay drops the tunnel", || {
        spare.t.relayed_tunnels() == 0
    })
    .await;

    for n in [&a, &b, &r1, &r2] {
        n.t.shutdown().await;
    }
}
