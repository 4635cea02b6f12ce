//! The gossip core's admission rule, backed by `fabric_schemas::accept`: a
//! record enters the directory only if the trust root says so.

use std::collections::BTreeMap;

use fabric::gossip::{Admission, AdmittedRecord, RecordKey, RejectReason};
use fabric_schemas::accept::{HeldRecord, RecordKey as SchemaKey};
use fabric_schemas::{accept, Novelty, Rejection, TrustAnchor};

/// Admits envelopes through the foundation's acceptance rule and counts every
/// rejection by its precise reason (`unknown_signer`, `generation_rollback`, ...).
///
/// It keeps what it admitted (generation, body digest, scope) per key so that
/// `accept` can refuse rollbacks, conflicting re-issues and replacements by a
/// signer whose grant does not cover the record being replaced.
pub struct RecordAdmission {
    trust: TrustAnchor,
    held: BTreeMap<SchemaKey, HeldRecord>,
    rejections: BTreeMap<&'static str, u64>,
}

impl RecordAdmission {
    /// An admission that trusts `trust` and holds no records yet.
    pub fn new(trust: TrustAnchor) -> Self {
        RecordAdmission {
            trust,
            held: BTreeMap::new(),
            rejections: BTreeMap::new(),
        }
    }

    /// The trust root every envelope is checked against.
    pub fn trust(&self) -> &TrustAnchor {
        &self.trust
    }

    /// Rejections so far, by `Rejection::reason()`.
    pub fn rejections(&self) -> &BTreeMap<&'static str, u64> {
        &self.rejections
    }

    fn count(&mut self, reason: &'static str) {
        *self.rejections.entry(reason).or_default() += 1;
    }

    /// Checks one envelope against what this node holds, and remembers it when
    /// it is new or newer.
    pub fn check(&mut self, bytes: &[u8], now_ms: u64) -> Result<AdmittedRecord, Rejection> {
        let now = (now_ms / 1000) as i64;
        let acc = accept(&self.trust, &self.held, bytes, now)?;
        let r = &acc.envelope.record;
        if acc.novelty != Novelty::Duplicate {
            self.held
                .insert((r.kind, r.name.clone()), HeldRecord::of(&acc.envelope));
        }
        Ok(AdmittedRecord {
            key: RecordKey::new(r.kind.code(), r.name.clone()),
            generation: r.generation,
            expires_at_ms: Some(expiry_ms(r.expires_at)),
        })
    }
}

/// A record's `expires_at` (Unix seconds) as the gossip core's milliseconds.
/// Every signed record expires, so there is no `None` here. A time before the
/// epoch clamps to 0 (already expired) rather than wrapping to the far future.
fn expiry_ms(expires_at: i64) -> u64 {
    u64::try_from(expires_at).unwrap_or(0).saturating_mul(1000)
}

/// How a precise rejection maps onto the gossip layer's coarser reasons.
pub fn gossip_reason(r: &Rejection) -> RejectReason {
    match r {
        Rejection::Malformed(_) => RejectReason::Malformed,
        Rejection::UnknownSigner { .. } | Rejection::BadSignature { .. } => RejectReason::Forged,
        Rejection::WrongRole { .. }
        | Rejection::BelowThreshold { .. }
        | Rejection::ScopeTooWide { .. }
        | Rejection::TrustRootExpired { .. } => RejectReason::Unauthorized,
        Rejection::Expired { .. } | Rejection::NotYetValid { .. } => RejectReason::Expired,
        Rejection::GenerationRollback { .. } => RejectReason::Stale,
        Rejection::ConflictingGeneration { .. } => RejectReason::Conflict,
    }
}

impl Admission for RecordAdmission {
    fn admit(
        &mut self,
        bytes: &[u8],
        _held: Option<(u64, [u8; 32])>,
        now_ms: u64,
    ) -> Result<AdmittedRecord, RejectReason> {
        // The core's own held generation/digest (over the whole envelope) is
        // checked by the core; ours is over the body and carries the scope.
        self.check(bytes, now_ms).map_err(|r| {
            tracing::debug!(reason = r.reason(), error = %r, "record rejected");
            self.count(r.reason());
            gossip_reason(&r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric_schemas::keys::{generate_trust_root, TrustRootPlan};
    use fabric_schemas::kinds::{ServiceRecordSpec, Spec};
    use fabric_schemas::trust::Role;
    use fabric_schemas::{Envelope, Record, Scope};

    #[test]
    fn admitted_record_carries_the_signed_expiry_in_milliseconds() {
        let now = 1_780_000_000i64;
        let (spec, keys) = generate_trust_root(&TrustRootPlan::single_keys(now + 86_400));
        let trust = TrustAnchor::from_spec(&spec).expect("trust root");
        let control = keys
            .iter()
            .find(|k| k.role == Role::Control)
            .expect("control key");
        let spec = Spec::ServiceRecord(ServiceRecordSpec {
            service: "update-store".into(),
            providers: vec!["n1".into()],
        });
        let rec =
            Record::new(&spec, "update-store", 3, now, now + 600, Scope::any()).expect("record");
        let bytes = Envelope::sign(rec, &[&control.key]).encode();

        let mut adm = RecordAdmission::new(trust);
        let now_ms = u64::try_from(now).expect("positive") * 1000;
        let got = adm.admit(&bytes, None, now_ms).expect("admitted");
        assert_eq!(got.generation, 3);
        assert_eq!(
            got.expires_at_ms,
            Some(u64::try_from(now + 600).expect("positive") * 1000)
        );
    }

    #[test]
    fn expiry_before_the_epoch_is_already_past_not_never() {
        assert_eq!(expiry_ms(-5), 0);
        assert_eq!(expiry_ms(i64::MAX), u64::MAX);
    }
}
