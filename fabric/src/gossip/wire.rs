//! Versioned, bounded binary encoding of gossip messages.
//!
//! Hand-written rather than serde-derived so that every length is explicit and
//! checked before anything is allocated: a message is at most
//! [`MAX_MESSAGE_BYTES`], integers are big-endian, every count is validated
//! against the bytes that remain, and decoding truncated or garbage input
//! returns a [`WireError`], never panics.
//!
//! ```text
//! message  = version:u8 (=1) type:u8 body
//! envelope = kind:u8 name_len:u8 name generation:u64 digest:[32] len:u32 bytes
//! 1 SyncMids      root:u64 mid_hash:u64 x 64
//! 2 SyncLeaves    n:u8 { mid:u8 leaf_hash:u64 x 64 } x n
//! 3 SyncEntries   n:u16 { leaf:u16 m:u16 { key_hash:[16] generation:u64 } x m } x n
//! 4 Records       n:u16 envelope x n  w:u16 key_hash:[16] x w
//! 5 Rumor         n:u16 envelope x n
//! 6 RumorFeedback n:u16 { key_hash:[16] generation:u64 known:u8 } x n
//! ```

use super::record::{Envelope, KeyHash, RecordKey, MAX_NAME_BYTES};

/// The version byte every message starts with; a decoder refuses any other.
pub const WIRE_VERSION: u8 = 1;
/// Largest encoded message; keeps one message inside one QUIC datagram burst
/// and bounds what a decoder allocates.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Summary tree shape: 64 mid hashes, each over 64 leaf hashes.
pub const MID_COUNT: usize = 64;
/// Leaf hashes under each mid hash.
pub const LEAVES_PER_MID: usize = 64;
/// Leaves in the summary tree (4096); [`KeyHash::leaf`] picks one per key.
pub const LEAF_COUNT: usize = MID_COUNT * LEAVES_PER_MID;

/// Bytes of the message header: version and type.
pub const HEADER_BYTES: usize = 2;
/// Bytes of an encoded envelope besides its name and record bytes: kind,
/// name length, generation, digest and record length.
pub const ENVELOPE_FIXED_BYTES: usize = 1 + 1 + 8 + 32 + 4;
/// Bytes of one encoded [`EntryDigest`].
pub const ENTRY_DIGEST_BYTES: usize = 16 + 8;
/// Bytes of one encoded [`KeyHash`].
pub const KEY_HASH_BYTES: usize = 16;
/// Bytes of one encoded [`RumorAck`].
pub const RUMOR_ACK_BYTES: usize = 16 + 8 + 1;
/// Bytes of one encoded [`MidLeaves`] in a `SyncLeaves` message.
pub const MID_LEAVES_BYTES: usize = 1 + LEAVES_PER_MID * 8;
/// Bytes of a whole `SyncMids` message, header included: the cost of an
/// exchange between nodes already in sync.
pub const SYNC_MIDS_BYTES: usize = HEADER_BYTES + 8 + MID_COUNT * 8;

const T_SYNC_MIDS: u8 = 1;
const T_SYNC_LEAVES: u8 = 2;
const T_SYNC_ENTRIES: u8 = 3;
const T_RECORDS: u8 = 4;
const T_RUMOR: u8 = 5;
const T_RUMOR_FEEDBACK: u8 = 6;

/// (key hash, generation) of one held record: what anti-entropy compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryDigest {
    /// The record's key hash.
    pub key: KeyHash,
    /// The generation held.
    pub generation: u64,
}

/// Leaf hashes under one mid hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MidLeaves {
    /// Index of the mid hash, in `0..MID_COUNT`.
    pub mid: u8,
    /// The leaf hashes under it, in leaf order.
    pub leaves: Box<[u64; LEAVES_PER_MID]>,
}

/// All entry digests a node holds in one leaf (always complete, so the
/// receiver may treat anything absent as missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafEntries {
    /// Index of the leaf, in `0..LEAF_COUNT`.
    pub leaf: u16,
    /// Every record the sender holds in the leaf.
    pub entries: Vec<EntryDigest>,
}

