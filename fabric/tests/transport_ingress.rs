//! Edge listeners: an ingress edge maps external TCP connections into fabric
//! channels, and the inventory lists every listener with its role.

mod transport_support;

use fabric::edge::{spawn_ingress, EdgeInventory, EdgeTarget, ReportedRole};
use tokio::net::TcpStream;
use tokio::time::timeout;
use transport_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_client_reaches_a_service_on_another_node_through_an_ingress_edge() {
    let edge_node = node(false).await;
    let service_node = node(false).await;
    let mut peers = spawn_echo(&service_node.t, "echo");
    edge_node
        .t
        .set_peer(service_node.id, public(service_node.addr));

    let inventory = EdgeInventory::new();
    let ingress = spawn_ingress(
        &inventory,
        edge_node.t.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        service_node.id,
        "echo",
    )
    .await
    .expect("ingress");

    let mut tcp = timeout(STEP, TcpStream::connect(ingress.local_addr()))
        .await
        .expect("in time")
        .expect("tcp connect");
    let msg = b"GET / over tcp into the fabric".repeat(500);
    let back = timeout(STEP, round_trip(&mut tcp, &msg))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(back, msg);
    // The service saw the edge node's verified identity, not a TCP address.
    let seen = timeout(STEP, peers.recv())
        .await
        .expect("in time")
        .expect("peer");
    assert_eq!(seen, edge_node.id);

    let entries = inventory.entries();
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.role, ReportedRole::ServiceIngress);
    assert_eq!(e.bind, ingress.local_addr());
    assert_eq!(
        e.target,
        EdgeTarget::FabricService {
            node: service_node.id,
            service: "echo".into()
        }
    );
    assert!(e.anomaly.is_none());
    let json = serde_json::to_value(e).expect("serialise");
    assert_eq!(json["role"], "service-ingress");
    assert!(json["opened_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    let audit = inventory.audit().expect("audit");
    assert!(audit
        .iter()
        .any(|a| a.bind == ingress.local_addr() && a.role == ReportedRole::ServiceIngress));

    ingress.stop();
    eventually("stopped edge leaves the inventory", || {
        inventory.entries().is_empty()
    })
    .await;
    edge_node.t.shutdown().await;
    service_node.t.shutdown().await;
}

#[tokio::test]
async fn a_listener_opened_behind_the_inventorys_back_is_an_unclassified_anomaly() {
    let inventory = EdgeInventory::new();
    // Deliberately bypass the inventory, as buggy code would.
    #[allow(clippy::disallowed_methods)]
    let rogue = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let rogue_addr = rogue.local_addr().expect("addr");
    let audit = inventory.audit().expect("audit");
    let found = audit
        .iter()
        .find(|e| e.bind == rogue_addr)
        .expect("audit finds the rogue listener");
    assert_eq!(found.role, ReportedRole::Unclassified);
    assert!(found.anomaly.as_deref().is_some_and(|a| a.contains("bug")));
    assert_eq!(
        serde_json::to_value(found).expect("json")["role"],
        "unclassified"
    );
    drop(rogue);
}
