//! The store's semantics as pure functions: both backends read the current row,
//! ask these rules what to write, and write it in the same transaction. Keeping
//! them here (no I/O, no clock) means the embedded and PostgreSQL stores cannot
//! drift apart, and the rules are testable without a database.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    describe, Heartbeat, Json, Lease, NewEvent, PutObject, RecordOutcome, RolloutState, StoreError,
    StoredHeartbeat, UnixMillis,
};
use crate::store::error::Result;

/// Longest accepted name: a Kubernetes DNS subdomain.
const MAX_NAME: usize = 253;

/// An object row as both backends keep it. A deleted object stays as a
/// tombstone (`deleted`, spec and status cleared) so that its generation is not
/// reused when it is re-created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ObjectRow {
    pub spec: Json,
    pub status: Option<Json>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub generation: i64,
    pub resource_version: u64,
    pub updated_at: UnixMillis,
    pub deleted: bool,
}

impl ObjectRow {
    fn live(&self) -> bool {
        !self.deleted
    }
}

/// The version a caller must name to update `current` (0: absent or deleted).
fn live_version(current: Option<&ObjectRow>) -> u64 {
    current
        .filter(|r| r.live())
        .map_or(0, |r| r.resource_version)
}

/// Names are keys in both backends (`Kind/name` in the embedded store), so `/`
/// and control characters are refused along with empty and over-long names.
pub(crate) fn validate_name(what: &str, field: &str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some(format!("{field} is empty"))
    } else if name.len() > MAX_NAME {
        Some(format!(
            "{field} is {} bytes long, at most {MAX_NAME} allowed",
            name.len()
        ))
    } else if name.contains('/') || name.chars().any(char::is_control) {
        Some(format!(
            "{field} {name:?} contains '/' or a control character"
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::Invalid {
            what: what.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Optimistic concurrency check shared by objects and rollout state.
pub(crate) fn check_expected(what: &str, expected: Option<u64>, found: u64) -> Result<()> {
    match expected {
        Some(expected) if expected != found => Err(StoreError::Conflict {
            what: what.to_owned(),
            expected,
            found,
        }),
        _ => Ok(()),
    }
}

/// What a put of a desired object writes: `None` if nothing changes. The caller
/// stamps `resource_version` on the returned row.
pub(crate) fn put_object(
    current: Option<&ObjectRow>,
    put: &PutObject,
    now: UnixMillis,
) -> Result<Option<ObjectRow>> {
    let what = describe(put.kind, &put.name);
    validate_name(&what, "metadata.name", &put.name)?;
    if !put.spec.is_object() {
        return Err(StoreError::Invalid {
            what,
            reason: "spec must be a JSON object".into(),
        });
    }
    check_expected(&what, put.expected_version, live_version(current))?;
    match current {
        Some(row) if row.live() => {
            let spec_changed = row.spec != put.spec;
            if !spec_changed && row.labels == put.labels && row.annotations == put.annotations {
                return Ok(None);
            }
            Ok(Some(ObjectRow {
                spec: put.spec.clone(),
                status: row.status.clone(),
                labels: put.labels.clone(),
                annotations: put.annotations.clone(),
                // Metadata-only changes keep the generation: nodes and
                // `observedGeneration` care about the spec alone.
                generation: row.generation + i64::from(spec_changed),
                resource_version: row.resource_version,
                updated_at: now,
                deleted: false,
            }))
        }
        // Absent, or a tombstone: continue above the old generation.
        _ => Ok(Some(ObjectRow {
            spec: put.spec.clone(),
            status: None,
            labels: put.labels.clone(),
            annotations: put.annotations.clone(),
            generation: current.map_or(0, |r| r.generation) + 1,
            resource_version: 0,
            updated_at: now,
            deleted: false,
        })),
    }
}

/// What a status write stores: `None` if the status is already that value.
pub(crate) fn put_status(
    what: &str,
    current: Option<&ObjectRow>,
    status: &Json,
    expected: Option<u64>,
    now: UnixMillis,
) -> Result<Option<ObjectRow>> {
    let Some(row) = current.filter(|r| r.live()) else {
        return Err(StoreError::NotFound {
            what: what.to_owned(),
        });
    };
    check_expected(what, expected, row.resource_version)?;
    if row.status.as_ref() == Some(status) {
        return Ok(None);
    }
    Ok(Some(ObjectRow {
        status: Some(status.clone()),
        updated_at: now,
        ..row.clone()
    }))
}

/// The tombstone a delete writes: `None` if there was nothing to delete.
pub(crate) fn delete_object(
    what: &str,
    current: Option<&ObjectRow>,
    expected: Option<u64>,
    now: UnixMillis,
) -> Result<Option<ObjectRow>> {
    check_expected(what, expected, live_version(current))?;
    Ok(current.filter(|r| r.live()).map(|row| ObjectRow {
        spec: Json::Null,
        status: None,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        generation: row.generation,
        resource_version: row.resource_version,
        updated_at: now,
        deleted: true,
    }))
}

/// Whether a signed record may be published over what is stored.
pub(crate) fn put_record(
    what: &str,
    current: Option<(i64, &[u8])>,
    generation: i64,
    envelope: &[u8],
) -> Result<RecordOutcome> {
    if generation < 1 {
        return Err(StoreError::Invalid {
            what: what.to_owned(),
            reason: format!("record generation must be >= 1 (got {generation})"),
        });
    }
    if envelope.is_empty() {
        return Err(StoreError::Invalid {
            what: what.to_owned(),
            reason: "envelope is empty".into(),
        });
    }
    match current {
        None => Ok(RecordOutcome::Inserted),
        Some((stored, _)) if stored > generation => Err(StoreError::RecordRollback {
            what: what.to_owned(),
            stored,
            offered: generation,
        }),
        Some((stored, bytes)) if stored == generation && bytes == envelope => {
            Ok(RecordOutcome::Unchanged)
        }
        Some(_) => Ok(RecordOutcome::Replaced),
    }
}

/// The next rollout state row.
pub(crate) fn put_rollout_state(
    current: Option<&RolloutState>,
    name: &str,
    state: &Json,
    expected: Option<u64>,
    now: UnixMillis,
) -> Result<RolloutState> {
    let what = format!("rollout {name:?}");
    validate_name(&what, "rollout name", name)?;
    let found = current.map_or(0, |s| s.version);
    check_expected(&what, expected, found)?;
    Ok(RolloutState {
        name: name.to_owned(),
        state: state.clone(),
        version: found + 1,
        updated_at: now,
    })
}

pub(crate) fn validate_lease(lease: &Lease) -> Result<()> {
    let what = format!("lease {:?}", lease.id);
    validate_name(&what, "lease id", &lease.id)?;
    validate_name(&what, "lease rollout", &lease.rollout)?;
    validate_name(&what, "lease node", &lease.node)
}

pub(crate) fn validate_event(event: &NewEvent) -> Result<()> {
    if event.subject.is_empty() || event.reason.is_empty() {
        return Err(StoreError::Invalid {
            what: format!("event {:?}/{:?}", event.subject, event.reason),
            reason: "event subject and reason must not be empty".into(),
        });
    }
    Ok(())
}

/// Several heartbeats of one node in a batch, folded into one row update.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HeartbeatFold {
    pub node: String,
    pub body: Json,
    pub received_at: UnixMillis,
    pub first_seen: UnixMillis,
    pub count: u64,
}

/// Folds a batch per node, sorted by node. Sorting gives every writer the same
/// row-lock order in PostgreSQL (no deadlocks between intake replicas), and
/// folding avoids touching a row twice in one statement.
pub(crate) fn fold_heartbeats(batch: &[Heartbeat]) -> Result<Vec<HeartbeatFold>> {
    let mut folds: BTreeMap<&str, HeartbeatFold> = BTreeMap::new();
    for hb in batch {
        validate_name(&format!("heartbeat of {:?}", hb.node), "node", &hb.node)?;
        folds
            .entry(&hb.node)
            .and_modify(|f| {
                // `>=`: of two heartbeats stamped the same millisecond, the later
                // arrival wins.
                if hb.received_at >= f.received_at {
                    f.body = hb.body.clone();
                    f.received_at = hb.received_at;
                }
                f.first_seen = f.first_seen.min(hb.received_at);
                f.count += 1;
            })
            .or_insert_with(|| HeartbeatFold {
                node: hb.node.clone(),
                body: hb.body.clone(),
                received_at: hb.received_at,
                first_seen: hb.received_at,
                count: 1,
            });
    }
    Ok(folds.into_values().collect())
}

/// Merges a folded batch into the stored heartbeat (latest wins, all counted).
pub(crate) fn merge_heartbeat(
    current: Option<StoredHeartbeat>,
    fold: HeartbeatFold,
) -> StoredHeartbeat {
    match current {
        None => StoredHeartbeat {
            node: fold.node,
            body: fold.body,
            received_at: fold.received_at,
            first_seen: fold.first_seen,
            received_count: fold.count,
        },
        Some(mut hb) => {
            if fold.received_at >= hb.received_at {
                hb.body = fold.body;
                hb.received_at = fold.received_at;
            }
            hb.first_seen = hb.first_seen.min(fold.first_seen);
            hb.received_count += fold.count;
            hb
        }
    }
}

/// A leader lease row. `expires_at <= now` means nobody leads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaderRow {
    pub holder: String,
    pub term: u64,
    pub expires_at: UnixMillis,
}

pub(crate) fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn live_leader(current: Option<&LeaderRow>, now: UnixMillis) -> Option<&LeaderRow> {
    current.filter(|r| r.expires_at > now && !r.holder.is_empty())
}

/// The row to write if `holder` may lead; `None` if another holder's lease is live.
pub(crate) fn acquire_leadership(
    current: Option<&LeaderRow>,
    holder: &str,
    now: UnixMillis,
    ttl: Duration,
) -> Option<LeaderRow> {
    let expires_at = now.saturating_add(ttl_millis(ttl));
    match live_leader(current, now) {
        Some(live) if live.holder != holder => None,
        Some(live) => Some(LeaderRow {
            expires_at,
            ..live.clone()
        }),
        None => Some(LeaderRow {
            holder: holder.to_owned(),
            term: current.map_or(0, |r| r.term) + 1,
            expires_at,
        }),
    }
}

/// The extended row if `holder` still leads. An expired lease is not renewed
/// even if nobody took it: the holder may have paused past its expiry and must
/// re-acquire (new term) so its fencing token changes.
pub(crate) fn renew_leadership(
    current: Option<&LeaderRow>,
    holder: &str,
    now: UnixMillis,
    ttl: Duration,
) -> Option<LeaderRow> {
    live_leader(current, now)
        .filter(|live| live.holder == holder)
        .map(|live| LeaderRow {
            expires_at: now.saturating_add(ttl_millis(ttl)),
            ..live.clone()
        })
}

/// The expired row if `holder` leads (term kept, so the next leader gets term+1).
pub(crate) fn release_leadership(
    current: Option<&LeaderRow>,
    holder: &str,
    now: UnixMillis,
) -> Option<LeaderRow> {
    live_leader(current, now)
        .filter(|live| live.holder == holder)
        .map(|live| LeaderRow {
            expires_at: now,
            ..live.clone()
        })
}

pub(crate) fn live_leadership(
    election: &str,
    current: Option<&LeaderRow>,
    now: UnixMillis,
) -> Option<super::Leadership> {
    live_leader(current, now).map(|r| leadership(election, r))
}

pub(crate) fn leadership(election: &str, row: &LeaderRow) -> super::Leadership {
    super::Leadership {
        election: election.to_owned(),
        holder: row.holder.clone(),
        term: row.term,
        expires_at: row.expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric_schemas::kinds::Kind;
    use serde_json::json;

    fn put(spec: Json) -> PutObject {
        PutObject::new(Kind::FabricNode, "n1", spec)
    }

    #[test]
    fn identical_put_is_a_noop_and_label_change_keeps_generation() {
        let first = put_object(None, &put(json!({"a": 1})), 1).unwrap().unwrap();
        assert_eq!(first.generation, 1);
        assert_eq!(
            put_object(Some(&first), &put(json!({"a": 1})), 2).unwrap(),
            None
        );
        let mut relabel = put(json!({"a": 1}));
        relabel.labels.insert("area".into(), "eu".into());
        let relabeled = put_object(Some(&first), &relabel, 3).unwrap().unwrap();
        assert_eq!(relabeled.generation, 1);
        let changed = put_object(Some(&first), &put(json!({"a": 2})), 4)
            .unwrap()
            .unwrap();
        assert_eq!(changed.generation, 2);
    }

    #[test]
    fn recreated_object_continues_above_its_tombstone_generation() {
        let mut row = put_object(None, &put(json!({"a": 1})), 1).unwrap().unwrap();
        row.generation = 7;
        row.resource_version = 3;
        let tomb = delete_object("x", Some(&row), None, 2).unwrap().unwrap();
        let again = put_object(Some(&tomb), &put(json!({"a": 1})).expect_version(0), 3)
            .unwrap()
            .unwrap();
        assert_eq!(again.generation, 8);
    }

    #[test]
    fn expired_leader_cannot_renew_and_takeover_bumps_term() {
        let ttl = Duration::from_millis(100);
        let a = acquire_leadership(None, "a", 0, ttl).unwrap();
        assert_eq!(a.term, 1);
        assert_eq!(acquire_leadership(Some(&a), "b", 50, ttl), None);
        assert_eq!(renew_leadership(Some(&a), "a", 150, ttl), None);
        let b = acquire_leadership(Some(&a), "b", 150, ttl).unwrap();
        assert_eq!((b.holder.as_str(), b.term), ("b", 2));
    }

    #[test]
    fn folding_keeps_latest_body_and_counts_all() {
        let hb = |t, v| Heartbeat {
            node: "n".into(),
            body: json!({"v": v}),
            received_at: t,
        };
        let folds = fold_heartbeats(&[hb(5, 1), hb(3, 2), hb(5, 3)]).unwrap();
        assert_eq!(folds.len(), 1);
        assert_eq!(folds[0].body, json!({"v": 3}));
        assert_eq!((folds[0].first_seen, folds[0].count), (3, 3));
    }
}