/// Answer to a rumor: whether the receiver already knew that record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RumorAck {
    /// The pushed record's key hash.
    pub key: KeyHash,
    /// The pushed generation.
    pub generation: u64,
    /// The record was not news to the receiver (already held, or refused); the
    /// sender stops pushing a rumor after enough of these.
    pub known: bool,
}

/// One gossip message; the module docs give each one's encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Anti-entropy opener: the sender's root and 64 mid hashes.
    SyncMids {
        /// Hash over all the sender's records; equal roots end the exchange.
        root: u64,
        /// The sender's mid hashes, in mid order.
        mids: Box<[u64; MID_COUNT]>,
    },
    /// Reply: leaf hashes under the mids that differ.
    SyncLeaves {
        /// Leaf hashes of each differing mid (up to `max_mids_per_exchange`).
        mids: Vec<MidLeaves>,
    },
    /// Reply: the sender's entry digests for leaves that differ.
    SyncEntries {
        /// Entry digests of each differing leaf.
        leaves: Vec<LeafEntries>,
    },
    /// Envelopes the receiver lacks (or holds older), plus keys the sender wants.
    Records {
        /// Records the sender has newer, or that were asked for.
        envelopes: Vec<Envelope>,
        /// Keys the sender lacks or holds older and asks to be sent.
        want: Vec<KeyHash>,
    },
    /// Fresh records pushed by the rumor wave.
    Rumor {
        /// The pushed records.
        envelopes: Vec<Envelope>,
    },
    /// Reply to a `Rumor`: which of its records the receiver already knew.
    RumorFeedback {
        /// One answer per pushed record (as many as fit the reply budget).
        acks: Vec<RumorAck>,
    },
}

/// Why a gossip message could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message is larger than [`MAX_MESSAGE_BYTES`].
    #[error("gossip message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The message's size in bytes.
        len: usize,
        /// The limit, [`MAX_MESSAGE_BYTES`].
        max: usize,
    },
    /// The input ends before a field, or a count promises more items than
    /// the remaining bytes can hold.
    #[error("gossip message truncated: needed {needed} bytes at offset {at}")]
    Truncated {
        /// Offset into the message where the missing bytes were needed.
        at: usize,
        /// Bytes needed from there.
        needed: usize,
    },
    /// The version byte is not [`WIRE_VERSION`].
    #[error("unsupported gossip wire version {0} (this node speaks {WIRE_VERSION})")]
    UnsupportedVersion(u8),
    /// The type byte names no message.
    #[error("unknown gossip message type {0}")]
    UnknownType(u8),
    /// A field (named, e.g. `sync_leaves.mid`) is out of range or does not fit
    /// its length prefix.
    #[error("invalid gossip message field {0}")]
    InvalidField(&'static str),
    /// Bytes are left over after a complete message.
    #[error("{0} trailing bytes after gossip message")]
    TrailingBytes(usize),
}

/// Encoded size of one envelope.
pub fn envelope_len(env: &Envelope) -> usize {
    ENVELOPE_FIXED_BYTES + env.key.name.len() + env.bytes.len()
}

impl Message {
    /// Exact size of the encoding, header included, without encoding.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES
            + match self {
                Message::SyncMids { .. } => 8 + MID_COUNT * 8,
                Message::SyncLeaves { mids } => 1 + mids.len() * MID_LEAVES_BYTES,
                Message::SyncEntries { leaves } => {
                    2 + leaves
                        .iter()
                        .map(|l| 4 + l.entries.len() * ENTRY_DIGEST_BYTES)
                        .sum::<usize>()
                }
                Message::Records { envelopes, want } => {
                    2 + envelopes.iter().map(envelope_len).sum::<usize>()
                        + 2
                        + want.len() * KEY_HASH_BYTES
                }
                Message::Rumor { envelopes } => {
                    2 + envelopes.iter().map(envelope_len).sum::<usize>()
                }
                Message::RumorFeedback { acks } => 2 + acks.len() * RUMOR_ACK_BYTES,
            }
    }

    /// Stable label of the message type, as listed in [`super::MESSAGE_TYPES`].
    pub fn type_label(&self) -> &'static str {
        match self {
            Message::SyncMids { .. } => "sync_mids",
            Message::SyncLeaves { .. } => "sync_leaves",
            Message::SyncEntries { .. } => "sync_entries",
            Message::Records { .. } => "records",
            Message::Rumor { .. } => "rumor",
            Message::RumorFeedback { .. } => "rumor_feedback",
        }
    }
}

