//! The rumor wave: "feedback + counter" rumor mongering (Demers et al. 1987).
//!
//! A record that is new to this node becomes hot. Every round a hot record is
//! pushed to the round's `fanout` peers; a peer that already knew it says so,
//! and the record cools after `stop_after_known` such answers or after
//! `max_rounds` rounds, whichever comes first. Anti-entropy repairs whatever
//! the wave misses, so cooling early costs latency, never correctness.

use std::collections::BTreeMap;

use super::record::KeyHash;

#[derive(Clone, Debug)]
pub(crate) struct Hot {
    pub generation: u64,
    pub rounds: u32,
    pub known: u32,
    /// Insertion order, to evict the oldest when the set is full.
    pub seq: u64,
}

#[derive(Debug)]
pub(crate) struct HotSet {
    items: BTreeMap<KeyHash, Hot>,
    cap: usize,
    next_seq: u64,
    pub evicted: u64,
}

impl HotSet {
    pub(crate) fn new(cap: usize) -> Self {
        HotSet {
            items: BTreeMap::new(),
            cap: cap.max(1),
            next_seq: 0,
            evicted: 0,
        }
    }

    pub(crate) fn add(&mut self, key: KeyHash, generation: u64) {
        if !self.items.contains_key(&key) && self.items.len() >= self.cap {
            // Full: the oldest rumor has had the most rounds already.
            if let Some(oldest) = self
                .items
                .iter()
                .min_by_key(|(_, h)| h.seq)
                .map(|(k, _)| *k)
            {
                self.items.remove(&oldest);
                self.evicted += 1;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.items.insert(
            key,
            Hot {
                generation,
                rounds: 0,
                known: 0,
                seq,
            },
        );
    }

    pub(crate) fn feedback(&mut self, key: &KeyHash, generation: u64, known: bool) {
        if let Some(h) = self.items.get_mut(key) {
            if known && h.generation == generation {
                h.known += 1;
            }
        }
    }

    /// Hot keys, freshest first (fewest rounds pushed), ties in key order.
    pub(crate) fn by_freshness(&self) -> Vec<(KeyHash, u64)> {
        let mut v: Vec<(u32, KeyHash, u64)> = self
            .items
            .iter()
            .map(|(k, h)| (h.rounds, *k, h.generation))
            .collect();
        v.sort();
        v.into_iter().map(|(_, k, g)| (k, g)).collect()
    }

    pub(crate) fn end_round(&mut self, max_rounds: u32, stop_after_known: u32) {
        for h in self.items.values_mut() {
            h.rounds += 1;
        }
        self.items
            .retain(|_, h| h.rounds < max_rounds && h.known < stop_after_known);
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}
