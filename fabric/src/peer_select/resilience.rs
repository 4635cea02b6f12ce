//! Resilience targets of critical nodes: the seed's "cross-area direct
//! resilience targets" as minimums over the P3 metrics.

use serde::{Deserialize, Serialize};

use super::metrics::PeerMetrics;

/// Minimum values a node must reach; `None` means no target for that metric.
/// Mirrors `resilienceTarget` of a `FabricNode` manifest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResilienceTarget {
    /// Least `external_area_ready_count`: other areas reached over a ready direct path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_area_ready_count: Option<u32>,
    /// Least `recovery_path_count`: peers outside the local area with a ready path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_path_count: Option<u32>,
    /// Least `direct_ready_count`: peers with a ready direct path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_ready_count: Option<u32>,
    /// Least `relay_ready_count`: peers reached only through a relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_ready_count: Option<u32>,
    /// Least `independent_ingress_ready_count`: distinct public edges, other than
    /// ours, behind which a peer has a ready path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub independent_ingress_ready_count: Option<u32>,
}

/// One of the seed's P3 metrics, serialized with the seed's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// `direct_ready_count`.
    DirectReadyCount,
    /// `relay_ready_count`.
    RelayReadyCount,
    /// `external_area_ready_count`.
    ExternalAreaReadyCount,
    /// `independent_ingress_ready_count`.
    IndependentIngressReadyCount,
    /// `recovery_path_count`.
    RecoveryPathCount,
}

impl Metric {
    /// Every metric, in the order reports list them.
    pub const ALL: [Metric; 5] = [
        Metric::DirectReadyCount,
        Metric::RelayReadyCount,
        Metric::ExternalAreaReadyCount,
        Metric::IndependentIngressReadyCount,
        Metric::RecoveryPathCount,
    ];

    /// The seed's name of the metric, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::DirectReadyCount => "direct_ready_count",
            Metric::RelayReadyCount => "relay_ready_count",
            Metric::ExternalAreaReadyCount => "external_area_ready_count",
            Metric::IndependentIngressReadyCount => "independent_ingress_ready_count",
            Metric::RecoveryPathCount => "recovery_path_count",
        }
    }

    /// This metric's value in `m`.
    pub fn of(self, m: &PeerMetrics) -> u32 {
        match self {
            Metric::DirectReadyCount => m.direct_ready_count,
            Metric::RelayReadyCount => m.relay_ready_count,
            Metric::ExternalAreaReadyCount => m.external_area_ready_count,
            Metric::IndependentIngressReadyCount => m.independent_ingress_ready_count,
            Metric::RecoveryPathCount => m.recovery_path_count,
        }
    }

    /// This metric's target in `t`, if it sets one.
    pub fn target(self, t: &ResilienceTarget) -> Option<u32> {
        match self {
            Metric::DirectReadyCount => t.direct_ready_count,
            Metric::RelayReadyCount => t.relay_ready_count,
            Metric::ExternalAreaReadyCount => t.external_area_ready_count,
            Metric::IndependentIngressReadyCount => t.independent_ingress_ready_count,
            Metric::RecoveryPathCount => t.recovery_path_count,
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A target the node does not meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnmetTarget {
    /// The metric that falls short.
    pub metric: Metric,
    /// Its target.
    pub wanted: u32,
    /// Its current value, below `wanted`.
    pub actual: u32,
}

/// The result of [`evaluate`]: every unmet target, in [`Metric::ALL`] order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResilienceReport {
    /// Targets missed; empty when all are met.
    pub unmet: Vec<UnmetTarget>,
}

impl ResilienceReport {
    /// Every target is met.
    pub fn is_met(&self) -> bool {
        self.unmet.is_empty()
    }
}

/// Compare metrics with a target: a metric misses when it is below its target.
pub fn evaluate(target: &ResilienceTarget, metrics: &PeerMetrics) -> ResilienceReport {
    let unmet = Metric::ALL
        .iter()
        .filter_map(|&metric| {
            let wanted = metric.target(target)?;
            let actual = metric.of(metrics);
            (actual < wanted).then_some(UnmetTarget {
                metric,
                wanted,
                actual,
            })
        })
        .collect();
    ResilienceReport { unmet }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resilience_evaluation_lists_each_unmet_target_with_seed_names() {
        let target = ResilienceTarget {
            external_area_ready_count: Some(2),
            recovery_path_count: Some(1),
            direct_ready_count: Some(3),
            relay_ready_count: None,
            independent_ingress_ready_count: Some(2),
        };
        let metrics = PeerMetrics {
            direct_ready_count: 3,
            relay_ready_count: 0,
            external_area_ready_count: 1,
            independent_ingress_ready_count: 1,
            recovery_path_count: 1,
        };
        let report = evaluate(&target, &metrics);
        assert_eq!(
            report.unmet,
            vec![
                UnmetTarget {
                    metric: Metric::ExternalAreaReadyCount,
                    wanted: 2,
                    actual: 1
                },
                UnmetTarget {
                    metric: Metric::IndependentIngressReadyCount,
                    wanted: 2,
                    actual: 1
                },
            ]
        );
        assert!(!report.is_met());
        let json = serde_json::to_value(&report).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"unmet": [
                {"metric": "external_area_ready_count", "wanted": 2, "actual": 1},
                {"metric": "independent_ingress_ready_count", "wanted": 2, "actual": 1},
            ]})
        );
    }

    #[test]
    fn resilience_evaluation_is_met_when_every_target_is_reached_or_absent() {
        let metrics = PeerMetrics {
            direct_ready_count: 2,
            relay_ready_count: 1,
            external_area_ready_count: 2,
            independent_ingress_ready_count: 2,
            recovery_path_count: 2,
        };
        assert!(evaluate(&ResilienceTarget::default(), &metrics).is_met());
        let exact = ResilienceTarget {
            external_area_ready_count: Some(2),
            recovery_path_count: Some(2),
            direct_ready_count: Some(2),
            relay_ready_count: Some(1),
            independent_ingress_ready_count: Some(2),
        };
        assert!(evaluate(&exact, &metrics).is_met());
        // One more on any metric is a miss: the comparison is "below", not "not above".
        for metric in Metric::ALL {
            let mut t = exact;
            let bumped = Some(metric.of(&metrics) + 1);
            match metric {
                Metric::DirectReadyCount => t.direct_ready_count = bumped,
                Metric::RelayReadyCount => t.relay_ready_count = bumped,
                Metric::ExternalAreaReadyCount => t.external_area_ready_count = bumped,
                Metric::IndependentIngressReadyCount => t.independent_ingress_ready_count = bumped,
                Metric::RecoveryPathCount => t.recovery_path_count = bumped,
            }
            let report = evaluate(&t, &metrics);
            assert_eq!(report.unmet.len(), 1, "{metric}");
            assert_eq!(report.unmet[0].metric, metric);
        }
    }

    #[test]
    fn resilience_target_deserializes_from_seed_names() {
        let t: ResilienceTarget =
            serde_json::from_str(r#"{"external_area_ready_count": 2, "recovery_path_count": 1}"#)
                .expect("deserialize");
        assert_eq!(t.external_area_ready_count, Some(2));
        assert_eq!(t.recovery_path_count, Some(1));
        assert_eq!(t.direct_ready_count, None);
    }
}
