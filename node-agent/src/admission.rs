//! The gossip core's admission rule, backed by `fabric_schemas::accept`: a
//! record enters the directory only if the trust root says so.

use std::collections::BTreeMap;

use fabric::gossip::{digest_of, Admission, AdmittedRecord, RecordKey, RejectReason};
use fabric_schemas::accept::NothingHeld;
use fabric_schemas::{accept, Envelope as SignedEnvelope, Rejection, TrustAnchor};

/// Admits envelopes through the foundation's acceptance rule and counts every
/// rejection by its precise reason (`unknown_signer`, `generation_rollback`, ...).
pub struct RecordAdmission {
    trust: TrustAnchor,
    rejections: BTreeMap<&'static str, u64>,
}

impl RecordAdmission {
    pub fn new(trust: TrustAnchor) -> Self {
        RecordAdmission {
            trust,
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

    /// Checks one envelope against what we hold (generation and digest of the
    /// whole envelope bytes, as the directory keys them).
    pub fn check(
        &mut self,
        bytes: &[u8],
        held: Option<(u64, [u8; 32])>,
        now_ms: u64,
    ) -> Result<AdmittedRecord, Rejection> {
        let now = (now_ms / 1000) as i64;
        // Rollback and conflict are judged on the bytes we hold; the record
        // body digest alone would miss a re-signed duplicate.
        if let Some((held_gen, held_digest)) = held {
            let env = SignedEnvelope::decode(bytes).map_err(Rejection::from)?;
            let g = env.record.generation;
            if g < held_gen {
                return Err(Rejection::GenerationRollback {
                    held: held_gen,
                    offered: g,
                });
            }
            if g == held_gen && digest_of(bytes) != held_digest {
                return Err(Rejection::ConflictingGeneration { generation: g });
            }
        }
        let acc = accept(&self.trust, &NothingHeld, bytes, now)?;
        let r = &acc.envelope.record;
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
        held: Option<(u64, [u8; 32])>,
        now_ms: u64,
    ) -> Result<AdmittedRecord, RejectReason> {
        self.check(bytes, held, now_ms).map_err(|r| {
            tracing::debug!(reason = r.reason(), error = %r, "record rejected");
            self.count(r.reason());
            gossip_reason(&r)
        })
    }
}
