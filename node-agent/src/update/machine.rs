//! The update state machine: sans-IO, level-triggered.
//!
//! [`decide`] takes the journal (what the node last persisted) and what the
//! node observes now (the intent it holds, the lease check, the artifact
//! store, the host agent's answer) and returns the next journal and the
//! commands to carry out. The driver persists the journal first and acts
//! second, so a crash between the two repeats a command, never skips one;
//! every command is idempotent.
//!
//! The seven states of the seed (P5):
//!
//! | state         | meaning                                                     |
//! |---------------|-------------------------------------------------------------|
//! | `blocked`     | cannot proceed: no lease yet (`awaiting_lease`) or the lease failed admission (its reason) |
//! | `leased`      | holds an admitted lease; the artifact is still being fetched |
//! | `staged`      | the artifact is verified and staged; waiting for a lease     |
//! | `applying`    | handed to the host agent                                    |
//! | `healthy`     | the host agent committed the new build                       |
//! | `rolled_back` | the host agent put the previous build back                   |
//! | `aborted`     | given up: fetch retries exhausted, a crash loop, the transition bound |
//!
//! Within one intent generation `healthy`, `rolled_back` and `aborted` are
//! final; only a newer generation starts a new attempt. See [`legal`] for
//! every edge.

use fabric_proto::update::UpdateState;
use fabric_schemas::kinds::Component;
use serde::{Deserialize, Serialize};

/// State changes one generation may make before it is aborted: a crash loop
/// or two sources flapping must end, not spin.
pub const MAX_TRANSITIONS: u32 = 32;

/// Starts of the node-agent during one unfinished attempt before it is given
/// up (`crash_loop`): a build that kills the agent on every start must not be
/// retried forever.
pub const MAX_STARTS: u32 = 5;

/// The reason a `blocked` attempt without a lease reports.
pub const AWAITING_LEASE: &str = "awaiting_lease";
/// The reason of an apply the host agent never answered.
pub const APPLY_TIMEOUT: &str = "apply_timeout";
/// How long an apply may go unanswered while the old build still runs, by
/// default: far past the host agent's readiness deadline and probation
/// (30 s + 10 s), so only an absent or wedged host agent reaches it.
pub const DEFAULT_APPLY_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// The intent the node holds for one component: accepted by `accept`, in the
/// node's own target and scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentRef {
    /// The `UpdateIntent` name.
    pub name: String,
    /// Its object generation (what leases and hints name).
    pub generation: u64,
    /// The component it updates (`node-agent` or `host-agent`).
    pub component: Component,
    /// The version it installs.
    pub version: String,
    /// The artifact's sha256 (lower hex).
    pub sha256: String,
    /// The artifact's size in bytes.
    pub size: u64,
}

impl IntentRef {
    fn same_attempt(&self, other: &IntentRef) -> bool {
        self.name == other.name && self.generation == other.generation
    }
}

/// What the node's lease check says about the current intent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseView {
    /// No lease for this node, intent and phase.
    None,
    /// A lease that passed the node's own admission.
    Admitted {
        /// Its id.
        lease_id: String,
    },
    /// A lease for this node that failed admission.
    Refused {
        /// Its id.
        lease_id: String,
        /// `LeaseRefusal::reason` or the acceptance rejection.
        reason: String,
    },
}

/// What the artifact store says about the intent's artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactView {
    /// Not (fully) here yet; a fetch may be running.
    Missing,
    /// Verified (length and sha256) and staged.
    Staged,
    /// The fetch gave up (bounded retries); the reason names what failed.
    Failed {
        /// Why.
        reason: String,
    },
}

/// The host agent's answer, as the machine reads it.
pub use fabric_proto::host::ApplyOutcome as HostOutcome;