fn count_u16(n: usize, field: &'static str) -> Result<u16, WireError> {
    u16::try_from(n).map_err(|_| WireError::InvalidField(field))
}

/// Encodes `msg`; fails if it would exceed [`MAX_MESSAGE_BYTES`] or a field
/// does not fit its length prefix.
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    let len = msg.encoded_len();
    if len > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge {
            len,
            max: MAX_MESSAGE_BYTES,
        });
    }
    let mut out = Vec::with_capacity(len);
    out.push(WIRE_VERSION);
    match msg {
        Message::SyncMids { root, mids } => {
            out.push(T_SYNC_MIDS);
            out.extend_from_slice(&root.to_be_bytes());
            for m in mids.iter() {
                out.extend_from_slice(&m.to_be_bytes());
            }
        }
        Message::SyncLeaves { mids } => {
            out.push(T_SYNC_LEAVES);
            if mids.len() > MID_COUNT {
                return Err(WireError::InvalidField("sync_leaves.count"));
            }
            out.push(mids.len() as u8);
            for m in mids {
                if usize::from(m.mid) >= MID_COUNT {
                    return Err(WireError::InvalidField("sync_leaves.mid"));
                }
                out.push(m.mid);
                for l in m.leaves.iter() {
                    out.extend_from_slice(&l.to_be_bytes());
                }
            }
        }
        Message::SyncEntries { leaves } => {
            out.push(T_SYNC_ENTRIES);
            out.extend_from_slice(&count_u16(leaves.len(), "sync_entries.count")?.to_be_bytes());
            for l in leaves {
                out.extend_from_slice(&l.leaf.to_be_bytes());
                out.extend_from_slice(
                    &count_u16(l.entries.len(), "sync_entries.entries")?.to_be_bytes(),
                );
                for e in &l.entries {
                    out.extend_from_slice(&e.key.0);
                    out.extend_from_slice(&e.generation.to_be_bytes());
                }
            }
        }
        Message::Records { envelopes, want } => {
            out.push(T_RECORDS);
            put_envelopes(&mut out, envelopes)?;
            out.extend_from_slice(&count_u16(want.len(), "records.want")?.to_be_bytes());
            for k in want {
                out.extend_from_slice(&k.0);
            }
        }
        Message::Rumor { envelopes } => {
            out.push(T_RUMOR);
            put_envelopes(&mut out, envelopes)?;
        }
        Message::RumorFeedback { acks } => {
            out.push(T_RUMOR_FEEDBACK);
            out.extend_from_slice(&count_u16(acks.len(), "rumor_feedback.count")?.to_be_bytes());
            for a in acks {
                out.extend_from_slice(&a.key.0);
                out.extend_from_slice(&a.generation.to_be_bytes());
                out.push(u8::from(a.known));
            }
        }
    }
    debug_assert_eq!(out.len(), len, "encoded_len out of sync with encode");
    Ok(out)
}

