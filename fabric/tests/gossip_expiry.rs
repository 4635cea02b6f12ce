//! Records that expire leave the directory: the core drops them on the tick
//! that sees their expiry, never offers them in between, and nodes that hold
//! them and nodes that never did (or already dropped them) agree again, back
//! at the idle cost of one 522-byte `SyncMids` per exchange.

use fabric::gossip::sim::{sim_record, SimAdmission, SERVICE_RECORD_KIND, SIM_EPOCH_MS};
use fabric::gossip::wire::{decode, encode, Message};
use fabric::gossip::{
    Admission, AdmittedRecord, Envelope, Gossip, GossipConfig, Outgoing, RecordKey, RejectReason,
    Snapshot,
};
use fabric::topology::NodeId;
use std::sync::Arc;

const SECRET: [u8; 32] = [7; 32];
const DAY_MS: u64 = 86_400_000;
/// `SyncMids`: header (2) + root (8) + 64 mids (512).
const IDLE_EXCHANGE_BYTES: usize = 522;

fn node(n: u8) -> Gossip<SimAdmission> {
    Gossip::new(
        NodeId([n; 32]),
        GossipConfig::default(),
        u64::from(n),
        SimAdmission::new(SECRET),
    )
}

fn rec(name: &str, generation: u64, expires_ms: u64) -> Envelope {
    sim_record(
        &SECRET,
        &RecordKey::new(SERVICE_RECORD_KIND, name),
        generation,
        expires_ms,
        &[1; 100],
    )
}

/// Delivers `first` (sent by node `from`) and every reply it causes, in
/// order, until the exchange goes quiet. Returns every payload sent.
fn pump(
    nodes: &mut [&mut Gossip<SimAdmission>],
    from: usize,
    first: Vec<Outgoing>,
    now: u64,
) -> Vec<Vec<u8>> {
    let mut queue: Vec<(usize, Outgoing)> = first.into_iter().map(|o| (from, o)).collect();
    let mut sent = Vec::new();
    while !queue.is_empty() {
        let (src, o) = queue.remove(0);
        sent.push(o.payload.clone());
        let Some(dst) = nodes.iter().position(|n| n.id() == o.to) else {
            continue;
        };
        let src_id = nodes[src].id();
        let out = nodes[dst].handle_datagram(src_id, &o.payload, now);
        queue.extend(out.outgoing.into_iter().map(|r| (dst, r)));
    }
    sent
}

/// Whether a payload carries `key`'s record (Records, Rumor) or lists it
/// (SyncEntries): an expired record must appear in neither.
fn mentions(payload: &[u8], key: &RecordKey) -> bool {
    let kh = key.hash();
    match decode(payload).expect("the core only sends valid messages") {
        Message::Records { envelopes, .. } | Message::Rumor { envelopes } => {
            envelopes.iter().any(|e| &e.key == key)
        }
        Message::SyncEntries { leaves } => {
            leaves.iter().any(|l| l.entries.iter().any(|e| e.key == kh))
        }
        _ => false,
    }
}

/// Ticks both nodes round after round (each exchange run to completion)
/// until neither has a rumor left, so the next round measures the idle cost.
fn settle(a: &mut Gossip<SimAdmission>, b: &mut Gossip<SimAdmission>, mut now: u64) -> u64 {
    for _ in 0..20 {
        if a.hot_len() == 0 && b.hot_len() == 0 {
            return now;
        }
        now += 1000;
        let (ida, idb) = (a.id(), b.id());
        let out = a.tick(now, &[idb]);
        pump(&mut [&mut *a, &mut *b], 0, out, now);
        let out = b.tick(now, &[ida]);
        pump(&mut [&mut *a, &mut *b], 1, out, now);
    }
    panic!("rumors did not cool");
}

