//! Transport tests that need the reserved relay services or internal state
//! (loopback only, every wait bounded).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::timeout;

use super::*;
use crate::frame::Framed;
use crate::relay::{
    new_token, token_to_hex, OfferResponse, RelayRequest, RelayResponse, TunnelOffer,
    CONTROL_MAX_FRAME,
};
use crate::topology::{EndpointCandidate, EndpointScope};

const STEP: Duration = Duration::from_secs(10);

fn config(relay: bool) -> TransportConfig {
    let mut c = TransportConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.relay = relay;
    c.connect_timeout = Duration::from_millis(800);
    c.header_timeout = Duration::from_secs(2);
    c.idle_timeout = Duration::from_secs(5);
    c.keep_alive = Duration::from_millis(500);
    c.path_upgrade_interval = None;
    c.drain_grace = Duration::from_secs(1);
    c
}

async fn bind(config: TransportConfig) -> Transport {
    Transport::bind(&NodeIdentity::generate(), config)
        .await
        .expect("bind")
}

fn at(addr: SocketAddr, is_relay: bool) -> PeerInfo {
    PeerInfo {
        candidates: vec![EndpointCandidate {
            addr,
            scope: EndpointScope::Public,
            locality_group: None,
            nat_group: None,
        }],
        is_relay,
        ..Default::default()
    }
}

fn addr(t: &Transport) -> SocketAddr {
    t.local_addr().expect("addr")
}

/// Asks relay `r` (over `a`'s connection to it) for a tunnel to `target`,
/// the way the initiator does, but without the end-to-end handshake after it.
async fn ask_relay(a: &Transport, r: NodeId, target: NodeId) -> (Framed<Channel>, RelayResponse) {
    let entry = a.inner.connection_to(r).await.expect("connect to relay");
    let ch = a
        .inner
        .open_on(&entry, RELAY_SERVICE)
        .await
        .expect("open relay control");
    let mut ctrl = Framed::with_max_frame(ch, CONTROL_MAX_FRAME);
    let resp = timeout(
        STEP,
        ctrl.request::<_, RelayResponse>(&RelayRequest::Connect { target }),
    )
    .await
    .expect("relay answers in time")
    .expect("relay answer");
    (ctrl, resp)
}

/// R relays, B is its target and knows R as a relay, A asks.
async fn trio(mut relay_config: TransportConfig) -> (Transport, Transport, Transport) {
    relay_config.relay = true;
    let a = bind(config(false)).await;
    let b = bind(config(false)).await;
    let r = bind(relay_config).await;
    a.set_peer(r.node_id(), at(addr(&r), true));
    r.set_peer(b.node_id(), at(addr(&b), false));
    b.set_peer(r.node_id(), at(addr(&r), true));
    (a, b, r)
}

