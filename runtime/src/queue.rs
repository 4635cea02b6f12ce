//! The sans-IO core of the reconcile runtime: a de-duplicating work queue and
//! per-key exponential backoff. Time is an argument, so both are tested without
//! sleeping; the driver in [`super`] feeds them the clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// Keys waiting to be reconciled, each with the instant it becomes due.
///
/// Invariants, which the driver relies on:
/// - a key is pending at most once: enqueueing a pending key again keeps one
///   entry, due at the earlier of the two instants;
/// - a key handed out by [`pop_ready`](WorkQueue::pop_ready) is *in flight*
///   until [`done`](WorkQueue::done); it is never handed out again meanwhile,
///   so a key is never reconciled concurrently with itself. A key enqueued
///   while in flight is parked and becomes pending when the running reconcile
///   finishes (the change that triggered it may not have been seen).
#[derive(Debug)]
pub struct WorkQueue<K> {
    /// Pending keys and their due instants.
    pending: HashMap<K, Instant>,
    /// Due-ordered index of `pending`: (due, sequence) -> key. The sequence
    /// keeps FIFO order among keys due at the same instant.
    by_due: BTreeMap<(Instant, u64), K>,
    /// The index entry of each pending key, to move it when its due changes.
    index: HashMap<K, (Instant, u64)>,
    in_flight: HashSet<K>,
    /// Keys enqueued while in flight, with the due they asked for.
    parked: HashMap<K, Instant>,
    seq: u64,
}

impl<K> Default for WorkQueue<K> {
    fn default() -> Self {
        WorkQueue {
            pending: HashMap::new(),
            by_due: BTreeMap::new(),
            index: HashMap::new(),
            in_flight: HashSet::new(),
            parked: HashMap::new(),
            seq: 0,
        }
    }
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedules `key` for `due`. Returns `false` if it was already pending
    /// (or parked) and this call only moved its due earlier, or changed nothing.
    pub fn enqueue(&mut self, key: K, due: Instant) -> bool {
        if self.in_flight.contains(&key) {
            let slot = self.parked.entry(key).or_insert(due);
            let fresh = *slot == due;
            if due < *slot {
                *slot = due;
            }
            return fresh;
        }
        match self.pending.get(&key).copied() {
            Some(old) if old <= due => false,
            Some(_) => {
                self.insert_pending(key, due);
                false
            }
            None => {
                self.insert_pending(key, due);
                true
            }
        }
    }

    fn insert_pending(&mut self, key: K, due: Instant) {
        if let Some(old) = self.index.remove(&key) {
            self.by_due.remove(&old);
        }
        self.seq += 1;
        let slot = (due, self.seq);
        self.by_due.insert(slot, key.clone());
        self.index.insert(key.clone(), slot);
        self.pending.insert(key, due);
    }

    /// The earliest due key if it is due at `now`; it moves to in flight.
    pub fn pop_ready(&mut self, now: Instant) -> Option<K> {
        let (&slot, _) = self.by_due.iter().next()?;
        if slot.0 > now {
            return None;
        }
        let key = self.by_due.remove(&slot)?;
        self.index.remove(&key);
        self.pending.remove(&key);
        self.in_flight.insert(key.clone());
        Some(key)
    }

    /// Marks a reconcile of `key` finished. If it was enqueued meanwhile it
    /// becomes pending now, at the due it asked for.
    pub fn done(&mut self, key: &K) {
        if !self.in_flight.remove(key) {
            return;
        }
        if let Some(due) = self.parked.remove(key) {
            self.enqueue(key.clone(), due);
        }
    }

    /// When the next pending key becomes due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.by_due.keys().next().map(|(due, _)| *due)
    }

    /// Removes a pending key (an object that no longer exists). In-flight keys
    /// finish; a parked re-enqueue of them is dropped.
    pub fn forget(&mut self, key: &K) {
        if let Some(slot) = self.index.remove(key) {
            self.by_due.remove(&slot);
        }
        self.pending.remove(key);
        self.parked.remove(key);
    }

    /// Whether `key` waits to be handed out.
    pub fn is_pending(&self, key: &K) -> bool {
        self.pending.contains_key(key) || self.parked.contains_key(key)
    }

    /// Whether `key` is being reconciled.
    pub fn is_in_flight(&self, key: &K) -> bool {
        self.in_flight.contains(key)
    }

    /// Pending keys (not counting parked ones).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.parked.is_empty()
    }

    /// Keys being reconciled now.
    pub fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }
}

