//! The gossiped directory with an incrementally maintained summary tree.
//!
//! Every entry contributes `h = trunc64(SHA-256(key_hash ‖ generation ‖ digest))`.
//! A leaf hash is the XOR of the `h` of its entries, a mid hash the XOR of its
//! 64 leaves, the root the XOR of everything. XOR makes each hash a set digest
//! that is updated in O(1) on insert/replace (XOR out the old `h`, XOR in the
//! new one), so a node never rehashes its directory, and two nodes compare
//! 10,000 records with a 520-byte message when they agree.
//!
//! Removal (a record reaching its expiry) is the same XOR as insertion, so
//! after a sweep the tree is exactly the tree of the records that remain, and
//! two nodes that both dropped an expired record agree again.
//!
//! Storage is an immutable, shareable [`Snapshot`] (for example the persisted
//! peer cache at start-up) plus an overlay of everything learnt since. The
//! simulator shares one snapshot between 10,000 nodes, which is what makes a
//! full-directory run fit in memory; a production node simply owns its one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// From admission; `None` = never expires. Not part of `summary`: it is a
    /// property of the signed bytes, which the digest already covers.
    pub expires_at_ms: Option<u64>,
}

impl Entry {
    pub(crate) fn new(key: KeyHash, envelope: Envelope, expires_at_ms: Option<u64>) -> Self {
        let summary = entry_summary(&key, envelope.generation, &envelope.digest);
        Entry {
            envelope,
            summary,
            expires_at_ms,
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.envelope.generation
    }

    /// Whether the record is still valid at `now_ms`; the same boundary as
    /// admission uses (dead once `now_ms >= expires_at_ms`).
    pub(crate) fn live(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|x| now_ms < x)
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
    /// `(expires_at_ms, index into entries)` for every entry that expires,
    /// soonest first. Kept here, built once, so that thousands of stores
    /// sharing one snapshot (the simulator) each need only a cursor into it.
    by_expiry: Vec<(u64, u32)>,
    /// `entries[leaf_start[l]..leaf_start[l + 1]]` are the entries of leaf `l`.
    leaf_start: Vec<u32>,
    leaves: Vec<u64>,
    mids: [u64; MID_COUNT],
    root: u64,
}

impl Snapshot {
    /// A snapshot with no records (a node starting without a peer cache).
    pub fn empty() -> Self {
        Snapshot::from_envelopes(Vec::new())
    }

    /// Builds a snapshot of records that never expire. Records that do
    /// expire must go through [`Snapshot::from_admitted`], or the core will
    /// keep offering them after every receiver has started refusing them.
    pub fn from_envelopes(envelopes: impl IntoIterator<Item = Envelope>) -> Self {
        Snapshot::from_admitted(envelopes.into_iter().map(|e| (e, None)))
    }

    /// Builds a snapshot from `(envelope, expires_at_ms)` pairs, the expiry
    /// being what admission returned (`AdmittedRecord::expires_at_ms`). The
    /// caller vouches that every envelope was admitted (e.g. it is the
    /// persisted peer cache, re-admitted at start-up); for a key given twice
    /// the higher generation is kept. Records already expired are kept here
    /// and dropped by the first `tick` that sees their expiry.
    pub fn from_admitted(records: impl IntoIterator<Item = (Envelope, Option<u64>)>) -> Self {
        let mut by_key: BTreeMap<KeyHash, (Envelope, Option<u64>)> = BTreeMap::new();
        for (env, expires_at_ms) in records {
            let kh = env.key.hash();
            match by_key.get(&kh) {
                Some((old, _)) if old.generation >= env.generation => {}
                _ => {
                    by_key.insert(kh, (env, expires_at_ms));
                }
            }
        }
        let entries: Vec<(KeyHash, Entry)> = by_key
            .into_iter()
            .map(|(kh, (env, x))| (kh, Entry::new(kh, env, x)))
            .collect();
        let mut by_expiry: Vec<(u64, u32)> = entries
            .iter()
            .enumerate()
            .filter_map(|(i, (_, e))| Some((e.expires_at_ms?, i as u32)))
            .collect();
        by_expiry.sort_unstable();
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
            by_expiry,
            leaf_start,
            leaves,
            mids,
            root,
        }
    }

