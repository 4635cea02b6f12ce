//! A malicious peer with a valid node key (but no control role) floods a live
//! fleet with forged, expired and rolled-back records over real QUIC.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fabric::frame::write_frame;
use fabric::gossip::{self, wire, RecordKey};
use fabric::identity::NodeIdentity;
use fabric::path::PeerInfo;
use fabric::topology::NodeId;
use fabric::transport::{Transport, TransportConfig};
use fabric_compose::fleet::{synthetic_nodes, FleetOptions, LocalFleet};
use fabric_node_agent::membership::{encode_hello, MAX_HELLO_BYTES};
use fabric_node_agent::registry::RegistryStatus;
use fabric_schemas::kinds::{ServiceRecordSpec, Spec};
use fabric_schemas::time::now_unix;
use fabric_schemas::{Envelope, Record, Scope};
use tokio::io::AsyncWriteExt;

fn gossip_env(bytes: Vec<u8>) -> gossip::Envelope {
    let e = Envelope::decode(&bytes).expect("well-formed");
    let key = RecordKey::new(e.record.kind.code(), e.record.name.clone());
    gossip::Envelope::new(key, e.record.generation, bytes)
}

async fn wait_all(
    fleet: &LocalFleet,
    what: &str,
    ok: impl Fn(&fabric_node_agent::status::NodeStatus) -> bool,
) {
    let start = Instant::now();
    while !fleet.statuses().iter().all(&ok) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: timed out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_forged_expired_and_rolled_back_records_is_refused_everywhere_and_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fleet = LocalFleet::start(
        &synthetic_nodes(6),
        FleetOptions::new(dir.path().to_path_buf()),
    )
    .await
    .expect("fleet");
    let total = fleet.expected_records();
    wait_all(&fleet, "converged", |s| {
        s.directory_records == total && s.registry.status == RegistryStatus::Active
    })
    .await;

    // The rogue: a fleet member gone bad. Its node record is genuine (so its
    // channels are served), its key has no role in the trust root.
    let rogue_id = NodeIdentity::generate();
    let rogue_key = rogue_id.signing_key().clone();
    let rogue = Transport::bind(
        &rogue_id,
        TransportConfig::new("127.0.0.1:0".parse().expect("addr")),
    )
    .await
    .expect("rogue binds");
    let rogue_node = Spec::FabricNode(fabric_schemas::kinds::FabricNodeSpec {
        area: "rogue".into(),
        site_id: "rogue-site".into(),
        locality_group: "rogue-lan".into(),
        nat_group: "rogue-nat".into(),
        node_id: Some(rogue_id.node_id().to_string()),
        roles: vec![],
        endpoints: vec![fabric_schemas::kinds::EndpointSpec {
            address: rogue.local_addr().expect("addr").to_string(),
            scope: fabric_schemas::kinds::EndpointScopeSpec::Public,
            locality_group: None,
            nat_group: None,
        }],
        critical: false,
        resilience_target: None,
    });
    let rec = fleet.sign(&rogue_node, "rogue-1", 1).expect("sign");
    let seed = fleet.members[0].name.clone();
    fleet
        .handle(&seed)
        .expect("up")
        .inject(rec)
        .await
        .expect("accepted");
    let total = total + 1;
    wait_all(&fleet, "rogue's node record everywhere", |s| {
        s.directory_records == total
    })
    .await;
    let now = now_unix();
    let hijack = Spec::ServiceRecord(ServiceRecordSpec {
        service: "control-api".into(),
        providers: vec!["rogue".into()],
    });
    let mut floods: Vec<gossip::Envelope> = Vec::new();
    for i in 0..40u64 {
        // Forged: signed by the rogue's own key, claiming a newer generation.
        let rec = Record::new(
            &hijack,
            "control-api",
            u64::MAX - i,
            now,
            now + 3600,
            Scope::any(),
        )
        .expect("record");
        floods.push(gossip_env(Envelope::sign(rec, &[&rogue_key]).encode()));
        // Expired: genuinely control-signed, but dead.
        let rec = Record::new(
            &hijack,
            &format!("old-{i}"),
            1,
            now - 7200,
            now - 3600,
            Scope::any(),
        )
        .expect("record");
        floods.push(gossip_env(
            Envelope::sign(rec, &[fleet.control_key()]).encode(),
        ));
        // Rolled back: control-signed, older than what every node holds.
        let rec = Record::new(&hijack, "control-api", 1 + i, now, now + 3600, Scope::any())
            .expect("record");
        floods.push(gossip_env(
            Envelope::sign(rec, &[fleet.control_key()]).encode(),
        ));
    }
    let msg = wire::encode(&wire::Message::Rumor { envelopes: floods }).expect("fits one message");

    let targets: Vec<(String, NodeId, SocketAddr)> = fleet.members[1..3]
        .iter()
        .map(|m| (m.name.clone(), m.node_id, m.addr))
        .collect();
    let before: Vec<u64> = targets
        .iter()
        .map(|(n, _, _)| {
            fleet
                .handle(n)
                .expect("up")
                .status()
                .rejections
                .values()
                .sum()
        })
        .collect();
    for (_, id, addr) in &targets {
        rogue.set_peer(*id, PeerInfo::public(*addr));
    }
    let flood_started = Instant::now();
    let mut sent = 0u64;
    while flood_started.elapsed() < Duration::from_secs(3) && sent < 600 {
        for (_, id, _) in &targets {
            if let Ok(mut ch) = rogue.open(*id, "gossip").await {
                // A member: its hello needs no proof, the node knows its key.
                let hello = encode_hello(None);
                if write_frame(&mut ch, &hello, MAX_HELLO_BYTES).await.is_ok()
                    && write_frame(&mut ch, &msg, wire::MAX_MESSAGE_BYTES)
                        .await
                        .is_ok()
                {
                    sent += 1;
                }
                let _ = ch.shutdown().await;
            }
        }
    }
    let flood_secs = flood_started.elapsed().as_secs_f64();
    assert!(
        sent > 20,
        "the flood must actually reach the targets (sent {sent})"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Nothing the rogue sent is accepted anywhere, and the real record stands.
    for s in fleet.statuses() {
        assert_eq!(
            s.directory_records, total,
            "{} holds a rogue record",
            s.name
        );
        let cp = s
            .registry
            .resolved_core_services
            .get("control-api")
            .cloned()
            .unwrap_or_default();
        assert!(
            !cp.contains(&"rogue".to_owned()),
            "{} resolves the rogue",
            s.name
        );
        assert_eq!(s.registry.status, RegistryStatus::Active, "{}", s.name);
    }
    let cfg = fabric::gossip::GossipConfig::default();
    let rounds = (flood_secs + 2.5) / 0.25 + 2.0;
    for ((name, _, _), before) in targets.iter().zip(before) {
        let st = fleet.handle(name).expect("up").status();
        for reason in ["unknown_signer", "expired"] {
            assert!(
                st.rejections.get(reason).copied().unwrap_or(0) > 0,
                "{name}: no {reason} counted: {:?}; gossip {:?}; refused channels {}",
                st.rejections,
                st.gossip_rejections,
                st.refused_channels
            );
        }
        // Rollbacks are refused by the gossip core's generation check before any
        // signature work, and counted there.
        assert!(
            st.gossip_rejections.get("stale").copied().unwrap_or(0) > 0,
            "{name}: no rollback counted: {:?}",
            st.gossip_rejections
        );
        // The budget: admission work spent on the rogue is capped per round,
        // however much it sends (sent × 120 envelopes were offered).
        let spent = st.rejections.values().sum::<u64>() - before;
        let cap = (cfg.peer_admissions_per_round as f64 * rounds) as u64;
        let offered = sent * 120;
        assert!(
            spent <= cap,
            "{name}: {spent} admissions for the rogue exceed the cap {cap}"
        );
        assert!(
            spent < offered,
            "{name}: every one of {offered} offered records was checked"
        );
    }

    // The fleet still works: a legitimate change spreads after the flood.
    let extra = Spec::ServiceRecord(ServiceRecordSpec {
        service: "extra".into(),
        providers: vec![fleet.members[0].name.clone()],
    });
    let rec = fleet.sign(&extra, "extra", 1).expect("sign");
    fleet
        .handle(&fleet.members[4].name)
        .expect("up")
        .inject(rec)
        .await
        .expect("accepted");
    wait_all(&fleet, "legit record spreads after the flood", |s| {
        s.directory_records == total + 1
    })
    .await;
    rogue.shutdown().await;
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_outside_the_directory_is_turned_away_before_any_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fleet = LocalFleet::start(
        &synthetic_nodes(3),
        FleetOptions::new(dir.path().to_path_buf()),
    )
    .await
    .expect("fleet");
    let total = fleet.expected_records();
    wait_all(&fleet, "converged", |s| s.directory_records == total).await;
    let stranger_id = NodeIdentity::generate();
    let stranger = Transport::bind(
        &stranger_id,
        TransportConfig::new("127.0.0.1:0".parse().expect("addr")),
    )
    .await
    .expect("binds");
    let target = &fleet.members[1];
    stranger.set_peer(target.node_id, PeerInfo::public(target.addr));
    let now = now_unix();
    let spec = Spec::ServiceRecord(ServiceRecordSpec {
        service: "x".into(),
        providers: vec![],
    });
    let rec = Record::new(&spec, "x", 1, now, now + 60, Scope::any()).expect("record");
    let junk = gossip_env(Envelope::sign(rec, &[stranger_id.signing_key()]).encode());
    let msg = wire::encode(&wire::Message::Rumor {
        envelopes: vec![junk],
    })
    .expect("encode");
    for _ in 0..20 {
        if let Ok(mut ch) = stranger.open(target.node_id, "gossip").await {
            let _ = write_frame(&mut ch, &msg, wire::MAX_MESSAGE_BYTES).await;
            let _ = ch.shutdown().await;
        }
    }
    let h = fleet.handle(&target.name).expect("up");
    let start = Instant::now();
    while h.status().refused_channels < 20 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "refusals not counted: {}",
            h.status().refused_channels
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = h.status();
    assert!(
        st.rejections.is_empty(),
        "a stranger's records reached admission: {:?}",
        st.rejections
    );
    assert_eq!(st.directory_records, total);
    stranger.shutdown().await;
    fleet.stop_all().await;
}