async fn shutdown(ts: &[&Transport]) {
    for t in ts {
        t.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_grants_one_requester_no_more_than_its_tunnel_quota() {
    let mut rc = config(true);
    rc.relay_tunnels_per_peer = 2;
    let (a, b, r) = trio(rc).await;
    let mut held = Vec::new();
    for i in 0..2 {
        let (ctrl, resp) = ask_relay(&a, r.node_id(), b.node_id()).await;
        assert!(
            matches!(resp, RelayResponse::Ok { .. }),
            "request {i}: {resp:?}"
        );
        held.push(ctrl);
    }
    let (_ctrl, resp) = ask_relay(&a, r.node_id(), b.node_id()).await;
    match resp {
        RelayResponse::Refused { reason } => assert!(reason.contains("quota"), "{reason}"),
        other => panic!("third tunnel for one requester was granted: {other:?}"),
    }
    assert_eq!(r.relayed_tunnels(), 2);
    // Another requester is not affected by A's quota.
    let c = bind(config(false)).await;
    c.set_peer(r.node_id(), at(addr(&r), true));
    let (_c_ctrl, resp) = ask_relay(&c, r.node_id(), b.node_id()).await;
    assert!(matches!(resp, RelayResponse::Ok { .. }), "{resp:?}");
    // Ending a tunnel gives the slot back.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + STEP;
    while r.inner.relay_slots.total() > 2 {
        assert!(tokio::time::Instant::now() < deadline, "slot not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_ctrl, resp) = ask_relay(&a, r.node_id(), b.node_id()).await;
    assert!(matches!(resp, RelayResponse::Ok { .. }), "{resp:?}");
    shutdown(&[&a, &b, &c, &r]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_relay_requests_cannot_overshoot_max_tunnels() {
    let mut rc = config(true);
    rc.max_tunnels = 2;
    let (a, b, r) = trio(rc).await;
    // Warm the connections so all requests race inside `splice`.
    a.connect(r.node_id()).await.expect("a-r");
    r.connect(b.node_id()).await.expect("r-b");
    let asks = (0..6).map(|_| ask_relay(&a, r.node_id(), b.node_id()));
    let answers = futures::future::join_all(asks).await;
    let granted = answers
        .iter()
        .filter(|(_, resp)| matches!(resp, RelayResponse::Ok { .. }))
        .count();
    assert_eq!(granted, 2, "granted {granted} tunnels with max_tunnels = 2");
    assert!(r.relayed_tunnels() <= 2);
    drop(answers);
    shutdown(&[&a, &b, &r]).await;
}

/// Offers `fabric.relay.accept` to `target` from `from`, like a relay would.
/// The control stream is returned too: the target tears the tunnel down as
/// soon as the relay ends it, so a caller checking the tunnel must hold it.
async fn offer(
    from: &Transport,
    target: NodeId,
) -> (OfferResponse, Framed<crate::channel::Channel>) {
    let entry = from.inner.connection_to(target).await.expect("connect");
    let ch = from
        .inner
        .open_on(&entry, RELAY_ACCEPT_SERVICE)
        .await
        .expect("open offer stream");
    let mut ctrl = Framed::with_max_frame(ch, CONTROL_MAX_FRAME);
    let answer = timeout(
        STEP,
        ctrl.request::<_, OfferResponse>(&TunnelOffer {
            token: token_to_hex(&new_token()),
            from: from.node_id(),
        }),
    )
    .await
    .expect("answer in time")
    .expect("answer");
    (answer, ctrl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_offers_are_taken_only_from_peers_the_address_book_marks_as_relays() {
    let b = bind(config(false)).await;
    let stranger = bind(config(false)).await;
    let known = bind(config(false)).await;
    let relay = bind(config(true)).await;
    for t in [&stranger, &known, &relay] {
        t.set_peer(b.node_id(), at(addr(&b), false));
    }
    b.set_peer(known.node_id(), at(addr(&known), false));
    b.set_peer(relay.node_id(), at(addr(&relay), true));

    for (who, t) in [("unknown key", &stranger), ("known non-relay", &known)] {
        match offer(t, b.node_id()).await.0 {
            OfferResponse::Refused { reason } => assert!(reason.contains("relay"), "{reason}"),
            OfferResponse::Accepted => panic!("{who} placed a tunnel on the target"),
        }
    }
    assert_eq!(b.inner.socket.tunnel_count(), 0);
    assert_eq!(b.inner.target_slots.total(), 0);
    let (answer, _ctrl) = offer(&relay, b.node_id()).await;
    assert!(matches!(answer, OfferResponse::Accepted));
    assert_eq!(b.inner.socket.tunnel_count(), 1);
    shutdown(&[&b, &stranger, &known, &relay]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_tunnel_that_is_never_used_is_torn_down_at_relay_and_target() {
    let mut rc = config(true);
    rc.tunnel_setup_timeout = Duration::from_millis(700);
    let (a, mut b, r) = trio(rc).await;
    // The target enforces its own setup deadline as well.
    b.shutdown().await;
    let mut bc = config(false);
    bc.tunnel_setup_timeout = Duration::from_millis(700);
    b = bind(bc).await;
    r.set_peer(b.node_id(), at(addr(&b), false));
    b.set_peer(r.node_id(), at(addr(&r), true));

    let (mut ctrl, resp) = ask_relay(&a, r.node_id(), b.node_id()).await;
    assert!(matches!(resp, RelayResponse::Ok { .. }), "{resp:?}");
    assert_eq!(r.relayed_tunnels(), 1);
    assert_eq!(b.inner.socket.tunnel_count(), 1);
    // A never runs the end-to-end handshake. The relay ends the control stream.
    let mut buf = [0u8; 16];
    let ended = timeout(Duration::from_secs(5), ctrl.get_mut().read(&mut buf)).await;
    assert!(
        ended.is_ok(),
        "idle tunnel still open after its setup timeout"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while r.relayed_tunnels() > 0 || b.inner.socket.tunnel_count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay {} / target {} tunnels left",
            r.relayed_tunnels(),
            b.inner.socket.tunnel_count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(r.inner.relay_slots.total(), 0);
    assert_eq!(b.inner.target_slots.total(), 0);
    shutdown(&[&a, &b, &r]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_locks_are_dropped_when_nobody_dials() {
    let a = bind(config(false)).await;
    let b = bind(config(false)).await;
    a.set_peer(b.node_id(), at(addr(&b), false));
    // Unknown peers: the lock is taken, then the dial fails.
    let strangers: Vec<NodeId> = (0..20)
        .map(|_| NodeIdentity::generate().node_id())
        .collect();
    let dials = strangers.iter().map(|n| a.connect(*n));
    for r in futures::future::join_all(dials).await {
        assert!(
            matches!(r, Err(TransportError::UnknownPeer { .. })),
            "{r:?}"
        );
    }
    // Concurrent dials of one peer share the lock and leave nothing behind.
    let dials = (0..5).map(|_| a.connect(b.node_id()));
    for r in futures::future::join_all(dials).await {
        r.expect("connect");
    }
    assert_eq!(a.inner.dialing.lock().expect("lock").len(), 0);
    shutdown(&[&a, &b]).await;
}

#[tokio::test]
async fn shutdown_fails_an_open_waiting_on_its_handshake_at_once() {
    let mut slow = config(false);
    slow.connect_timeout = Duration::from_secs(30);
    slow.open_deadline = Duration::from_secs(60);
    let a = bind(slow).await;
    // A bound socket that never answers: the handshake would wait out the
    // whole connect timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let ghost = NodeIdentity::generate().node_id();
    a.set_peer(ghost, at(silent.local_addr().expect("addr"), false));
    let opening = tokio::spawn({
        let a = a.clone();
        async move { a.open(ghost, "svc").await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = addr(&a);
    a.shutdown().await;
    let result = timeout(STEP, opening)
        .await
        .expect("open returned after shutdown")
        .expect("task");
    assert!(
        matches!(result, Err(TransportError::Shutdown)),
        "{result:?}"
    );
    drop(a);
    // Nothing of the transport holds the socket any more: the port is free
    // once the endpoint has drained the connection it closed.
    let freed = timeout(STEP, async {
        while std::net::UdpSocket::bind(addr).is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        freed.is_ok(),
        "the transport's port stayed bound after shutdown"
    );
}