#[test]
fn expired_record_is_dropped_and_the_exchange_is_idle_again() {
    let t0 = SIM_EPOCH_MS;
    let mut a = node(1);
    let mut b = node(2);
    let (ida, idb) = (a.id(), b.id());
    let common = rec("control-api", 1, t0 + DAY_MS);
    a.insert_local(common.clone(), t0).expect("fresh");
    b.insert_local(common, t0).expect("fresh");
    // Only A holds x (B joined after dropping it, say); it expires at t0+2.5s.
    let x = rec("update-store", 1, t0 + 2_500);
    a.insert_local(x.clone(), t0).expect("fresh");
    assert_ne!(a.root(), b.root());

    // After the expiry, before A's next tick: B opens an exchange. A still
    // holds x (no sweep yet) but must not list or send it.
    let t1 = t0 + 3_000;
    let out = b.tick(t1, &[ida]);
    let sent = pump(&mut [&mut a, &mut b], 1, out, t1);
    assert!(sent.len() >= 3, "roots differed, so the exchange narrowed");
    assert!(!sent.iter().any(|p| mentions(p, &x.key)), "x never sent");
    assert_eq!(b.get(&x.key), None);
    assert_eq!(
        b.stats().rejected(RejectReason::Expired),
        0,
        "never offered"
    );

    // A's tick sweeps it, and from then on the two agree.
    let out = a.tick(t1, &[idb]);
    assert!(
        !out.iter().any(|o| mentions(&o.payload, &x.key)),
        "no rumor"
    );
    assert_eq!(a.stats().expired, 1);
    assert_eq!(a.get(&x.key), None);
    assert_eq!(a.len(), 1);
    assert_eq!(a.root(), b.root(), "summary roots converge after the sweep");
    pump(&mut [&mut a, &mut b], 0, out, t1);

    let now = settle(&mut a, &mut b, t1);
    for (from, to) in [(0usize, 1usize), (1, 0)] {
        let now = now + 1000;
        let mut pair = [&mut a, &mut b];
        let in_sync_before = pair[to].stats().exchanges_in_sync;
        let to_id = pair[to].id();
        let out = pair[from].tick(now, &[to_id]);
        let sent = pump(&mut pair, from, out, now);
        let bytes: usize = sent.iter().map(Vec::len).sum();
        assert_eq!(sent.len(), 1, "one SyncMids, no reply");
        assert_eq!(
            bytes, IDLE_EXCHANGE_BYTES,
            "in-sync exchange costs the idle size"
        );
        assert_eq!(pair[to].stats().exchanges_in_sync, in_sync_before + 1);
    }
}

#[test]
fn every_holder_drops_the_record_and_matches_a_node_that_never_had_it() {
    let t0 = SIM_EPOCH_MS;
    let mut a = node(1);
    let mut b = node(2);
    let (ida, idb) = (a.id(), b.id());
    let common = rec("control-api", 1, t0 + DAY_MS);
    let x = rec("update-store", 1, t0 + 5_500);
    a.insert_local(common.clone(), t0).expect("fresh");
    a.insert_local(x.clone(), t0).expect("fresh");
    // Before the expiry, x spreads to B.
    let out = a.tick(t0 + 1000, &[idb]);
    pump(&mut [&mut a, &mut b], 0, out, t0 + 1000);
    assert_eq!(b.generation(&x.key), Some(1));
    assert_eq!(a.root(), b.root());

    // A restarted node restores both from its cache, with admission's expiry.
    let restored = Snapshot::from_admitted([
        (common.clone(), Some(t0 + DAY_MS)),
        (x.clone(), Some(t0 + 5_500)),
    ]);
    let mut c = Gossip::with_snapshot(
        NodeId([3; 32]),
        GossipConfig::default(),
        3,
        SimAdmission::new(SECRET),
        Arc::new(restored),
    );
    assert_eq!(c.root(), a.root());

    // The reference: a node that only ever held `common`.
    let mut never = node(4);
    never.insert_local(common, t0).expect("fresh");

    let t1 = t0 + 6_000;
    // A sweeps first; B, still holding x until its own tick, answers A's
    // exchange but must not hand x back.
    let out = a.tick(t1, &[idb]);
    let sent = pump(&mut [&mut a, &mut b], 0, out, t1);
    assert!(!sent.iter().any(|p| mentions(p, &x.key)), "x never sent");
    assert_eq!(a.get(&x.key), None);
    b.tick(t1 + 300, &[ida]);
    c.tick(t1, &[]);
    for (n, g) in [("a", &a), ("b", &b), ("c", &c)] {
        assert_eq!(g.get(&x.key), None, "{n} dropped x");
        assert_eq!(g.len(), 1, "{n}");
        assert_eq!(g.root(), never.root(), "{n}: same tree as never inserted");
        assert_eq!(g.stats().expired, 1, "{n}");
    }
}