fn put_envelopes(out: &mut Vec<u8>, envelopes: &[Envelope]) -> Result<(), WireError> {
    out.extend_from_slice(&count_u16(envelopes.len(), "envelopes.count")?.to_be_bytes());
    for e in envelopes {
        if e.key.name.len() > MAX_NAME_BYTES {
            return Err(WireError::InvalidField("envelope.name"));
        }
        let len =
            u32::try_from(e.bytes.len()).map_err(|_| WireError::InvalidField("envelope.len"))?;
        out.push(e.key.kind);
        out.push(e.key.name.len() as u8);
        out.extend_from_slice(e.key.name.as_bytes());
        out.extend_from_slice(&e.generation.to_be_bytes());
        out.extend_from_slice(&e.digest);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&e.bytes);
    }
    Ok(())
}

/// Bounds-checked cursor: every read either succeeds or reports where the
/// input ran out.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or(WireError::Truncated {
                at: self.pos,
                needed: n,
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Refuses a count whose minimal encoding cannot fit in what is left, so
    /// a forged count never drives a large allocation.
    fn count(&mut self, n: usize, min_item: usize) -> Result<usize, WireError> {
        let needed = n.saturating_mul(min_item);
        if needed > self.remaining() {
            return Err(WireError::Truncated {
                at: self.pos,
                needed,
            });
        }
        Ok(n)
    }
}

/// Decodes one message. Never panics; any malformed input is a [`WireError`].
pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let mut r = Reader { buf: bytes, pos: 0 };
    let version = r.u8()?;
    if version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    let msg = match r.u8()? {
        T_SYNC_MIDS => {
            let root = r.u64()?;
            let mut mids = Box::new([0u64; MID_COUNT]);
            for m in mids.iter_mut() {
                *m = r.u64()?;
            }
            Message::SyncMids { root, mids }
        }
        T_SYNC_LEAVES => {
            let n = usize::from(r.u8()?);
            if n > MID_COUNT {
                return Err(WireError::InvalidField("sync_leaves.count"));
            }
            let n = r.count(n, MID_LEAVES_BYTES)?;
            let mut mids = Vec::with_capacity(n);
            for _ in 0..n {
                let mid = r.u8()?;
                if usize::from(mid) >= MID_COUNT {
                    return Err(WireError::InvalidField("sync_leaves.mid"));
                }
                let mut leaves = Box::new([0u64; LEAVES_PER_MID]);
                for l in leaves.iter_mut() {
                    *l = r.u64()?;
                }
                mids.push(MidLeaves { mid, leaves });
            }
            Message::SyncLeaves { mids }
        }
        T_SYNC_ENTRIES => {
            let n = usize::from(r.u16()?);
            if n > LEAF_COUNT {
                return Err(WireError::InvalidField("sync_entries.count"));
            }
            let n = r.count(n, 4)?;
            let mut leaves = Vec::with_capacity(n);
            for _ in 0..n {
                let leaf = r.u16()?;
                if usize::from(leaf) >= LEAF_COUNT {
                    return Err(WireError::InvalidField("sync_entries.leaf"));
                }
                let m = r.u16()?;
                let m = r.count(usize::from(m), ENTRY_DIGEST_BYTES)?;
                let mut entries = Vec::with_capacity(m);
                for _ in 0..m {
                    let key = KeyHash(r.array()?);
                    let generation = r.u64()?;
                    entries.push(EntryDigest { key, generation });
                }
                leaves.push(LeafEntries { leaf, entries });
            }
            Message::SyncEntries { leaves }
        }
        T_RECORDS => {
            let envelopes = get_envelopes(&mut r)?;
            let w = usize::from(r.u16()?);
            let w = r.count(w, KEY_HASH_BYTES)?;
            let mut want = Vec::with_capacity(w);
            for _ in 0..w {
                want.push(KeyHash(r.array()?));
            }
            Message::Records { envelopes, want }
        }
        T_RUMOR => Message::Rumor {
            envelopes: get_envelopes(&mut r)?,
        },
        T_RUMOR_FEEDBACK => {
            let n = usize::from(r.u16()?);
            let n = r.count(n, RUMOR_ACK_BYTES)?;
            let mut acks = Vec::with_capacity(n);
            for _ in 0..n {
                let key = KeyHash(r.array()?);
                let generation = r.u64()?;
                let known = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::InvalidField("rumor_feedback.known")),
                };
                acks.push(RumorAck {
                    key,
                    generation,
                    known,
                });
            }
            Message::RumorFeedback { acks }
        }
        other => return Err(WireError::UnknownType(other)),
    };
    if r.remaining() != 0 {
        return Err(WireError::TrailingBytes(r.remaining()));
    }
    Ok(msg)
}