/// Exponential backoff parameters: `base * 2^(failures-1)`, at most `cap`,
/// with [`Jitter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The delay after the first failure.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
    /// How the delay is spread.
    pub jitter: Jitter,
}

/// How a backoff delay is spread around its nominal value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[nominal / 2, nominal]` ("equal jitter"): a fleet whose
    /// keys failed together (a store restart, a dead control edge) does not
    /// retry in lockstep, and no delay exceeds the cap.
    #[default]
    Equal,
    /// Exactly the nominal delay (tests that check the schedule).
    None,
}

impl BackoffConfig {
    /// `base` doubling to `cap`, with equal jitter.
    pub fn new(base: Duration, cap: Duration) -> Self {
        BackoffConfig {
            base,
            cap,
            jitter: Jitter::Equal,
        }
    }
}

impl Default for BackoffConfig {
    /// 500 ms doubling to 5 minutes: a broken object is retried quickly at
    /// first, then about every five minutes without hammering the store.
    fn default() -> Self {
        BackoffConfig::new(Duration::from_millis(500), Duration::from_secs(300))
    }
}

/// Consecutive failures per key; reset by a success.
#[derive(Debug)]
pub struct Backoff<K> {
    config: BackoffConfig,
    failures: HashMap<K, u32>,
    /// xorshift64* state for the jitter; seeded per instance from the
    /// process's random hasher keys, so two nodes never share a sequence.
    rng: u64,
}

