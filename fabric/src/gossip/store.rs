//! The gossiped directory with an incrementally maintained summary tree.
//!
//! Every entry contributes `h = trunc64(SHA-256(key_hash ‖ generation ‖ digest))`.
//! A leaf hash is the XOR of the `h` of its entries, a mid hash the XOR of its
//! 64 leaves, the root the XOR of everything. XOR makes each hash a set digest
//! that is updated in O(1) on insert/replace (XOR out the old `h`, XOR in the
//! new one), so a node never rehashes its directory, and two nodes compare
//! 10,000 records with a 520-byte message when they agree.
//!
//! Storage is an immutable, shareable [`Snapshot`] (for example the persisted
//! peer cache at start-up) plus an overlay of everything learnt since. The
//! simulator shares one snapshot between 10,000 nodes, which is what makes a
//! full-directory run fit in memory; a production node simply owns its one.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::record::{Envelope, KeyHash};
use super::wire::{LEAF_COUNT, LEAVES_PER_MID, MID_COUNT};

/// One held record.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub envelope: Envelope,
    pub summary: u64,
}

impl Entry {
    pub fn new(key: KeyHash, envelope: Envelope) -> Self {
        let summary = entry_summary(&key, envelope.generation, &envelope.digest);
        Entry { envelope, summary }
    }

    pub fn generation(&self) -> u64 {
        self.envelope.generation
    }
}

fn entry_summary(key: &KeyHash, generation: u64, digest: &[u8; 32]) -> u64 {
    let mut h = Sha256::new();
    h.update(key.0);
    h.update(generation.to_be_bytes());
    h.update(digest);
    let full = h.finalize();
    let mut w = [0u8; 8];
    w.copy_from_slice(&full[..8]);
    u64::from_be_bytes(w)
}

/// An immutable set of already-admitted records, shareable between nodes.
#[derive(Debug)]
pub struct Snapshot {
    /// Sorted by key hash, hence grouped by leaf.
    entries: Vec<(KeyHash, Entry)>,
    /// `entries[leaf_start[l]..leaf_start[l + 1]]` are the entries of leaf `l`.
    leaf_start: Vec<u32>,
    leaves: Vec<u64>,
    mids: [u64; MID_COUNT],
    root: u64,
}

impl Snapshot {
    pub fn empty() -> Self {
        Snapshot::from_envelopes(Vec::new())
    }

    /// Builds a snapshot. The caller vouches that every envelope was admitted
    /// (e.g. it is the persisted peer cache, re-admitted at start-up); for a
    /// key given twice the higher generation is kept.
    pub fn from_envelopes(envelopes: impl IntoIterator<Item = Envelope>) -> Self {
        let mut by_key: BTreeMap<KeyHash, Envelope> = BTreeMap::new();
        for env in envelopes {
            let kh = env.key.hash();
            match by_key.get(&kh) {
                Some(old) if old.generation >= env.generation => {}
                _ => {
                    by_key.insert(kh, env);
                }
            }
        }
        let entries: Vec<(KeyHash, Entry)> = by_key
            .into_iter()
            .map(|(kh, env)| (kh, Entry::new(kh, env)))
            .collect();
        let mut leaves = vec![0u64; LEAF_COUNT];
        let mut counts = vec![0u32; LEAF_COUNT];
        for (kh, e) in &entries {
            let l = usize::from(kh.leaf());
            leaves[l] ^= e.summary;
            counts[l] += 1;
        }
        let mut leaf_start = Vec::with_capacity(LEAF_COUNT + 1);
        let mut acc = 0u32;
        for c in &counts {
            leaf_start.push(acc);
            acc += c;
        }
        leaf_start.push(acc);
        let mut mids = [0u64; MID_COUNT];
        for (l, h) in leaves.iter().enumerate() {
            mids[l / LEAVES_PER_MID] ^= h;
        }
        let root = mids.iter().fold(0, |a, m| a ^ m);
        Snapshot {
            entries,
            leaf_start,
            leaves,
            mids,
            root,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, key: &KeyHash) -> Option<&Entry> {
        self.entries
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| &self.entries[i].1)
    }

    fn leaf_slice(&self, leaf: u16) -> &[(KeyHash, Entry)] {
        let l = usize::from(leaf);
        let (a, b) = (self.leaf_start[l] as usize, self.leaf_start[l + 1] as usize);
        &self.entries[a..b]
    }
}

