//! Membership is proved at the door, not looked up.
//!
//! Every `gossip` and `probe` channel starts with a hello frame from the
//! opener: a version byte and the opener's own control-signed `FabricNode`
//! envelope (or nothing, while the opener does not hold its record yet).
//! The receiver serves a peer it already knows (its directory or its
//! bootstrap list) at once. For anyone else the hello must prove membership:
//! the envelope decodes, is a `FabricNode` record, names the connection's
//! verified NodeId, and then passes `accept` against the receiver's trust
//! root and high-water marks (in the node core, which also keeps the record:
//! the peer is known from then on and costs nothing more). That works with
//! an empty directory, which is how a new or wiped node is let in by the
//! members pushing to it.
//!
//! A refused peer is cooled down for [`REFUSAL_COOLDOWN_MS`]: its channels
//! are dropped before anything is read, so the work one stranger can cause
//! is one bounded frame and at most one signature check per cooldown. The
//! checks here are the cheap, pure ones; the signature check is
//! `NodeCore::admit_proof`.

use std::collections::{BTreeMap, HashMap};

use fabric::topology::NodeId;
use fabric_schemas::kinds::Spec;
use fabric_schemas::{Envelope, Kind};
use serde::{Deserialize, Serialize};

/// First byte of a hello frame.
pub const HELLO_VERSION: u8 = 1;
/// Largest hello frame: a node record is about a kilobyte.
pub const MAX_HELLO_BYTES: usize = 16 * 1024;
/// How long a refused peer's channels are dropped unread.
pub const REFUSAL_COOLDOWN_MS: u64 = 10_000;
/// Refused peers remembered at once; beyond it the oldest entry goes.
pub const MAX_COOLING: usize = 4096;
/// Unproven hellos checked at once; more are refused as `busy`.
pub const MAX_UNPROVEN_IN_FLIGHT: usize = 32;

/// Encodes the hello frame carrying `proof` (the opener's own node record).
pub fn encode_hello(proof: Option<&[u8]>) -> Vec<u8> {
    let proof = proof.unwrap_or_default();
    let mut out = Vec::with_capacity(1 + proof.len());
    out.push(HELLO_VERSION);
    out.extend_from_slice(proof);
    out
}

/// Why a peer was refused at the door, as counted in `status.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The hello carried no record.
    NoProof,
    /// The first frame is not a hello (wrong version, unreadable, too big).
    BadHello,
    /// The record does not decode or is not a `FabricNode` record.
    NotANodeRecord,
    /// The record names another node than the connection's key.
    WrongNode,
    /// `accept` refused the record (signer, expiry, rollback, ...).
    Rejected,
    /// The record is valid but older than the one held for that name.
    Stale,
    /// The peer was refused recently and is cooling down.
    Cooling,
    /// Too many unproven hellos in flight.
    Busy,
}

impl Refusal {
    /// Every reason, in report order.
    pub const ALL: [Refusal; 8] = [
        Refusal::NoProof,
        Refusal::BadHello,
        Refusal::NotANodeRecord,
        Refusal::WrongNode,
        Refusal::Rejected,
        Refusal::Stale,
        Refusal::Cooling,
        Refusal::Busy,
    ];

    /// The label in `status.json` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoProof => "no_proof",
            Refusal::BadHello => "bad_hello",
            Refusal::NotANodeRecord => "not_a_node_record",
            Refusal::WrongNode => "wrong_node",
            Refusal::Rejected => "rejected",
            Refusal::Stale => "stale",
            Refusal::Cooling => "cooling",
            Refusal::Busy => "busy",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The proof a hello frame carries, if any.
pub fn decode_hello(frame: &[u8]) -> Result<Option<&[u8]>, Refusal> {
    match frame.split_first() {
        Some((&HELLO_VERSION, [])) => Ok(None),
        Some((&HELLO_VERSION, rest)) => Ok(Some(rest)),
        _ => Err(Refusal::BadHello),
    }
}

/// The cheap checks before any signature: the proof decodes, is a
/// `FabricNode` record and names `peer`.
pub fn precheck(peer: NodeId, proof: &[u8]) -> Result<(), Refusal> {
    let env = Envelope::decode(proof).map_err(|_| Refusal::NotANodeRecord)?;
    if env.record.kind != Kind::FabricNode {
        return Err(Refusal::NotANodeRecord);
    }
    let spec: Spec = env.record.spec().map_err(|_| Refusal::NotANodeRecord)?;
    let Spec::FabricNode(node) = spec else {
        return Err(Refusal::NotANodeRecord);
    };
    let named: Option<NodeId> = node.node_id.as_deref().and_then(|s| s.parse().ok());
    if named != Some(peer) {
        return Err(Refusal::WrongNode);
    }
    Ok(())
}

/// Peers refused recently, with when their cooldown ends (bounded).
#[derive(Debug, Default)]
pub struct Cooling {
    until: HashMap<NodeId, u64>,
}

impl Cooling {
    /// Whether `peer` is cooling down at `now_ms`.
    pub fn is_cooling(&self, peer: &NodeId, now_ms: u64) -> bool {
        self.until.get(peer).is_some_and(|t| now_ms < *t)
    }

    /// Starts `peer`'s cooldown; forgets expired (then the soonest-ending)
    /// entries to stay within [`MAX_COOLING`].
    pub fn refuse(&mut self, peer: NodeId, now_ms: u64) {
        if self.until.len() >= MAX_COOLING {
            self.until.retain(|_, t| *t > now_ms);
        }
        if self.until.len() >= MAX_COOLING {
            if let Some(oldest) = self.until.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                self.until.remove(&oldest);
            }
        }
        self.until.insert(peer, now_ms + REFUSAL_COOLDOWN_MS);
    }

    /// Forgets `peer` (it proved membership or joined the directory).
    pub fn clear(&mut self, peer: &NodeId) {
        self.until.remove(peer);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

/// Refusals by reason, for `status.json`.
pub fn refusal_counts(counts: &[u64; 8]) -> BTreeMap<String, u64> {
    Refusal::ALL
        .iter()
        .zip(counts)
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| (r.as_str().to_owned(), *n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_round_trips_with_and_without_a_proof() {
        assert_eq!(decode_hello(&encode_hello(None)), Ok(None));
        assert_eq!(
            decode_hello(&encode_hello(Some(b"rec"))),
            Ok(Some(&b"rec"[..]))
        );
        assert_eq!(decode_hello(&[]), Err(Refusal::BadHello));
        assert_eq!(decode_hello(&[9, 1, 2]), Err(Refusal::BadHello));
    }

    #[test]
    fn garbage_is_not_a_node_record() {
        assert_eq!(
            precheck(NodeId([1; 32]), b"not an envelope"),
            Err(Refusal::NotANodeRecord)
        );
    }

    #[test]
    fn cooling_ends_and_stays_bounded() {
        let mut c = Cooling::default();
        let a = NodeId([1; 32]);
        c.refuse(a, 1_000);
        assert!(c.is_cooling(&a, 1_000 + REFUSAL_COOLDOWN_MS - 1));
        assert!(!c.is_cooling(&a, 1_000 + REFUSAL_COOLDOWN_MS));
        for i in 0..(MAX_COOLING as u32 + 10) {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            id[31] = 7;
            c.refuse(NodeId(id), 5_000 + u64::from(i));
        }
        assert!(c.len() <= MAX_COOLING);
        c.clear(&a);
        assert!(!c.is_cooling(&a, 1_001));
    }
}
