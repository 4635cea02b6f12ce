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
    pub fn new(trust: TrustAnchor) -> Self {
        RecordAdmission {
            trust,
            held: BTreeMap::new(),
            rejections: BTreeMap::new(),
        }
    }

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
        })
    }
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