    /// Number of records (one per key).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No records.
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
    /// Everything changed since the snapshot. `None` is a tombstone: the
    /// base entry under that key was removed (the base is shared and
    /// immutable, so removal has to be recorded here).
    overlay: BTreeMap<KeyHash, Option<Entry>>,
    /// `(expires_at_ms, key)` of every live overlay entry that expires; kept
    /// in step with `overlay` by `put` and `remove`.
    expiry: BTreeSet<(u64, KeyHash)>,
    /// `base.by_expiry[..base_swept]` have been dealt with by `sweep`.
    base_swept: usize,
    /// XOR difference between the base leaf hash and the current one.
    leaf_delta: HashMap<u16, u64>,
    mids: [u64; MID_COUNT],
    root: u64,
    len: usize,
}

impl Store {
    pub(crate) fn new(base: Arc<Snapshot>) -> Self {
        Store {
            mids: base.mids,
            root: base.root,
            len: base.len(),
            base,
            overlay: BTreeMap::new(),
            expiry: BTreeSet::new(),
            base_swept: 0,
            leaf_delta: HashMap::new(),
        }
    }

    pub(crate) fn get(&self, key: &KeyHash) -> Option<&Entry> {
        match self.overlay.get(key) {
            Some(slot) => slot.as_ref(),
            None => self.base.find(key),
        }
    }

    /// XORs one entry's summary in or out of its leaf, mid and root. The same
    /// operation serves insert and remove, which is what keeps a removal
    /// exactly undoing the insertion.
    fn toggle(&mut self, leaf: u16, delta: u64) {
        *self.leaf_delta.entry(leaf).or_insert(0) ^= delta;
        self.mids[usize::from(leaf) / LEAVES_PER_MID] ^= delta;
        self.root ^= delta;
    }

    /// Drops `prev`'s slot in the expiry index, if it had one.
    fn unindex(&mut self, key: KeyHash, prev: Option<Option<Entry>>) {
        if let Some(x) = prev.flatten().and_then(|e| e.expires_at_ms) {
            self.expiry.remove(&(x, key));
        }
    }

    /// Inserts or replaces; the caller has already decided the entry wins.
    pub(crate) fn put(&mut self, key: KeyHash, entry: Entry) {
        let old = self.get(&key).map(|e| e.summary);
        if old.is_none() {
            self.len += 1;
        }
        self.toggle(key.leaf(), old.unwrap_or(0) ^ entry.summary);
        let expires_at_ms = entry.expires_at_ms;
        let prev = self.overlay.insert(key, Some(entry));
        // Unindex the replaced overlay record first: its old expiry must not
        // remove the successor when it passes.
        self.unindex(key, prev);
        if let Some(x) = expires_at_ms {
            self.expiry.insert((x, key));
        }
    }

    /// Removes the entry under `key`, if any; the tree afterwards equals the
    /// tree that never held it. `true` if something was removed.
    pub(crate) fn remove(&mut self, key: &KeyHash) -> bool {
        let Some(summary) = self.get(key).map(|e| e.summary) else {
            return false;
        };
        self.len -= 1;
        self.toggle(key.leaf(), summary);
        let prev = if self.base.find(key).is_some() {
            self.overlay.insert(*key, None)
        } else {
            self.overlay.remove(key)
        };
        self.unindex(*key, prev);
        true
    }

