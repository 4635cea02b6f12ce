//! What gossip carries: opaque signed envelopes, and the admission trait that
//! decides whether an envelope may enter the local directory.
//!
//! The gossip layer never interprets envelope bytes. It trusts only what
//! [`Admission`] confirms (key and generation) and what it can check itself
//! (the SHA-256 digest of the bytes). Runtime observations (probe results,
//! endpoint health) have no type here on purpose: they are local facts and
//! are never gossiped.

use sha2::{Digest, Sha256};

/// Longest record name the wire format carries (one length byte).
pub const MAX_NAME_BYTES: usize = 255;

/// The key of a directory record: a kind tag and a name (e.g. a node id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey {
    /// Which kind of record (node record, service record, ...); the numbering is
    /// the admission rule's, gossip only keeps kinds apart.
    pub kind: u8,
    /// Names the record within its kind, at most [`MAX_NAME_BYTES`] bytes.
    pub name: String,
}

impl RecordKey {
    /// A key of `kind` named `name`.
    pub fn new(kind: u8, name: impl Into<String>) -> Self {
        RecordKey {
            kind,
            name: name.into(),
        }
    }

    /// This key's [`KeyHash`].
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self)
    }
}

/// A fixed-size stand-in for a [`RecordKey`] in digests and want lists: the
/// first 16 bytes of a domain-separated SHA-256 of the key. Its first 12 bits
/// choose the summary leaf, so keys spread evenly whatever their names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyHash(pub [u8; 16]);

impl KeyHash {
    /// Hashes `key`; stable across versions, since peers compare these.
    pub fn of(key: &RecordKey) -> Self {
        let mut h = Sha256::new();
        h.update(b"fabric/gossip/key/v1\0");
        h.update([key.kind]);
        h.update(key.name.as_bytes());
        let full = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        KeyHash(out)
    }

    /// Summary leaf of this key, in `0..LEAF_COUNT` (4096).
    pub fn leaf(&self) -> u16 {
        u16::from_be_bytes([self.0[0], self.0[1]]) >> 4
    }

    /// Smallest key hash falling in `leaf`; used for range scans.
    pub(crate) fn leaf_start(leaf: u16) -> KeyHash {
        let prefix = (leaf << 4).to_be_bytes();
        let mut out = [0u8; 16];
        out[0] = prefix[0];
        out[1] = prefix[1];
        KeyHash(out)
    }
}

/// A signed record as gossip carries it: header fields claimed by the sender
/// plus the opaque bytes, forwarded byte-for-byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The key the sender claims the record has; admission must confirm it.
    pub key: RecordKey,
    /// The claimed generation: a higher one replaces what is held under the key.
    pub generation: u64,
    /// SHA-256 of `bytes`; checked on receipt before admission is asked.
    pub digest: [u8; 32],
    /// The signed record itself, opaque to gossip.
    pub bytes: Vec<u8>,
}

impl Envelope {
    /// Builds an envelope, computing the digest of `bytes`.
    pub fn new(key: RecordKey, generation: u64, bytes: Vec<u8>) -> Self {
        let digest = digest_of(&bytes);
        Envelope {
            key,
            generation,
            digest,
            bytes,
        }
    }
}

/// SHA-256 of `bytes`: the digest an [`Envelope`] carries.
pub fn digest_of(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What admission vouches for after verifying an envelope's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmittedRecord {
    /// The key read from the verified bytes.
    pub key: RecordKey,
    /// The generation read from the verified bytes.
    pub generation: u64,
    /// When the record stops being valid, in milliseconds since the Unix
    /// epoch; `None` if it never expires. The core drops the record at this
    /// instant (a record is dead once `now_ms >= expires_at_ms`), because
    /// every receiver would refuse it from then on and offering it would
    /// keep summaries apart forever.
    pub expires_at_ms: Option<u64>,
}

/// The caller's acceptance rule. In production this wraps
/// `fabric_schemas::accept` (signature, role, threshold, expiry, rollback,
/// scope); tests and the simulator use a keyed-hash stand-in.
pub trait Admission {
    /// Verifies `bytes`. `held` is the generation and digest this node holds
    /// for the claimed key, for rollback checks. `now_ms` is milliseconds
    /// since the Unix epoch, supplied by the driver (the core reads no clock).
    fn admit(
        &mut self,
        bytes: &[u8],
        held: Option<(u64, [u8; 32])>,
        now_ms: u64,
    ) -> Result<AdmittedRecord, RejectReason>;
}

/// Why an envelope was refused. Counted per reason in [`super::GossipStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
pub enum RejectReason {
    /// The bytes do not parse, or the key name is longer than [`MAX_NAME_BYTES`].
    #[error("malformed: the envelope bytes do not parse")]
    Malformed,
    /// The signature or signer does not verify (admission).
    #[error("forged: signature or signer does not verify")]
    Forged,
    /// The bytes do not hash to the envelope's digest (checked before admission).
    #[error("digest mismatch: bytes do not hash to the claimed digest")]
    DigestMismatch,
    /// The signer lacks the role, threshold or scope for this record (admission).
    #[error("unauthorized: signer lacks the role, threshold or scope")]
    Unauthorized,
    /// Outside its validity window, or it expires at or before `now_ms`.
    #[error("expired or not yet valid")]
    Expired,
    /// An older generation than the one held: a rollback attempt or a late copy.
    #[error("stale: generation is older than the one held (rollback)")]
    Stale,
    /// The held generation again, with different bytes.
    #[error("conflict: same generation as held, different content")]
    Conflict,
    /// Larger than `GossipConfig::max_record_bytes`.
    #[error("oversized: record larger than the configured maximum")]
    Oversized,
    /// Admission read a different key or generation from the bytes than the
    /// envelope header claims.
    #[error("key mismatch: admitted key or generation differs from the claimed header")]
    KeyMismatch,
}

impl RejectReason {
    /// Every reason, in declaration order (the order of the per-reason counters).
    pub const ALL: [RejectReason; 9] = [
        RejectReason::Malformed,
        RejectReason::Forged,
        RejectReason::DigestMismatch,
        RejectReason::Unauthorized,
        RejectReason::Expired,
        RejectReason::Stale,
        RejectReason::Conflict,
        RejectReason::Oversized,
        RejectReason::KeyMismatch,
    ];

    /// Stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::Forged => "forged",
            RejectReason::DigestMismatch => "digest_mismatch",
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::Expired => "expired",
            RejectReason::Stale => "stale",
            RejectReason::Conflict => "conflict",
            RejectReason::Oversized => "oversized",
            RejectReason::KeyMismatch => "key_mismatch",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Strike weight against the sending peer. Stale, expired and conflicting
    /// records also arrive from honest peers that raced an update, so they
    /// weigh little; anything that cannot come from an honest peer weighs more.
    pub(crate) fn strike_weight(self) -> u32 {
        match self {
            // Honest peers keep offering records that expired since they
            // took them; that must never get them banned.
            RejectReason::Expired => 0,
            RejectReason::Stale | RejectReason::Conflict => 1,
            _ => 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_start_is_the_smallest_hash_of_its_leaf() {
        for leaf in [0u16, 1, 255, 4095] {
            let start = KeyHash::leaf_start(leaf);
            assert_eq!(start.leaf(), leaf);
        }
    }

    #[test]
    fn reject_reason_indices_follow_all() {
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
