//! Identity: channels authenticate both ends by NodeId, and an endpoint answering
//! with the wrong key is refused with an error naming both keys.

mod transport_support;

use fabric::identity::NodeIdentity;
use fabric::transport::TransportError;
use tokio::time::timeout;
use transport_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_data_and_each_learns_the_others_node_id() {
    let a = node(false).await;
    let b = node(false).await;
    let mut peers = spawn_echo(&b.t, "echo");
    a.t.set_peer(b.id, public(b.addr));

    let mut ch = timeout(STEP, a.t.open(b.id, "echo"))
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(ch.peer(), b.id, "opener sees the node it asked for");
    let msg = b"hello fabric".repeat(1000);
    let back = timeout(STEP, round_trip(&mut ch, &msg))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(back, msg);
    let seen = timeout(STEP, peers.recv())
        .await
        .expect("in time")
        .expect("peer");
    assert_eq!(
        seen, a.id,
        "server learns the client's NodeId from its certificate"
    );
    assert_eq!(
        a.t.path_to(b.id),
        Some(fabric::path::PathKind::Direct { addr: b.addr })
    );
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_at_the_right_address_with_the_wrong_key_is_refused_with_a_mismatch() {
    let a = node(false).await;
    let b_identity = NodeIdentity::generate();
    let expected = b_identity.node_id();
    // The impostor listens where the record says B is, with its own key.
    let impostor = node(false).await;
    let _peers = spawn_echo(&impostor.t, "echo");
    a.t.set_peer(expected, public(impostor.addr));

    let err = timeout(STEP, a.t.open(expected, "echo"))
        .await
        .expect("in time")
        .expect_err("must refuse the impostor");
    let mismatch = err
        .identity_mismatch()
        .expect("error is an identity mismatch");
    assert_eq!(mismatch.expected, expected);
    assert_eq!(mismatch.presented, impostor.id);
    assert_eq!(mismatch.endpoint, impostor.addr.to_string());
    let text = err.to_string();
    assert!(text.contains(&expected.to_string()), "{text}");
    assert!(text.contains(&impostor.id.to_string()), "{text}");
    assert!(text.contains(&impostor.addr.to_string()), "{text}");
    assert_eq!(a.t.path_to(expected), None, "no connection was kept");
    a.t.shutdown().await;
    impostor.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_and_unknown_peer_are_typed_errors() {
    let a = node(false).await;
    let b = node(false).await;
    a.t.set_peer(b.id, public(b.addr));
    let err = timeout(STEP, a.t.open(b.id, "nobody-home"))
        .await
        .expect("in time")
        .expect_err("no listener");
    assert!(
        matches!(err, TransportError::UnknownService { node, ref service } if node == b.id && service == "nobody-home"),
        "{err}"
    );
    let stranger = NodeIdentity::generate().node_id();
    let err =
        a.t.open(stranger, "echo")
            .await
            .expect_err("not in address book");
    assert!(matches!(err, TransportError::UnknownPeer { node } if node == stranger));
    let err = a.t.open(b.id, "fabric.relay").await.expect_err("reserved");
    assert!(matches!(err, TransportError::InvalidService(_)));
    a.t.shutdown().await;
    b.t.shutdown().await;
}