fn get_envelopes(r: &mut Reader<'_>) -> Result<Vec<Envelope>, WireError> {
    let n = usize::from(r.u16()?);
    let n = r.count(n, ENVELOPE_FIXED_BYTES)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = r.u8()?;
        let name_len = usize::from(r.u8()?);
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| WireError::InvalidField("envelope.name"))?
            .to_owned();
        let generation = r.u64()?;
        let digest = r.array::<32>()?;
        let len = usize::try_from(r.u32()?).map_err(|_| WireError::InvalidField("envelope.len"))?;
        let bytes = r.take(len)?.to_vec();
        out.push(Envelope {
            key: RecordKey { kind, name },
            generation,
            digest,
            bytes,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        let env = Envelope::new(RecordKey::new(1, "node-a"), 7, vec![1, 2, 3, 4]);
        let kh = env.key.hash();
        vec![
            Message::SyncMids {
                root: 9,
                mids: Box::new([3u64; MID_COUNT]),
            },
            Message::SyncLeaves {
                mids: vec![MidLeaves {
                    mid: 5,
                    leaves: Box::new([11u64; LEAVES_PER_MID]),
                }],
            },
            Message::SyncEntries {
                leaves: vec![LeafEntries {
                    leaf: kh.leaf(),
                    entries: vec![EntryDigest {
                        key: kh,
                        generation: 7,
                    }],
                }],
            },
            Message::Records {
                envelopes: vec![env.clone()],
                want: vec![kh],
            },
            Message::Rumor {
                envelopes: vec![env],
            },
            Message::RumorFeedback {
                acks: vec![RumorAck {
                    key: kh,
                    generation: 7,
                    known: true,
                }],
            },
        ]
    }

    #[test]
    fn every_message_round_trips_and_encoded_len_is_exact() {
        for msg in samples() {
            let bytes = encode(&msg).expect("encodes");
            assert_eq!(bytes.len(), msg.encoded_len(), "{}", msg.type_label());
            assert_eq!(decode(&bytes).expect("decodes"), msg);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for msg in samples() {
            let bytes = encode(&msg).expect("encodes");
            for cut in 0..bytes.len() {
                assert!(
                    decode(&bytes[..cut]).is_err(),
                    "{} cut at {cut}",
                    msg.type_label()
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_wrong_version_and_unknown_type_are_errors() {
        let mut bytes = encode(&samples()[0]).expect("encodes");
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(WireError::TrailingBytes(1)));
        assert_eq!(decode(&[2, 1]), Err(WireError::UnsupportedVersion(2)));
        assert_eq!(decode(&[1, 99]), Err(WireError::UnknownType(99)));
    }

    #[test]
    fn oversized_messages_are_refused_both_ways() {
        let big = Envelope::new(RecordKey::new(1, "x"), 1, vec![0; MAX_MESSAGE_BYTES]);
        let msg = Message::Rumor {
            envelopes: vec![big],
        };
        assert!(matches!(encode(&msg), Err(WireError::TooLarge { .. })));
        assert!(matches!(
            decode(&vec![1u8; MAX_MESSAGE_BYTES + 1]),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn forged_counts_do_not_allocate_or_panic() {
        // Records claiming 65535 envelopes with 5 bytes of body.
        assert!(decode(&[1, T_RECORDS, 0xFF, 0xFF, 0, 0, 0]).is_err());
        // Envelope claiming 4 GiB of bytes.
        let mut b = vec![1, T_RUMOR, 0, 1, 1, 0];
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&[0; 32]);
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&b), Err(WireError::Truncated { .. })));
    }
}
