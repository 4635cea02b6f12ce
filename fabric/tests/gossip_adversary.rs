//! A peer sending forged, stale, oversized or garbage data: refused, counted,
//! rate-limited, banned, and unable to evict good records or to cost others
//! more than its budget.

use fabric::gossip::sim::{sim_record, SimAdmission, SERVICE_RECORD_KIND, SIM_EPOCH_MS};
use fabric::gossip::wire::{decode, encode, Message, WireError, MID_COUNT};
use fabric::gossip::{Envelope, Gossip, GossipConfig, RecordKey, RejectReason};
use fabric::topology::NodeId;
use proptest::prelude::*;

const SECRET: [u8; 32] = [7; 32];
const ATTACKER_SECRET: [u8; 32] = [66; 32];
const DAY_MS: u64 = 86_400_000;

fn victim() -> Gossip<SimAdmission> {
    Gossip::new(
        NodeId([1; 32]),
        GossipConfig::default(),
        1,
        SimAdmission::new(SECRET),
    )
}

fn good(name: &str, generation: u64) -> Envelope {
    sim_record(
        &SECRET,
        &RecordKey::new(SERVICE_RECORD_KIND, name),
        generation,
        SIM_EPOCH_MS + DAY_MS,
        &[1; 100],
    )
}

fn rumor(envelopes: Vec<Envelope>) -> Vec<u8> {
    encode(&Message::Rumor { envelopes }).expect("encodes")
}

#[test]
fn forged_stale_oversized_and_mislabelled_records_are_refused_and_counted() {
    let mut v = victim();
    let attacker = NodeId([9; 32]);
    let now = SIM_EPOCH_MS;
    let held = good("control-api", 5);
    v.insert_local(held.clone(), now).expect("good record");
    let key = held.key.clone();

    let forged = sim_record(&ATTACKER_SECRET, &key, 6, now + DAY_MS, &[2; 100]);
    let stale = good("control-api", 4);
    let oversized = Envelope::new(key.clone(), 7, vec![0; 9 * 1024]);
    let mut bad_digest = good("control-api", 8);
    bad_digest.digest = [0; 32];
    let mut mislabelled = good("update-store", 9);
    mislabelled.key = key.clone();
    let expired = sim_record(&SECRET, &key, 10, now - 1, &[3; 10]);
    // Validly signed, same generation as held, different content.
    let conflicting = sim_record(&SECRET, &key, 5, now + DAY_MS, &[9; 100]);
    assert_ne!(conflicting.digest, held.digest);

    let batch = vec![
        forged,
        stale,
        oversized,
        bad_digest,
        mislabelled,
        expired,
        conflicting,
    ];
    let out = v.handle_datagram(attacker, &rumor(batch), now);
    assert!(out.accepted.is_empty());
    assert_eq!(v.get(&key), Some(&held), "good record not evicted");

    let s = v.stats();
    for reason in [
        RejectReason::Forged,
        RejectReason::Stale,
        RejectReason::Oversized,
        RejectReason::DigestMismatch,
        RejectReason::KeyMismatch,
        RejectReason::Expired,
        RejectReason::Conflict,
    ] {
        assert_eq!(s.rejected(reason), 1, "{}", reason.label());
    }
    assert_eq!(s.accepted, 1);
}