#[test]
fn want_and_rumor_repair_never_hand_out_an_expired_record() {
    let t0 = SIM_EPOCH_MS;
    let mut a = node(1);
    let peer = NodeId([9; 32]);
    let x2 = rec("update-store", 2, t0 + 2_500);
    a.insert_local(x2.clone(), t0).expect("fresh");
    let t1 = t0 + 3_000;

    // A want for the key, between the expiry and A's next tick.
    let want = encode(&Message::Records {
        envelopes: Vec::new(),
        want: vec![x2.key.hash()],
    })
    .expect("encodes");
    let out = a.handle_datagram(peer, &want, t1);
    assert!(out.outgoing.is_empty(), "nothing to hand out");

    // A rumor of an older generation normally gets the newer one back.
    let x1 = rec("update-store", 1, t0 + DAY_MS);
    let rumor = encode(&Message::Rumor {
        envelopes: vec![x1],
    })
    .expect("encodes");
    let out = a.handle_datagram(peer, &rumor, t1);
    assert!(!out.outgoing.iter().any(|o| mentions(&o.payload, &x2.key)));
}

#[test]
fn a_swept_record_returns_only_as_a_newer_admitted_generation() {
    let t0 = SIM_EPOCH_MS;
    let mut a = node(1);
    let peer = NodeId([9; 32]);
    let x1 = rec("update-store", 1, t0 + 2_500);
    a.insert_local(x1.clone(), t0).expect("fresh");
    let t1 = t0 + 3_000;
    a.tick(t1, &[]);
    assert_eq!(a.len(), 0);
    assert_eq!(a.root(), 0, "empty tree");

    // The same record again: admission refuses it (no strike for that).
    let rumor = |e: Envelope| encode(&Message::Rumor { envelopes: vec![e] }).expect("encodes");
    let out = a.handle_datagram(peer, &rumor(x1.clone()), t1);
    assert!(out.accepted.is_empty());
    assert_eq!(a.stats().rejected(RejectReason::Expired), 1);
    assert_eq!(a.len(), 0);
    assert!(!a.is_banned(&peer, t1));

    // A re-issue (newer generation, re-signed, fresh expiry) enters as new.
    let x2 = rec("update-store", 2, t1 + DAY_MS);
    let out = a.handle_datagram(peer, &rumor(x2.clone()), t1);
    assert_eq!(out.accepted.len(), 1);
    assert_eq!(a.get(&x2.key), Some(&x2));
    let mut fresh = node(2);
    fresh.insert_local(x2, t1).expect("fresh");
    assert_eq!(a.root(), fresh.root());
}

/// Admits everything but reports an expiry at `now_ms`: what a whole-second
/// admission clock looks like in the last millisecond of a record's life.
struct CoarseClock;

impl Admission for CoarseClock {
    fn admit(
        &mut self,
        _bytes: &[u8],
        _held: Option<(u64, [u8; 32])>,
        now_ms: u64,
    ) -> Result<AdmittedRecord, RejectReason> {
        Ok(AdmittedRecord {
            key: RecordKey::new(SERVICE_RECORD_KIND, "update-store"),
            generation: 1,
            expires_at_ms: Some(now_ms),
        })
    }
}

#[test]
fn a_record_admitted_already_expired_is_not_stored() {
    let mut g = Gossip::new(NodeId([1; 32]), GossipConfig::default(), 1, CoarseClock);
    let e = rec("update-store", 1, SIM_EPOCH_MS + DAY_MS);
    assert_eq!(g.insert_local(e, SIM_EPOCH_MS), Err(RejectReason::Expired));
    assert_eq!((g.len(), g.root()), (0, 0));
}

#[test]
fn records_that_never_expire_are_never_swept() {
    let e = rec("control-api", 1, SIM_EPOCH_MS + DAY_MS);
    let mut g = Gossip::with_snapshot(
        NodeId([1; 32]),
        GossipConfig::default(),
        1,
        SimAdmission::new(SECRET),
        Arc::new(Snapshot::from_envelopes([e.clone()])),
    );
    g.tick(u64::MAX, &[]);
    assert_eq!(g.get(&e.key), Some(&e));
    assert_eq!(g.stats().expired, 0);
}