impl<K: Clone + Eq + Hash> Backoff<K> {
    /// No failures yet.
    pub fn new(config: BackoffConfig) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        Backoff {
            config,
            failures: HashMap::new(),
            rng: h.finish() | 1,
        }
    }

    /// Records a failure of `key` and returns how long to wait before retrying:
    /// the nominal delay ([`Backoff::delay_for`]) spread by the jitter.
    pub fn on_error(&mut self, key: &K) -> Duration {
        let n = self.failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let n = *n;
        let nominal = self.delay_for(n);
        match self.config.jitter {
            Jitter::None => nominal,
            Jitter::Equal => {
                let half = nominal / 2;
                let r = self.next_unit();
                half + (nominal - half).mul_f64(r)
            }
        }
    }

    /// A uniform draw in `[0, 1)`.
    fn next_unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The nominal delay (before jitter) after `failures` consecutive failures.
    pub fn delay_for(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        // 2^31 * base overflows any sensible cap long before; clamp the shift.
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.config
            .base
            .checked_mul(factor)
            .map_or(self.config.cap, |d| d.min(self.config.cap))
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn on_success(&mut self, key: &K) {
        self.failures.remove(key);
    }

    /// Consecutive failures of `key` so far.
    pub fn failures(&self, key: &K) -> u32 {
        self.failures.get(key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_key_enqueued_twice_while_pending_is_handed_out_once() {
        let now = t0();
        let mut q = WorkQueue::new();
        assert!(q.enqueue("a", now));
        assert!(!q.enqueue("a", now));
        assert!(q.enqueue("b", now));
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_ready(now), Some("a"));
        assert_eq!(q.pop_ready(now), Some("b"));
        assert_eq!(q.pop_ready(now), None);
    }

    #[test]
    fn re_enqueue_keeps_the_earlier_due() {
        let now = t0();
        let mut q = WorkQueue::new();
        q.enqueue("a", now + Duration::from_secs(10));
        q.enqueue("a", now + Duration::from_secs(1));
        q.enqueue("a", now + Duration::from_secs(5));
        assert_eq!(q.next_due(), Some(now + Duration::from_secs(1)));
        assert_eq!(q.pop_ready(now), None);
        assert_eq!(q.pop_ready(now + Duration::from_secs(1)), Some("a"));
        assert!(q.is_empty());
    }

    #[test]
    fn an_in_flight_key_is_not_handed_out_again_until_done() {
        let now = t0();
        let mut q = WorkQueue::new();
        q.enqueue("a", now);
        assert_eq!(q.pop_ready(now), Some("a"));
        // A change arrives while "a" is being reconciled: parked, not runnable.
        q.enqueue("a", now);
        q.enqueue("a", now);
        assert_eq!(q.pop_ready(now + Duration::from_secs(60)), None);
        assert!(q.is_pending(&"a"));
        q.done(&"a");
        assert_eq!(q.pop_ready(now), Some("a"));
        q.done(&"a");
        assert!(q.is_empty());
    }

    #[test]
    fn keys_due_together_come_out_in_arrival_order() {
        let now = t0();
        let mut q = WorkQueue::new();
        for k in ["c", "a", "b"] {
            q.enqueue(k, now);
        }
        let order: Vec<_> = std::iter::from_fn(|| q.pop_ready(now)).collect();
        assert_eq!(order, ["c", "a", "b"]);
    }

    #[test]
    fn forget_drops_pending_and_parked_work() {
        let now = t0();
        let mut q = WorkQueue::new();
        q.enqueue("a", now);
        q.enqueue("b", now);
        assert_eq!(q.pop_ready(now), Some("a"));
        q.enqueue("a", now);
        q.forget(&"a");
        q.forget(&"b");
        q.done(&"a");
        assert!(q.is_empty());
        assert_eq!(q.pop_ready(now), None);
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_on_success() {
        let mut b = Backoff::new(BackoffConfig {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            jitter: Jitter::None,
        });
        let delays: Vec<_> = (0..6).map(|_| b.on_error(&"k")).collect();
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        // Another key has its own count.
        assert_eq!(b.on_error(&"other"), Duration::from_millis(100));
        b.on_success(&"k");
        assert_eq!(b.failures(&"k"), 0);
        assert_eq!(b.on_error(&"k"), Duration::from_millis(100));
    }

    #[test]
    fn backoff_never_overflows() {
        let b: Backoff<&str> = Backoff::new(BackoffConfig::new(
            Duration::from_secs(1),
            Duration::from_secs(300),
        ));
        assert_eq!(b.delay_for(u32::MAX), Duration::from_secs(300));
        assert_eq!(b.delay_for(64), Duration::from_secs(300));
    }

    #[test]
    fn equal_jitter_spreads_each_delay_over_its_upper_half_never_past_the_cap() {
        let cfg = BackoffConfig::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut b = Backoff::new(cfg);
        let mut third = Vec::new();
        for i in 0..2000 {
            let key = i.to_string();
            let d1 = b.on_error(&key);
            assert!((50..=100).contains(&d1.as_millis()), "{d1:?}");
            b.on_error(&key);
            third.push(b.on_error(&key));
            for _ in 0..5 {
                assert!(b.on_error(&key) <= Duration::from_secs(1));
            }
        }
        // The third failure's nominal delay is 400 ms: draws cover 200..400.
        let ms: Vec<u128> = third.iter().map(|d| d.as_millis()).collect();
        assert!(ms.iter().all(|m| (200..=400).contains(m)));
        assert!(
            *ms.iter().min().expect("min") < 220,
            "spread reaches the bottom"
        );
        assert!(
            *ms.iter().max().expect("max") > 380,
            "spread reaches the top"
        );
        let mean = ms.iter().sum::<u128>() as f64 / ms.len() as f64;
        assert!((280.0..320.0).contains(&mean), "uniform: mean {mean}");
        // Two instances (two nodes) do not draw the same sequence.
        let mut a = Backoff::new(cfg);
        let mut c = Backoff::new(cfg);
        let sa: Vec<_> = (0..8).map(|i| a.on_error(&i)).collect();
        let sc: Vec<_> = (0..8).map(|i| c.on_error(&i)).collect();
        assert_ne!(sa, sc);
    }
}
