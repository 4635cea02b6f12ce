//! The one way every loop reports status: `observedGeneration` plus
//! Kubernetes conditions ([`ObjectStatus`]), with the Kubernetes rule that a
//! condition's `lastTransitionTime` moves only when its `status` changes.

use fabric_schemas::kinds::ObjectStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// `status` of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known (yet).
    Unknown,
}

impl ConditionStatus {
    /// The Kubernetes spelling (`True`, `False`, `Unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(b: bool) -> Self {
        if b {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// A condition to set: type, status, a CamelCase reason and a human message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCondition<'a> {
    /// The condition's type, e.g. `Ready`.
    pub type_: &'a str,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// A CamelCase reason.
    pub reason: &'a str,
    /// A sentence for people.
    pub message: &'a str,
    /// The generation the condition was computed for.
    pub observed_generation: Option<i64>,
}

/// Sets (adds or updates) a condition in `conditions`. `lastTransitionTime`
/// becomes `now` only when the condition is new or its `status` changed, so
/// an operator can tell how long something has been failing. Returns whether
/// anything changed (callers skip the status write when nothing did).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    new: NewCondition<'_>,
    now: Timestamp,
) -> bool {
    let status = new.status.as_str();
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(c) => {
            let mut changed = false;
            if c.status != status {
                c.status = status.to_owned();
                c.last_transition_time = Time(now);
                changed = true;
            }
            if c.reason != new.reason {
                c.reason = new.reason.to_owned();
                changed = true;
            }
            if c.message != new.message {
                c.message = new.message.to_owned();
                changed = true;
            }
            if c.observed_generation != new.observed_generation {
                c.observed_generation = new.observed_generation;
                changed = true;
            }
            changed
        }
        None => {
            conditions.push(Condition {
                type_: new.type_.to_owned(),
                status: status.to_owned(),
                reason: new.reason.to_owned(),
                message: new.message.to_owned(),
                observed_generation: new.observed_generation,
                last_transition_time: Time(now),
            });
            true
        }
    }
}

/// The condition of `type_`, if set.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is set to `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Reads the common status out of a stored status document (whatever else the
/// kind's status holds is preserved by [`merge_status`]). A missing or
/// unreadable status is treated as empty: the controller rewrites it.
pub fn read_status(doc: Option<&serde_json::Value>) -> ObjectStatus {
    doc.and_then(|d| serde_json::from_value(d.clone()).ok())
        .unwrap_or_default()
}

/// Writes `common` into a stored status document, keeping fields other
/// controllers own (for example `registryStatus` on a `FabricNode`).
pub fn merge_status(doc: Option<&serde_json::Value>, common: &ObjectStatus) -> serde_json::Value {
    let mut out = match doc {
        Some(serde_json::Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    match common.observed_generation {
        Some(g) => {
            out.insert("observedGeneration".into(), g.into());
        }
        None => {
            out.remove("observedGeneration");
        }
    }
    // Serialising `Condition` cannot fail (strings, an integer and a timestamp).
    let conditions = serde_json::to_value(&common.conditions).unwrap_or_default();
    out.insert("conditions".into(), conditions);
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid timestamp")
    }

    fn cond<'a>(status: bool, reason: &'a str, message: &'a str) -> NewCondition<'a> {
        NewCondition {
            type_: "Published",
            status: status.into(),
            reason,
            message,
            observed_generation: Some(1),
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut cs = Vec::new();
        assert!(set_condition(
            &mut cs,
            cond(false, "NodeIdMissing", "no id"),
            at(100)
        ));
        assert_eq!(cs[0].last_transition_time, Time(at(100)));
        // Same status, new message: changed, but the transition time stays.
        assert!(set_condition(
            &mut cs,
            cond(false, "NodeIdMissing", "still no id"),
            at(200)
        ));
        assert_eq!(cs[0].last_transition_time, Time(at(100)));
        // Identical: nothing changes.
        assert!(!set_condition(
            &mut cs,
            cond(false, "NodeIdMissing", "still no id"),
            at(300)
        ));
        // Status flips: the transition time moves.
        assert!(set_condition(
            &mut cs,
            cond(true, "Published", "ok"),
            at(400)
        ));
        assert_eq!(cs[0].last_transition_time, Time(at(400)));
        assert_eq!(cs.len(), 1);
        assert!(is_true(&cs, "Published"));
    }

    #[test]
    fn merge_keeps_fields_owned_by_others() {
        let doc = serde_json::json!({"registryStatus": "active", "observedGeneration": 1});
        let mut common = read_status(Some(&doc));
        assert_eq!(common.observed_generation, Some(1));
        common.observed_generation = Some(2);
        set_condition(&mut common.conditions, cond(true, "Published", "ok"), at(5));
        let merged = merge_status(Some(&doc), &common);
        assert_eq!(merged["registryStatus"], "active");
        assert_eq!(merged["observedGeneration"], 2);
        assert_eq!(merged["conditions"][0]["type"], "Published");
        assert_eq!(read_status(Some(&merged)), common);
    }
}
