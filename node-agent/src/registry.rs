//! Registry runtime status (seed P1): is this node resolving the core services
//! from verified records and live providers?
//!
//! Pure: inputs are the directory, probe results and the time.

use std::collections::BTreeMap;

use fabric_schemas::kinds::CORE_SERVICES;
use serde::{Deserialize, Serialize};

use crate::directory::Directory;

/// `missing`: no core service record held. `candidate_only`: records held but
/// not every core service has a provider that answered a live probe.
/// `active`: every core service resolves to a verified, unexpired record whose
/// provider answered a live probe.
///
/// A provider that answered once stays a verified provider (the fact is kept in
/// the peer cache): losing it later lowers it in `resolve`'s ranking but does
/// not demote the registry, because the fleet must keep working when its
/// control edge disappears. Expiry or removal of the record does demote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistryStatus {
    /// No core service record is held.
    Missing,
    /// Core service records are held, but not every core service has a
    /// provider that answered a live probe.
    CandidateOnly,
    /// Every core service resolves to a verified, unexpired record with a
    /// provider that answered a live probe.
    Active,
}

impl RegistryStatus {
    /// The status as reported (`missing`, `candidate_only`, `active`), the
    /// same spelling as its serde form.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryStatus::Missing => "missing",
            RegistryStatus::CandidateOnly => "candidate_only",
            RegistryStatus::Active => "active",
        }
    }
}

/// The outcome of one live probe of a provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Provider node name.
    pub target: String,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The provider answered (or is this node itself).
    pub ok: bool,
    /// Milliseconds from sending the probe to the answer; only when `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<u64>,
    /// Why the probe failed (`timed out`, a channel error); only when not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What is known about probing one provider.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeState {
    /// The latest probe, successful or not.
    pub last: Option<ProbeResult>,
    /// Unix milliseconds of the last successful probe, ever.
    pub last_ok_ms: Option<u64>,
    /// Round-trip time of the last successful probe, in milliseconds.
    pub rtt_ms: Option<u64>,
}

impl ProbeState {
    /// Takes in one probe outcome: it becomes `last`, and a success also
    /// updates `last_ok_ms` and `rtt_ms`.
    pub fn record(&mut self, p: ProbeResult) {
        if p.ok {
            self.last_ok_ms = Some(p.at_ms);
            self.rtt_ms = p.rtt_ms;
        }
        self.last = Some(p);
    }

    fn live(&self, now_ms: u64) -> bool {
        self.last
            .as_ref()
            .is_some_and(|p| p.ok && now_ms.saturating_sub(p.at_ms) <= PROBE_FRESH_MS)
    }
}

/// The P1 observability report, spelled as the seed spells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryReport {
    /// The registry runtime status (`missing`, `candidate_only`, `active`).
    pub status: RegistryStatus,
    /// Service records with at least one live provider.
    pub active_records: usize,
    /// Service records held whose providers have not (recently) answered.
    pub candidate_records: usize,
    /// Core service -> verified providers, live ones first.
    pub resolved_core_services: BTreeMap<String, Vec<String>>,
    /// The latest successful probe of a provider; until one succeeds, the
    /// first failed one.
    pub last_live_probe: Option<ProbeResult>,
}

/// A probe older than this no longer proves a provider alive.
pub const PROBE_FRESH_MS: u64 = 30_000;

/// Verified providers of `service`, best first: currently live ones (by RTT,
/// then name), then those that answered before but not recently.
pub fn resolve(
    dir: &Directory,
    probes: &BTreeMap<String, ProbeState>,
    service: &str,
    now_ms: u64,
) -> Vec<String> {
    let Some(entry) = dir.services.get(service) else {
        return Vec::new();
    };
    if entry.expires_at.saturating_mul(1000) <= now_ms as i64 {
        return Vec::new();
    }
    let mut verified: Vec<(bool, u64, &String)> = entry
        .spec
        .providers
        .iter()
        .filter(|p| dir.nodes.contains_key(*p))
        .filter_map(|p| {
            let st = probes.get(p)?;
            st.last_ok_ms?;
            Some((!st.live(now_ms), st.rtt_ms.unwrap_or(u64::MAX), p))
        })
        .collect();
    verified.sort();
    verified.into_iter().map(|(_, _, p)| p.clone()).collect()
}