#[test]
fn flooding_peer_is_rate_limited_banned_and_costs_a_bounded_amount_per_round() {
    let cfg = GossipConfig::default();
    let mut v = victim();
    let attacker = NodeId([9; 32]);
    // Sends only well-formed sync openers: never struck, only rate-limited.
    let spammer = NodeId([8; 32]);
    let honest = NodeId([2; 32]);
    let peers = [attacker, spammer, honest];
    let held = good("update-store", 3);
    v.insert_local(held.clone(), SIM_EPOCH_MS)
        .expect("good record");

    // Each flood datagram: ~40 KiB of forged records for the held key, newer
    // generations so the cheap stale check cannot short-circuit them.
    let forged: Vec<Envelope> = (0..120)
        .map(|i| {
            sim_record(
                &ATTACKER_SECRET,
                &held.key,
                100 + i,
                SIM_EPOCH_MS + DAY_MS,
                &[0; 250],
            )
        })
        .collect();
    let flood = rumor(forged);
    // And sync openers with random mids, to try to amplify responses.
    let opener = encode(&Message::SyncMids {
        root: 1,
        mids: Box::new([0xDEAD; MID_COUNT]),
    })
    .expect("encodes");

    let mut banned_at = None;
    for round in 0..30u64 {
        let now = SIM_EPOCH_MS + round * cfg.round_ms;
        let before = v.stats().clone();
        let calls_before = v.admission().calls;
        let _ = v.tick(now, &peers);
        let mut sent_to_attacker = 0;
        let mut sent_to_spammer = 0;
        let mut from_attacker = 0;
        for k in 0..50 {
            let t = now + k;
            let b = v.stats().bytes_in;
            for o in v.handle_datagram(attacker, &flood, t).outgoing {
                sent_to_attacker += o.payload.len();
            }
            from_attacker += v.stats().bytes_in - b;
            for _ in 0..10 {
                for o in v.handle_datagram(spammer, &opener, t).outgoing {
                    sent_to_spammer += o.payload.len();
                }
            }
        }
        let s = v.stats();
        let from_spammer = s.bytes_in - before.bytes_in - from_attacker;
        // Decoded bytes from each peer per round: at most burst + refill.
        let cap = cfg.peer_in_burst_bytes + cfg.peer_in_bytes_per_round;
        assert!(
            from_attacker <= cap,
            "round {round}: {from_attacker} bytes from attacker"
        );
        assert!(
            from_spammer <= cap,
            "round {round}: {from_spammer} bytes from spammer"
        );
        assert!(
            sent_to_spammer <= cfg.peer_round_budget_bytes,
            "round {round}: sent {sent_to_spammer}"
        );
        // Admission work per round is capped.
        let calls = v.admission().calls - calls_before;
        assert!(
            calls <= u64::from(cfg.peer_admissions_per_round),
            "round {round}: {calls} admissions"
        );
        // Replies to the attacker stay within the per-peer send budget.
        assert!(
            sent_to_attacker <= cfg.peer_round_budget_bytes,
            "round {round}: sent {sent_to_attacker}"
        );
        if banned_at.is_none() && v.is_banned(&attacker, now + 50) {
            banned_at = Some(round);
        }
    }
    let s = v.stats();
    assert!(banned_at.is_some_and(|r| r <= 1), "banned at {banned_at:?}");
    assert!(s.rate_limited_msgs > 0);
    assert!(s.banned_drops > 0);
    assert!(s.rejected(RejectReason::Forged) > 0);
    assert_eq!(s.accepted, 1, "nothing from the attacker was accepted");
    assert_eq!(v.get(&held.key), Some(&held));

    // An honest peer is still served while the attacker is banned.
    let newer = good("update-store", 4);
    let now = SIM_EPOCH_MS + 31 * cfg.round_ms;
    let out = v.handle_datagram(honest, &rumor(vec![newer.clone()]), now);
    assert_eq!(out.accepted.len(), 1);
    assert_eq!(v.get(&held.key), Some(&newer));
}

#[test]
fn garbage_and_truncated_datagrams_are_decode_errors_and_accept_nothing() {
    let mut v = victim();
    let peer = NodeId([3; 32]);
    let valid = rumor(vec![good("a", 1)]);
    let mut n = 0;
    for cut in [0, 1, 2, 5, valid.len() / 2, valid.len() - 1] {
        assert!(decode(&valid[..cut]).is_err());
        let _ = v.handle_datagram(peer, &valid[..cut], SIM_EPOCH_MS);
        n += 1;
    }
    assert!(matches!(
        decode(&[1, 42, 0]),
        Err(WireError::UnknownType(42))
    ));
    let _ = v.handle_datagram(peer, &[0xFF; 100], SIM_EPOCH_MS);
    n += 1;
    assert_eq!(v.stats().decode_errors, n);
    assert!(v.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn decode_never_panics_on_corrupted_valid_messages(
        flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..6),
        cut in 0usize..400,
    ) {
        let mut bytes = rumor(vec![good("svc", 2), good("other", 3)]);
        for (i, b) in flips {
            let len = bytes.len();
            bytes[i % len] = b;
        }
        bytes.truncate(cut.max(1));
        let _ = decode(&bytes);
    }
}