/// Snapshot plus overlay, with the summary tree kept current.
#[derive(Debug)]
pub(crate) struct Store {
    base: Arc<Snapshot>,
    overlay: BTreeMap<KeyHash, Entry>,
    /// XOR difference between the base leaf hash and the current one.
    leaf_delta: HashMap<u16, u64>,
    mids: [u64; MID_COUNT],
    root: u64,
    len: usize,
}

impl Store {
    pub fn new(base: Arc<Snapshot>) -> Self {
        Store {
            mids: base.mids,
            root: base.root,
            len: base.len(),
            base,
            overlay: BTreeMap::new(),
            leaf_delta: HashMap::new(),
        }
    }

    pub fn get(&self, key: &KeyHash) -> Option<&Entry> {
        self.overlay.get(key).or_else(|| self.base.find(key))
    }

    /// Inserts or replaces; the caller has already decided the entry wins.
    pub fn put(&mut self, key: KeyHash, entry: Entry) {
        let old = self.get(&key).map(|e| e.summary);
        let delta = old.unwrap_or(0) ^ entry.summary;
        if old.is_none() {
            self.len += 1;
        }
        let leaf = key.leaf();
        *self.leaf_delta.entry(leaf).or_insert(0) ^= delta;
        self.mids[usize::from(leaf) / LEAVES_PER_MID] ^= delta;
        self.root ^= delta;
        self.overlay.insert(key, entry);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn root(&self) -> u64 {
        self.root
    }

    pub fn mids(&self) -> &[u64; MID_COUNT] {
        &self.mids
    }

    pub fn leaf_hash(&self, leaf: u16) -> u64 {
        self.base.leaves[usize::from(leaf)] ^ self.leaf_delta.get(&leaf).copied().unwrap_or(0)
    }

    /// Current entries of one leaf, sorted by key hash.
    pub fn leaf_entries(&self, leaf: u16) -> Vec<(KeyHash, &Entry)> {
        let mut out: Vec<(KeyHash, &Entry)> = self
            .base
            .leaf_slice(leaf)
            .iter()
            .map(|(k, e)| (*k, self.overlay.get(k).unwrap_or(e)))
            .collect();
        let lo = Bound::Included(KeyHash::leaf_start(leaf));
        let hi = if usize::from(leaf) + 1 < LEAF_COUNT {
            Bound::Excluded(KeyHash::leaf_start(leaf + 1))
        } else {
            Bound::Unbounded
        };
        let before = out.len();
        for (k, e) in self.overlay.range((lo, hi)) {
            if self.base.find(k).is_none() {
                out.push((*k, e));
            }
        }
        if out.len() != before {
            out.sort_by_key(|e| e.0);
        }
        out
    }

    /// Every held envelope, in key-hash order (for persisting the peer cache).
    pub fn envelopes(&self) -> Vec<Envelope> {
        (0..LEAF_COUNT as u16)
            .flat_map(|l| {
                self.leaf_entries(l)
                    .into_iter()
                    .map(|(_, e)| e.envelope.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::record::RecordKey;

    fn env(name: &str, generation: u64) -> Envelope {
        Envelope::new(
            RecordKey::new(1, name),
            generation,
            name.as_bytes().to_vec(),
        )
    }

    #[test]
    fn summary_depends_only_on_content_not_on_history() {
        let all: Vec<Envelope> = (0..200).map(|i| env(&format!("n{i}"), 1)).collect();
        let snap = Store::new(Arc::new(Snapshot::from_envelopes(all.clone())));

        // Same set reached by a different path: half from a snapshot, half
        // inserted, one replaced by a newer generation and back.
        let mut grown = Store::new(Arc::new(Snapshot::from_envelopes(all[..100].to_vec())));
        for e in all[100..].iter().rev() {
            grown.put(e.key.hash(), Entry::new(e.key.hash(), e.clone()));
        }
        assert_eq!(grown.root(), snap.root());
        assert_eq!(grown.mids(), snap.mids());
        assert_eq!(grown.len(), 200);
        for l in 0..LEAF_COUNT as u16 {
            assert_eq!(grown.leaf_hash(l), snap.leaf_hash(l));
            let a: Vec<_> = grown.leaf_entries(l).iter().map(|(k, _)| *k).collect();
            let b: Vec<_> = snap.leaf_entries(l).iter().map(|(k, _)| *k).collect();
            assert_eq!(a, b);
        }

        let newer = env("n3", 2);
        grown.put(newer.key.hash(), Entry::new(newer.key.hash(), newer));
        assert_ne!(grown.root(), snap.root());
        assert_eq!(grown.len(), 200);
        assert_eq!(
            grown
                .get(&RecordKey::new(1, "n3").hash())
                .map(|e| e.generation()),
            Some(2)
        );
    }
}