/// Everything the machine reads besides the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The newest intent the node holds for the updater's component.
    pub intent: Option<IntentRef>,
    /// The lease check for that intent.
    pub lease: LeaseView,
    /// The artifact of that intent.
    pub artifact: ArtifactView,
    /// The host agent's answer, if it wrote one.
    pub host: Option<HostOutcome>,
    /// The sha256 of the build running now (what a rollback restores).
    pub running_sha256: Option<String>,
    /// The time of this observation (ms since the epoch).
    pub now_ms: u64,
    /// How long an apply may go unanswered while the old build still runs
    /// before it is given up as [`APPLY_TIMEOUT`].
    pub apply_timeout_ms: u64,
}

/// One update attempt: one intent generation on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The intent (pending generation, digest, size).
    pub intent: IntentRef,
    /// Where it is.
    pub state: UpdateState,
    /// The lease it acts (or was refused) on.
    #[serde(default)]
    pub lease_id: Option<String>,
    /// The last plan the node accepted: the lease id it applied with.
    #[serde(default)]
    pub accepted_plan: Option<String>,
    /// The staged artifact's sha256.
    #[serde(default)]
    pub staged_sha256: Option<String>,
    /// Why it is `blocked`, `rolled_back` or `aborted`.
    #[serde(default)]
    pub reason: Option<String>,
    /// State changes so far (bounded by [`MAX_TRANSITIONS`]).
    #[serde(default)]
    pub transitions: u32,
    /// Node-agent starts during this attempt (bounded by [`MAX_STARTS`]).
    #[serde(default)]
    pub starts: u32,
    /// Digests rolled back for this generation: never applied again.
    #[serde(default)]
    pub denylist: Vec<String>,
    /// When the apply was requested (ms since the epoch).
    #[serde(default)]
    pub applying_since_ms: Option<u64>,
}

/// The persisted update journal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The current (or last) attempt.
    #[serde(default)]
    pub attempt: Option<Attempt>,
    /// The last intent that reached `healthy`: the local last-known-good.
    #[serde(default)]
    pub last_known_good: Option<IntentRef>,
    /// The digest that ran before the current apply (what a rollback restores).
    #[serde(default)]
    pub previous_binary: Option<String>,
}

/// What the driver does after persisting the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Fetch (or keep fetching) the artifact.
    Fetch {
        /// Its sha256.
        sha256: String,
        /// Its size.
        size: u64,
    },
    /// Hand the staged artifact to the host agent.
    RequestApply {
        /// The lease it applies under.
        lease_id: String,
        /// The staged artifact.
        sha256: String,
    },
}

/// The machine's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The journal to persist (unchanged if nothing happened).
    pub journal: Journal,
    /// What to do once it is persisted.
    pub commands: Vec<Command>,
}

/// Whether `from -> to` is an edge of the machine. `new_generation` is true
/// when the step starts a new attempt (a newer intent generation), which any
/// state but `applying` may do and which always lands in `blocked`.
pub fn legal(from: UpdateState, to: UpdateState, new_generation: bool) -> bool {
    use UpdateState::*;
    if new_generation {
        return from != Applying && to == Blocked;
    }
    matches!(
        (from, to),
        (Blocked, Blocked | Leased | Staged | Aborted)
            | (Leased, Blocked | Leased | Staged | Aborted)
            | (Staged, Blocked | Leased | Staged | Applying | Aborted)
            | (Applying, Applying | Healthy | RolledBack)
    )
}

/// Whether `state` ends its generation.
pub fn is_final(state: UpdateState) -> bool {
    matches!(
        state,
        UpdateState::Healthy | UpdateState::RolledBack | UpdateState::Aborted
    )
}

/// Counts one node-agent start against the current attempt; the journal is
/// read first, before any plan is fetched. An unfinished attempt that has
/// seen [`MAX_STARTS`] starts is a crash loop: `aborted`, or `rolled_back`
/// if it was being applied (the host agent restores the previous build).
pub fn on_start(mut journal: Journal) -> Journal {
    if let Some(a) = journal.attempt.as_mut() {
        if !is_final(a.state) {
            a.starts = a.starts.saturating_add(1);
            if a.starts > MAX_STARTS {
                let to = if a.state == UpdateState::Applying {
                    if !a.denylist.contains(&a.intent.sha256) {
                        a.denylist.push(a.intent.sha256.clone());
                    }
                    UpdateState::RolledBack
                } else {
                    UpdateState::Aborted
                };
                a.state = to;
                a.reason = Some("crash_loop".into());
                a.transitions = a.transitions.saturating_add(1);
            }
        }
    }
    journal
}