    /// Removes every entry whose expiry is at or before `now_ms` and returns
    /// their keys. Costs O(log n) per removed entry and O(1) when nothing is
    /// due, so it can run every round.
    pub(crate) fn sweep(&mut self, now_ms: u64) -> Vec<KeyHash> {
        let mut removed = Vec::new();
        while let Some(&(x, key)) = self.expiry.first() {
            if x > now_ms {
                break;
            }
            // Pop before removing so the loop advances even if the index and
            // the overlay ever disagreed.
            self.expiry.pop_first();
            if self.remove(&key) {
                removed.push(key);
            }
        }
        while let Some(&(x, i)) = self.base.by_expiry.get(self.base_swept) {
            if x > now_ms {
                break;
            }
            self.base_swept += 1;
            let key = self.base.entries[i as usize].0;
            // A newer generation (with its own expiry, indexed above) or an
            // earlier removal owns this key now; the base copy is shadowed.
            if self.overlay.contains_key(&key) {
                continue;
            }
            if self.remove(&key) {
                removed.push(key);
            }
        }
        removed
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn root(&self) -> u64 {
        self.root
    }

    pub(crate) fn mids(&self) -> &[u64; MID_COUNT] {
        &self.mids
    }

    pub(crate) fn leaf_hash(&self, leaf: u16) -> u64 {
        self.base.leaves[usize::from(leaf)] ^ self.leaf_delta.get(&leaf).copied().unwrap_or(0)
    }

    /// Current entries of one leaf, sorted by key hash.
    pub(crate) fn leaf_entries(&self, leaf: u16) -> Vec<(KeyHash, &Entry)> {
        let mut out: Vec<(KeyHash, &Entry)> = self
            .base
            .leaf_slice(leaf)
            .iter()
            .filter_map(|(k, e)| match self.overlay.get(k) {
                Some(slot) => slot.as_ref().map(|o| (*k, o)),
                None => Some((*k, e)),
            })
            .collect();
        let lo = Bound::Included(KeyHash::leaf_start(leaf));
        let hi = if usize::from(leaf) + 1 < LEAF_COUNT {
            Bound::Excluded(KeyHash::leaf_start(leaf + 1))
        } else {
            Bound::Unbounded
        };
        let before = out.len();
        for (k, slot) in self.overlay.range((lo, hi)) {
            if let (Some(e), None) = (slot, self.base.find(k)) {
                out.push((*k, e));
            }
        }
        if out.len() != before {
            out.sort_by_key(|e| e.0);
        }
        out
    }

    /// Every held envelope, in key-hash order (for persisting the peer cache).
    pub(crate) fn envelopes(&self) -> Vec<Envelope> {
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
    use proptest::prelude::*;

    /// Same records, same tree: root, mids, every leaf hash and leaf listing.
    fn assert_same_tree(a: &Store, b: &Store) {
        assert_eq!(a.root(), b.root(), "root");
        assert_eq!(a.mids(), b.mids(), "mids");
        assert_eq!(a.len(), b.len(), "len");
        for l in 0..LEAF_COUNT as u16 {
            assert_eq!(a.leaf_hash(l), b.leaf_hash(l), "leaf {l}");
            let ea: Vec<_> = a
                .leaf_entries(l)
                .iter()
                .map(|(k, e)| (*k, e.generation()))
                .collect();
            let eb: Vec<_> = b
                .leaf_entries(l)
                .iter()
                .map(|(k, e)| (*k, e.generation()))
                .collect();
            assert_eq!(ea, eb, "leaf {l} entries");
        }
    }

    fn put(store: &mut Store, e: &Envelope, expires_at_ms: Option<u64>) {
        let k = e.key.hash();
        store.put(k, Entry::new(k, e.clone(), expires_at_ms));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Removing an entry undoes inserting it exactly, whether the entry
        /// came from the shared snapshot or the overlay, and whether it was
        /// replaced by a newer generation before being removed.
        #[test]
        fn insert_then_remove_equals_never_inserted(
            specs in proptest::collection::btree_map(
                0u32..100_000,
                (any::<bool>(), any::<bool>(), any::<bool>()),
                0..200,
            )
        ) {
            let mut base = Vec::new();
            let mut later = Vec::new();
            let mut gone = Vec::new();
            let mut kept = Vec::new();
            for (n, &(in_base, replaced, removed)) in &specs {
                let name = format!("k{n}");
                let first = env(&name, 1);
                if in_base {
                    base.push(first.clone());
                } else {
                    later.push(first.clone());
                }
                let last = if replaced {
                    let newer = env(&name, 2);
                    later.push(newer.clone());
                    newer
                } else {
                    first
                };
                if removed {
                    gone.push(last.key.hash());
                } else {
                    kept.push(last);
                }
            }
            let mut store = Store::new(Arc::new(Snapshot::from_envelopes(base)));
            for e in &later {
                put(&mut store, e, None);
            }
            for k in &gone {
                prop_assert!(store.remove(k));
                prop_assert!(!store.remove(k), "second removal is a no-op");
            }
            let reference = Store::new(Arc::new(Snapshot::from_envelopes(kept.clone())));
            assert_same_tree(&store, &reference);

            // And the tree built incrementally from nothing agrees too.
            let mut grown = Store::new(Arc::new(Snapshot::empty()));
            for e in &kept {
                put(&mut grown, e, None);
            }
            assert_same_tree(&store, &reference);
            assert_same_tree(&grown, &reference);
        }

        /// A sweep at `t` leaves exactly the records whose current version is
        /// still live at `t`, wherever each version lives.
        #[test]
        fn sweep_keeps_exactly_the_live_records(
            specs in proptest::collection::btree_map(
                0u32..100_000,
                (any::<bool>(), prop::option::of(1u64..40), prop::option::of(prop::option::of(1u64..40))),
                0..200,
            ),
            steps in proptest::collection::vec(0u64..45, 1..4),
        ) {
            let mut base = Vec::new();
            let mut later = Vec::new();
            let mut last = Vec::new();
            for (n, &(in_base, expiry, replacement)) in &specs {
                let name = format!("k{n}");
                let first = env(&name, 1);
                if in_base {
                    base.push((first.clone(), expiry));
                } else {
                    later.push((first.clone(), expiry));
                }
                match replacement {
                    Some(x2) => {
                        let newer = env(&name, 2);
                        later.push((newer.clone(), x2));
                        last.push((newer, x2));
                    }
                    None => last.push((first, expiry)),
                }
            }
            let mut store = Store::new(Arc::new(Snapshot::from_admitted(base)));
            for (e, x) in &later {
                put(&mut store, e, *x);
            }
            // Sweeps happen at increasing times, as ticks do.
            let mut steps = steps;
            steps.sort_unstable();
            let mut removed = BTreeSet::new();
            for t in steps.iter().copied() {
                for k in store.sweep(t) {
                    prop_assert!(removed.insert(k), "a key is swept once");
                }
                let live: Vec<Envelope> = last
                    .iter()
                    .filter(|(_, x)| x.is_none_or(|x| t < x))
                    .map(|(e, _)| e.clone())
                    .collect();
                let dead: BTreeSet<KeyHash> = last
                    .iter()
                    .filter(|(_, x)| x.is_some_and(|x| x <= t))
                    .map(|(e, _)| e.key.hash())
                    .collect();
                prop_assert_eq!(&removed, &dead);
                let reference = Store::new(Arc::new(Snapshot::from_envelopes(live)));
                assert_same_tree(&store, &reference);
            }
        }
    }

    #[test]
    fn removed_key_can_be_put_again() {
        let e = env("a", 1);
        let k = e.key.hash();
        let mut store = Store::new(Arc::new(Snapshot::from_admitted([(e.clone(), Some(10))])));
        assert_eq!(store.sweep(10), vec![k]);
        assert!(store.get(&k).is_none());
        assert_eq!((store.len(), store.root()), (0, 0));
        let newer = env("a", 2);
        put(&mut store, &newer, Some(20));
        let reference = Store::new(Arc::new(Snapshot::from_envelopes([newer])));
        assert_same_tree(&store, &reference);
        // The base copy's expiry index entry is spent; the newer one expires
        // on its own schedule.
        assert!(store.sweep(19).is_empty());
        assert_eq!(store.sweep(20), vec![k]);
        assert_eq!(store.len(), 0);
    }

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
            grown.put(e.key.hash(), Entry::new(e.key.hash(), e.clone(), None));
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
        grown.put(newer.key.hash(), Entry::new(newer.key.hash(), newer, None));
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