/// The registry report from the directory and probe states at `now_ms`:
/// counts of active and candidate service records, the resolved core
/// services and the resulting [`RegistryStatus`]; `last_live_probe` is
/// passed through.
pub fn report(
    dir: &Directory,
    probes: &BTreeMap<String, ProbeState>,
    last_live_probe: Option<&ProbeResult>,
    now_ms: u64,
) -> RegistryReport {
    let mut active_records = 0;
    let mut candidate_records = 0;
    for service in dir.services.keys() {
        if resolve(dir, probes, service, now_ms).is_empty() {
            candidate_records += 1;
        } else {
            active_records += 1;
        }
    }
    let mut resolved = BTreeMap::new();
    let mut all_core = true;
    let mut any_core_record = false;
    for s in CORE_SERVICES {
        any_core_record |= dir.services.contains_key(s);
        let live = resolve(dir, probes, s, now_ms);
        all_core &= !live.is_empty();
        if !live.is_empty() {
            resolved.insert(s.to_owned(), live);
        }
    }
    let status = if all_core {
        RegistryStatus::Active
    } else if any_core_record {
        RegistryStatus::CandidateOnly
    } else {
        RegistryStatus::Missing
    };
    RegistryReport {
        status,
        active_records,
        candidate_records,
        resolved_core_services: resolved,
        last_live_probe: last_live_probe.cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{NodeEntry, ServiceEntry};
    use fabric::topology::NodeId;
    use fabric_schemas::kinds::{FabricNodeSpec, ServiceRecordSpec};

    fn dir(services: &[(&str, &[&str])]) -> Directory {
        let mut d = Directory::default();
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            d.nodes.insert(
                n.to_string(),
                NodeEntry {
                    name: n.to_string(),
                    node_id: NodeId([i as u8; 32]),
                    spec: FabricNodeSpec {
                        area: "x".into(),
                        site_id: "s".into(),
                        locality_group: "l".into(),
                        nat_group: "g".into(),
                        node_id: None,
                        roles: vec![],
                        endpoints: vec![],
                        critical: false,
                        resilience_target: None,
                    },
                    generation: 1,
                    expires_at: 10_000,
                },
            );
        }
        for (s, providers) in services {
            d.services.insert(
                s.to_string(),
                ServiceEntry {
                    record_name: s.to_string(),
                    spec: ServiceRecordSpec {
                        service: s.to_string(),
                        providers: providers.iter().map(|p| p.to_string()).collect(),
                    },
                    generation: 1,
                    expires_at: 10_000,
                },
            );
        }
        d
    }

    fn probe(target: &str, at_ms: u64, ok: bool, rtt: u64) -> ProbeResult {
        ProbeResult {
            target: target.into(),
            at_ms,
            ok,
            rtt_ms: ok.then_some(rtt),
            error: (!ok).then(|| "timeout".into()),
        }
    }

    fn ok(target: &str, at_ms: u64, rtt: u64) -> (String, ProbeState) {
        let mut st = ProbeState::default();
        st.record(probe(target, at_ms, true, rtt));
        (target.to_owned(), st)
    }

    const CORE: [(&str, &[&str]); 3] = [
        ("control-api", &["a"]),
        ("update-store", &["b", "c"]),
        ("update-cache", &["c"]),
    ];

    #[test]
    fn no_core_records_is_missing() {
        let r = report(&dir(&[]), &BTreeMap::new(), None, 1000);
        assert_eq!(r.status, RegistryStatus::Missing);
    }

    #[test]
    fn records_without_live_providers_are_candidate_only() {
        let r = report(&dir(&CORE), &BTreeMap::new(), None, 1000);
        assert_eq!(r.status, RegistryStatus::CandidateOnly);
        assert_eq!(r.candidate_records, 3);
        assert_eq!(r.active_records, 0);
    }

    #[test]
    fn every_core_service_live_is_active_and_resolve_ranks_by_rtt() {
        let probes: BTreeMap<_, _> = [ok("a", 900, 5), ok("b", 900, 9), ok("c", 900, 2)].into();
        let r = report(&dir(&CORE), &probes, None, 1000);
        assert_eq!(r.status, RegistryStatus::Active);
        assert_eq!(r.resolved_core_services["update-store"], vec!["c", "b"]);
        assert_eq!(
            resolve(&dir(&CORE), &probes, "update-store", 1000),
            vec!["c", "b"]
        );
    }

    #[test]
    fn a_provider_that_never_answered_does_not_count() {
        let mut probes: BTreeMap<_, _> = [ok("a", 900, 5), ok("b", 900, 9)].into();
        probes
            .entry("c".into())
            .or_insert_with(ProbeState::default)
            .record(probe("c", 900, false, 0));
        let r = report(&dir(&CORE), &probes, None, 1000);
        assert_eq!(
            r.status,
            RegistryStatus::CandidateOnly,
            "update-cache has no verified provider"
        );
        assert_eq!(r.candidate_records, 1);
    }

    #[test]
    fn losing_a_verified_provider_lowers_its_rank_but_keeps_the_registry_active() {
        let mut probes: BTreeMap<_, _> = [ok("a", 900, 5), ok("b", 900, 1), ok("c", 900, 9)].into();
        let later = 900 + PROBE_FRESH_MS + 1;
        probes
            .get_mut("b")
            .expect("b")
            .record(probe("b", later, false, 0));
        probes
            .get_mut("c")
            .expect("c")
            .record(probe("c", later, true, 9));
        let r = report(&dir(&CORE), &probes, None, later);
        assert_eq!(r.status, RegistryStatus::Active);
        assert_eq!(
            resolve(&dir(&CORE), &probes, "update-store", later),
            vec!["c", "b"]
        );
    }

    #[test]
    fn expired_service_records_resolve_to_nothing() {
        let probes: BTreeMap<_, _> = [ok("a", 10_000_000, 1)].into();
        assert!(resolve(&dir(&CORE), &probes, "control-api", 10_000_000).is_empty());
    }
}
