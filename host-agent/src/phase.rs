//! The node-agent phase as a sans-IO state machine: after the switch to the
//! new slot, the new build must say `READY=1` with its own digest within
//! the readiness deadline, then live through the probation window; only then
//! is it committed. Anything else rolls it back, with the reason.

use std::time::Duration;

/// What one apply is held to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// From start to `READY=1`.
    pub ready_deadline: Duration,
    /// From `READY=1` to commit, with no exit.
    pub probation: Duration,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            ready_deadline: Duration::from_secs(30),
            probation: Duration::from_secs(10),
        }
    }
}

/// Where an apply is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The new build was started at `since_ms`; not ready yet.
    Starting {
        /// When it was started.
        since_ms: u64,
    },
    /// Ready at `ready_ms`; in probation.
    Probation {
        /// When it said ready.
        ready_ms: u64,
    },
    /// Committed: it stays.
    Committed,
    /// Rolled back, and why.
    RolledBack {
        /// `exited_before_ready`, `no_readiness`, `wrong_digest`, `crashed_in_probation`.
        reason: String,
    },
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The child said `READY=1` with this digest.
    Ready(Option<String>),
    /// The child exited.
    Exited(String),
    /// Time passed.
    Tick,
}

/// The next phase for `event` at `now_ms`, for an apply of `sha256`.
pub fn step(phase: &Phase, event: &Event, sha256: &str, window: &Window, now_ms: u64) -> Phase {
    let ms = |d: Duration| d.as_millis() as u64;
    let back = |r: &str| Phase::RolledBack {
        reason: r.to_owned(),
    };
    match (phase, event) {
        (Phase::Starting { .. }, Event::Ready(Some(d))) if d == sha256 => {
            Phase::Probation { ready_ms: now_ms }
        }
        // A child that reports another build is not the build we installed.
        (Phase::Starting { .. }, Event::Ready(_)) => back("wrong_digest"),
        (Phase::Starting { .. }, Event::Exited(_)) => back("exited_before_ready"),
        (Phase::Starting { since_ms }, Event::Tick)
            if now_ms.saturating_sub(*since_ms) >= ms(window.ready_deadline) =>
        {
            back("no_readiness")
        }
        (Phase::Probation { .. }, Event::Exited(_)) => back("crashed_in_probation"),
        (Phase::Probation { ready_ms }, Event::Tick)
            if now_ms.saturating_sub(*ready_ms) >= ms(window.probation) =>
        {
            Phase::Committed
        }
        (p, _) => p.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "ab";

    fn w() -> Window {
        Window {
            ready_deadline: Duration::from_millis(1000),
            probation: Duration::from_millis(500),
        }
    }

    #[test]
    fn a_build_that_is_ready_and_lives_through_probation_is_committed() {
        let p = Phase::Starting { since_ms: 0 };
        let p = step(&p, &Event::Tick, SHA, &w(), 999);
        assert_eq!(p, Phase::Starting { since_ms: 0 });
        let p = step(&p, &Event::Ready(Some(SHA.into())), SHA, &w(), 100);
        assert_eq!(p, Phase::Probation { ready_ms: 100 });
        let p = step(&p, &Event::Tick, SHA, &w(), 599);
        assert!(matches!(p, Phase::Probation { .. }));
        assert_eq!(step(&p, &Event::Tick, SHA, &w(), 600), Phase::Committed);
        // Committed is final.
        assert_eq!(
            step(
                &Phase::Committed,
                &Event::Exited("1".into()),
                SHA,
                &w(),
                700
            ),
            Phase::Committed
        );
    }

    #[test]
    fn every_failure_rolls_back_with_its_reason() {
        let s = Phase::Starting { since_ms: 0 };
        let reason = |p: Phase| match p {
            Phase::RolledBack { reason } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(step(&s, &Event::Exited("3".into()), SHA, &w(), 5)),
            "exited_before_ready"
        );
        assert_eq!(
            reason(step(&s, &Event::Tick, SHA, &w(), 1000)),
            "no_readiness"
        );
        assert_eq!(
            reason(step(&s, &Event::Ready(Some("cd".into())), SHA, &w(), 5)),
            "wrong_digest"
        );
        assert_eq!(
            reason(step(&s, &Event::Ready(None), SHA, &w(), 5)),
            "wrong_digest"
        );
        let p = Phase::Probation { ready_ms: 10 };
        assert_eq!(
            reason(step(&p, &Event::Exited("9".into()), SHA, &w(), 20)),
            "crashed_in_probation"
        );
    }
}