/// The next journal and commands for what the node observes.
pub fn decide(journal: &Journal, seen: &Observed) -> Decision {
    let mut next = journal.clone();
    let mut commands = Vec::new();
    let Some(intent) = seen.intent.as_ref() else {
        // No intent (none yet, or it expired): nothing to act on. An attempt
        // in flight keeps its state; its lease will expire at the orchestrator.
        return Decision {
            journal: next,
            commands,
        };
    };
    match next.attempt.as_ref() {
        Some(a) if a.intent.same_attempt(intent) => {}
        Some(a) if a.state == UpdateState::Applying => {
            // The host agent owns the running apply; a newer intent waits
            // until it answers.
        }
        Some(a) if a.intent.name == intent.name && a.intent.generation > intent.generation => {
            // An older generation from a slow source: `accept` refuses
            // rollbacks, and so does the machine.
        }
        _ => {
            next.attempt = Some(Attempt {
                intent: intent.clone(),
                state: UpdateState::Blocked,
                lease_id: None,
                accepted_plan: None,
                staged_sha256: None,
                reason: Some(AWAITING_LEASE.into()),
                transitions: 0,
                starts: 0,
                denylist: Vec::new(),
                applying_since_ms: None,
            });
            // One edge per decision: the new attempt is persisted before
            // anything is done for it (the driver decides again at once).
            return Decision {
                journal: next,
                commands,
            };
        }
    }
    let Some(a) = next.attempt.as_mut() else {
        return Decision {
            journal: next,
            commands,
        };
    };
    if !a.intent.same_attempt(intent) || is_final(a.state) {
        return Decision {
            journal: next,
            commands,
        };
    }
    let (to, lease_id, reason) = target(a, seen);
    if to != a.state {
        // An apply in flight is the host agent's to finish.
        if a.transitions >= MAX_TRANSITIONS && a.state != UpdateState::Applying {
            set(
                a,
                UpdateState::Aborted,
                a.lease_id.clone(),
                Some("transition_limit".into()),
            );
            return Decision {
                journal: next,
                commands,
            };
        }
        a.transitions += 1;
    }
    if to == UpdateState::Healthy {
        next.last_known_good = Some(a.intent.clone());
    }
    if to == UpdateState::RolledBack && !a.denylist.contains(&a.intent.sha256) {
        a.denylist.push(a.intent.sha256.clone());
    }
    if to == UpdateState::Applying && a.state != UpdateState::Applying {
        a.accepted_plan = lease_id.clone();
        a.applying_since_ms = Some(seen.now_ms);
        if seen.running_sha256.is_some() {
            next.previous_binary = seen.running_sha256.clone();
        }
    }
    let staged = seen.artifact == ArtifactView::Staged;
    // From `applying` on, the host agent owns the artifact (it may move it):
    // what was staged stays recorded.
    if !matches!(
        to,
        UpdateState::Applying | UpdateState::Healthy | UpdateState::RolledBack
    ) {
        a.staged_sha256 = staged.then(|| a.intent.sha256.clone());
    }
    set(a, to, lease_id, reason);
    match to {
        UpdateState::Blocked | UpdateState::Leased if !staged => commands.push(Command::Fetch {
            sha256: a.intent.sha256.clone(),
            size: a.intent.size,
        }),
        UpdateState::Applying => {
            if let Some(lease_id) = a.lease_id.clone() {
                commands.push(Command::RequestApply {
                    lease_id,
                    sha256: a.intent.sha256.clone(),
                });
            }
        }
        _ => {}
    }
    Decision {
        journal: next,
        commands,
    }
}

fn set(a: &mut Attempt, to: UpdateState, lease_id: Option<String>, reason: Option<String>) {
    a.state = to;
    a.lease_id = lease_id;
    a.reason = reason;
}

