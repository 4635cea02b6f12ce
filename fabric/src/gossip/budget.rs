//! Per-peer defences: an inbound byte token bucket, a strike score that bans
//! a misbehaving peer for a while, and per-round send/admission counters.
//!
//! These bound what any single peer can cost this node per round, whatever it
//! sends: bytes decoded (bucket), admissions attempted (counter), and bytes we
//! send back to it (per-peer send budget, so a small request cannot be
//! amplified without limit).

/// Byte token bucket with integer arithmetic, refilled from caller-supplied
/// time. Tokens are kept scaled by `period_ms` so refill needs no division.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    scaled_tokens: u128,
    scaled_capacity: u128,
    /// Bytes added per `period_ms`.
    rate: u128,
    period_ms: u128,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket of `capacity` bytes refilling `rate` bytes per `period_ms`.
    pub fn new(capacity: u64, rate: u64, period_ms: u64, now_ms: u64) -> Self {
        let period_ms = u128::from(period_ms.max(1));
        TokenBucket {
            scaled_tokens: u128::from(capacity) * period_ms,
            scaled_capacity: u128::from(capacity) * period_ms,
            rate: u128::from(rate),
            period_ms,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        // Time going backwards (a driver bug or clock step) refills nothing.
        let elapsed = u128::from(now_ms.saturating_sub(self.last_ms));
        self.last_ms = self.last_ms.max(now_ms);
        self.scaled_tokens = (self.scaled_tokens + elapsed * self.rate).min(self.scaled_capacity);
    }

    /// Takes `bytes` if available; otherwise takes nothing and returns false.
    pub fn try_take(&mut self, bytes: usize, now_ms: u64) -> bool {
        self.refill(now_ms);
        let need = (bytes as u128) * self.period_ms;
        if need <= self.scaled_tokens {
            self.scaled_tokens -= need;
            true
        } else {
            false
        }
    }

    /// Whole bytes that could be taken at `now_ms` (refills first, hence `&mut`).
    pub fn available(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        u64::try_from(self.scaled_tokens / self.period_ms).unwrap_or(u64::MAX)
    }
}

/// Everything this node tracks about one peer.
#[derive(Clone, Debug)]
pub(crate) struct PeerGuard {
    pub inbound: TokenBucket,
    pub strikes: u32,
    pub banned_until: u64,
    /// Local round the send counter refers to (reset lazily on a new round).
    pub send_round: u64,
    pub sent_bytes: usize,
    pub admit_round: u64,
    pub admissions: u32,
    pub last_seen: u64,
}

impl PeerGuard {
    pub(crate) fn new(inbound: TokenBucket, now_ms: u64) -> Self {
        PeerGuard {
            inbound,
            strikes: 0,
            banned_until: 0,
            send_round: 0,
            sent_bytes: 0,
            admit_round: 0,
            admissions: 0,
            last_seen: now_ms,
        }
    }

    pub(crate) fn banned(&self, now_ms: u64) -> bool {
        now_ms < self.banned_until
    }

    pub(crate) fn sent_in(&self, round: u64) -> usize {
        if self.send_round == round {
            self.sent_bytes
        } else {
            0
        }
    }

    pub(crate) fn add_sent(&mut self, round: u64, bytes: usize) {
        if self.send_round != round {
            self.send_round = round;
            self.sent_bytes = 0;
        }
        self.sent_bytes += bytes;
    }

    /// Counts one admission attempt; false once `max` is reached this round.
    pub(crate) fn try_admit(&mut self, round: u64, max: u32) -> bool {
        if self.admit_round != round {
            self.admit_round = round;
            self.admissions = 0;
        }
        if self.admissions >= max {
            return false;
        }
        self.admissions += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_caps_burst_and_refills_with_time() {
        let mut b = TokenBucket::new(1000, 500, 1000, 0);
        assert!(b.try_take(1000, 0));
        assert!(!b.try_take(1, 0));
        assert!(b.try_take(250, 500));
        assert!(!b.try_take(1, 500));
        assert_eq!(b.available(100_000), 1000);
        // A clock step backwards refills nothing and does not panic.
        assert!(b.try_take(1000, 100_000));
        assert_eq!(b.available(0), 0);
    }
}