/// Where the attempt should be, from where it is and what is seen.
fn target(a: &Attempt, seen: &Observed) -> (UpdateState, Option<String>, Option<String>) {
    use UpdateState::*;
    if a.state == Applying {
        let lease = a.lease_id.clone();
        return match &seen.host {
            Some(HostOutcome::Committed { lease_id, sha256 })
                if Some(lease_id) == lease.as_ref() && *sha256 == a.intent.sha256 =>
            {
                (Healthy, lease, None)
            }
            Some(HostOutcome::RolledBack {
                lease_id,
                sha256,
                reason,
            }) if Some(lease_id) == lease.as_ref() && *sha256 == a.intent.sha256 => {
                (RolledBack, lease, Some(reason.clone()))
            }
            // Unanswered for too long while this process still runs the
            // old build: no host agent took the request (a process the host
            // agent restarted runs the new build and waits for its commit).
            _ if seen.running_sha256.as_ref() != Some(&a.intent.sha256)
                && a.applying_since_ms
                    .is_some_and(|t| seen.now_ms.saturating_sub(t) >= seen.apply_timeout_ms) =>
            {
                (RolledBack, lease, Some(APPLY_TIMEOUT.into()))
            }
            // No answer yet, or an answer about another request.
            _ => (Applying, lease, a.reason.clone()),
        };
    }
    if let ArtifactView::Failed { reason } = &seen.artifact {
        let lease = match &seen.lease {
            LeaseView::Admitted { lease_id } | LeaseView::Refused { lease_id, .. } => {
                Some(lease_id.clone())
            }
            LeaseView::None => None,
        };
        return (Aborted, lease, Some(reason.clone()));
    }
    let staged = seen.artifact == ArtifactView::Staged;
    match &seen.lease {
        LeaseView::Refused { lease_id, reason } => {
            (Blocked, Some(lease_id.clone()), Some(reason.clone()))
        }
        LeaseView::Admitted { lease_id } if staged => {
            // A lease only moves a staged attempt to `applying`; from
            // `blocked` or `leased` the artifact becomes `staged` first (one
            // edge per decision, the driver requeues at once).
            let to = if a.state == Staged { Applying } else { Staged };
            (to, Some(lease_id.clone()), None)
        }
        LeaseView::Admitted { lease_id } => (Leased, Some(lease_id.clone()), None),
        LeaseView::None if staged => (Staged, None, None),
        LeaseView::None => (Blocked, None, Some(AWAITING_LEASE.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use UpdateState::*;

    fn intent(generation: u64) -> IntentRef {
        IntentRef {
            name: "agent-0-2".into(),
            generation,
            component: Component::NodeAgent,
            version: format!("0.2.{generation}"),
            sha256: format!("{generation:064x}"),
            size: 1000,
        }
    }

    fn seen(generation: u64, lease: LeaseView, artifact: ArtifactView) -> Observed {
        Observed {
            intent: Some(intent(generation)),
            lease,
            artifact,
            host: None,
            running_sha256: Some("11".repeat(32)),
            now_ms: 1_000,
            apply_timeout_ms: DEFAULT_APPLY_TIMEOUT_MS,
        }
    }

    fn admitted(id: &str) -> LeaseView {
        LeaseView::Admitted {
            lease_id: id.into(),
        }
    }

    fn state(j: &Journal) -> UpdateState {
        j.attempt.as_ref().expect("attempt").state
    }

    /// Runs `decide` until it settles (the driver requeues after a change).
    fn settle(mut j: Journal, s: &Observed) -> (Journal, Vec<Command>) {
        let mut commands = Vec::new();
        for _ in 0..8 {
            let d = decide(&j, s);
            commands = d.commands;
            if d.journal == j {
                break;
            }
            j = d.journal;
        }
        (j, commands)
    }

    #[test]
    fn the_happy_path_fetches_stages_waits_for_a_lease_applies_and_commits() {
        let j = Journal::default();
        let (j, c) = settle(j, &seen(1, LeaseView::None, ArtifactView::Missing));
        assert_eq!(state(&j), Blocked);
        assert_eq!(
            j.attempt.as_ref().and_then(|a| a.reason.as_deref()),
            Some(AWAITING_LEASE)
        );
        assert!(matches!(c.as_slice(), [Command::Fetch { .. }]), "{c:?}");

        let (j, c) = settle(j, &seen(1, LeaseView::None, ArtifactView::Staged));
        assert_eq!(state(&j), Staged);
        assert!(c.is_empty(), "staged without a lease does nothing: {c:?}");

        let (j, c) = settle(j, &seen(1, admitted("l1"), ArtifactView::Staged));
        assert_eq!(state(&j), Applying);
        assert_eq!(
            c,
            vec![Command::RequestApply {
                lease_id: "l1".into(),
                sha256: intent(1).sha256
            }]
        );
        let mut done = seen(1, admitted("l1"), ArtifactView::Staged);
        done.host = Some(HostOutcome::Committed {
            lease_id: "l1".into(),
            sha256: intent(1).sha256,
        });
        let (j, _) = settle(j, &done);
        assert_eq!(state(&j), Healthy);
        assert_eq!(j.last_known_good, Some(intent(1)));
        assert_eq!(
            j.attempt.as_ref().and_then(|a| a.accepted_plan.as_deref()),
            Some("l1")
        );
        assert_eq!(j.previous_binary, Some("11".repeat(32)));
    }

    #[test]
    fn an_apply_no_host_agent_answers_times_out_only_while_the_old_build_runs() {
        let staged = seen(1, admitted("l1"), ArtifactView::Staged);
        let (j, _) = settle(Journal::default(), &staged);
        assert_eq!(state(&j), Applying);
        let since = j.attempt.as_ref().and_then(|a| a.applying_since_ms);
        assert_eq!(since, Some(staged.now_ms));

        let mut later = staged.clone();
        later.now_ms = staged.now_ms + DEFAULT_APPLY_TIMEOUT_MS - 1;
        assert_eq!(state(&settle(j.clone(), &later).0), Applying);

        // A process the host agent restarted runs the new build: it waits
        // for the commit, however long probation takes.
        later.now_ms = staged.now_ms + DEFAULT_APPLY_TIMEOUT_MS;
        let mut restarted = later.clone();
        restarted.running_sha256 = Some(intent(1).sha256);
        assert_eq!(state(&settle(j.clone(), &restarted).0), Applying);

        let (j, c) = settle(j, &later);
        assert_eq!(state(&j), RolledBack);
        let a = j.attempt.as_ref().expect("attempt");
        assert_eq!(a.reason.as_deref(), Some(APPLY_TIMEOUT));
        assert!(a.denylist.contains(&intent(1).sha256));
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn a_lease_before_the_artifact_is_leased_and_keeps_fetching() {
        let (j, c) = settle(
            Journal::default(),
            &seen(1, admitted("l1"), ArtifactView::Missing),
        );
        assert_eq!(state(&j), Leased);
        assert!(matches!(c.as_slice(), [Command::Fetch { .. }]));
        let (j, _) = settle(j, &seen(1, admitted("l1"), ArtifactView::Staged));
        assert_eq!(state(&j), Applying);
    }

    #[test]
    fn a_refused_lease_blocks_with_its_reason_and_lease_id() {
        let refused = LeaseView::Refused {
            lease_id: "l9".into(),
            reason: "farm_wide_start".into(),
        };
        let (j, c) = settle(Journal::default(), &seen(1, refused, ArtifactView::Staged));
        let a = j.attempt.expect("attempt");
        assert_eq!(a.state, Blocked);
        assert_eq!(a.reason.as_deref(), Some("farm_wide_start"));
        assert_eq!(a.lease_id.as_deref(), Some("l9"));
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn a_rollback_denylists_the_digest_for_the_generation_and_a_new_generation_starts_over() {
        let (j, _) = settle(
            Journal::default(),
            &seen(1, admitted("l1"), ArtifactView::Staged),
        );
        let mut failed = seen(1, admitted("l1"), ArtifactView::Staged);
        failed.host = Some(HostOutcome::RolledBack {
            lease_id: "l1".into(),
            sha256: intent(1).sha256,
            reason: "no_readiness".into(),
        });
        let (j, c) = settle(j, &failed);
        let a = j.attempt.clone().expect("attempt");
        assert_eq!(a.state, RolledBack);
        assert_eq!(a.reason.as_deref(), Some("no_readiness"));
        assert_eq!(a.denylist, vec![intent(1).sha256]);
        assert!(c.is_empty());
        // A fresh lease for the same generation does not apply it again.
        let (j, c) = settle(j, &seen(1, admitted("l2"), ArtifactView::Staged));
        assert_eq!(state(&j), RolledBack);
        assert!(c.is_empty());
        // A newer generation is a new attempt.
        let (j, _) = settle(j, &seen(2, LeaseView::None, ArtifactView::Missing));
        assert_eq!(state(&j), Blocked);
        assert_eq!(j.attempt.expect("attempt").intent.generation, 2);
    }

    #[test]
    fn a_failed_fetch_aborts_with_its_reason() {
        let failed = ArtifactView::Failed {
            reason: "sha256_mismatch".into(),
        };
        let (j, c) = settle(Journal::default(), &seen(1, admitted("l1"), failed));
        let a = j.attempt.expect("attempt");
        assert_eq!(a.state, Aborted);
        assert_eq!(a.reason.as_deref(), Some("sha256_mismatch"));
        assert_eq!(a.lease_id.as_deref(), Some("l1"));
        assert!(c.is_empty());
    }

    #[test]
    fn a_newer_intent_waits_while_the_host_agent_applies() {
        let (j, _) = settle(
            Journal::default(),
            &seen(1, admitted("l1"), ArtifactView::Staged),
        );
        assert_eq!(state(&j), Applying);
        let (j, c) = settle(j, &seen(2, LeaseView::None, ArtifactView::Missing));
        assert_eq!(state(&j), Applying);
        assert_eq!(j.attempt.as_ref().expect("a").intent.generation, 1);
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn an_older_generation_never_replaces_a_newer_attempt() {
        let (j, _) = settle(
            Journal::default(),
            &seen(3, LeaseView::None, ArtifactView::Missing),
        );
        let (j, _) = settle(j, &seen(2, admitted("old"), ArtifactView::Staged));
        let a = j.attempt.expect("attempt");
        assert_eq!(a.intent.generation, 3);
        assert_eq!(a.state, Blocked);
    }

    #[test]
    fn restarts_during_an_attempt_end_in_a_crash_loop_verdict() {
        let (j, _) = settle(
            Journal::default(),
            &seen(1, admitted("l1"), ArtifactView::Staged),
        );
        let mut j = j;
        for _ in 0..MAX_STARTS {
            j = on_start(j);
            assert_eq!(state(&j), Applying);
        }
        j = on_start(j);
        let a = j.attempt.expect("attempt");
        assert_eq!(a.state, RolledBack);
        assert_eq!(a.reason.as_deref(), Some("crash_loop"));
        assert_eq!(a.denylist, vec![intent(1).sha256]);

        let (j, _) = settle(
            Journal::default(),
            &seen(1, LeaseView::None, ArtifactView::Missing),
        );
        let mut j = j;
        for _ in 0..=MAX_STARTS {
            j = on_start(j);
        }
        assert_eq!(state(&j), Aborted);
    }

    #[test]
    fn every_edge_of_the_table() {
        let all = UpdateState::ALL;
        let legal_edges: &[(UpdateState, UpdateState)] = &[
            (Blocked, Blocked),
            (Blocked, Leased),
            (Blocked, Staged),
            (Blocked, Aborted),
            (Leased, Blocked),
            (Leased, Leased),
            (Leased, Staged),
            (Leased, Aborted),
            (Staged, Blocked),
            (Staged, Leased),
            (Staged, Staged),
            (Staged, Applying),
            (Staged, Aborted),
            (Applying, Applying),
            (Applying, Healthy),
            (Applying, RolledBack),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    legal(from, to, false),
                    legal_edges.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
                // A new generation always starts blocked, never mid-apply.
                assert_eq!(legal(from, to, true), from != Applying && to == Blocked);
            }
        }
        // Nothing leaves a final state within its generation.
        for from in [Healthy, RolledBack, Aborted] {
            assert!(all.iter().all(|to| !legal(from, *to, false)));
        }
    }

    fn arb_seen() -> impl Strategy<Value = Observed> {
        let lease = prop_oneof![
            Just(LeaseView::None),
            (0u8..3).prop_map(|i| LeaseView::Admitted {
                lease_id: format!("l{i}")
            }),
            (0u8..3).prop_map(|i| LeaseView::Refused {
                lease_id: format!("l{i}"),
                reason: "expired".into()
            }),
        ];
        let artifact = prop_oneof![
            4 => Just(ArtifactView::Missing),
            4 => Just(ArtifactView::Staged),
            1 => Just(ArtifactView::Failed { reason: "stalled".into() }),
        ];
        let host = prop_oneof![
            Just(None),
            (0u8..3, 1u64..4).prop_map(|(i, g)| Some(HostOutcome::Committed {
                lease_id: format!("l{i}"),
                sha256: intent(g).sha256
            })),
            (0u8..3, 1u64..4).prop_map(|(i, g)| Some(HostOutcome::RolledBack {
                lease_id: format!("l{i}"),
                sha256: intent(g).sha256,
                reason: "probation".into()
            })),
        ];
        (prop::option::weighted(0.9, 1u64..4), lease, artifact, host).prop_map(
            |(generation, lease, artifact, host)| Observed {
                intent: generation.map(intent),
                lease,
                artifact,
                host,
                running_sha256: None,
                now_ms: 1_000,
                apply_timeout_ms: DEFAULT_APPLY_TIMEOUT_MS,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the sources say, in whatever order, with restarts in
        /// between: every step is an edge of the table, nothing is applied
        /// without an admitted lease and a staged artifact, `healthy` comes
        /// only from the host agent's commit of that lease, and the
        /// transition bound holds.
        #[test]
        fn any_sequence_of_observations_only_walks_legal_edges(
            steps in prop::collection::vec((arb_seen(), any::<bool>()), 1..80)
        ) {
            let mut j = Journal::default();
            for (s, restart) in steps {
                if restart {
                    j = on_start(j);
                }
                let before = j.attempt.clone();
                let d = decide(&j, &s);
                let after = d.journal.attempt.clone();
                if let (Some(b), Some(a)) = (&before, &after) {
                    let new_generation = !b.intent.same_attempt(&a.intent);
                    let stayed = !new_generation && a.state == b.state;
                    prop_assert!(
                        stayed || legal(b.state, a.state, new_generation),
                        "{:?} -> {:?} (new generation: {new_generation}) on {s:?}", b.state, a.state
                    );
                    prop_assert!(a.transitions <= MAX_TRANSITIONS + 1);
                    if a.state == Applying && b.state != Applying {
                        let leased = matches!(&s.lease, LeaseView::Admitted { lease_id } if a.lease_id.as_ref() == Some(lease_id));
                        prop_assert!(leased, "applying without an admitted lease: {:?}", s);
                        prop_assert_eq!(&s.artifact, &ArtifactView::Staged);
                        let requested = matches!(d.commands.as_slice(), [Command::RequestApply { .. }]);
                        prop_assert!(requested, "no apply request: {:?}", d.commands);
                    }
                    if a.state == Healthy && b.state != Healthy {
                        let committed = matches!(&s.host, Some(HostOutcome::Committed { lease_id, .. }) if b.lease_id.as_ref() == Some(lease_id));
                        prop_assert!(committed, "healthy without the host agent's commit: {:?}", s);
                    }
                } else if let Some(a) = &after {
                    prop_assert_eq!(a.state, Blocked);
                }
                for c in &d.commands {
                    if let Command::RequestApply { .. } = c {
                        prop_assert_eq!(after.as_ref().map(|a| a.state), Some(Applying));
                    }
                }
                j = d.journal;
            }
        }
    }
}
