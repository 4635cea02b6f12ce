//! Record acceptance: the single, sans-IO rule every node applies before a
//! record may influence anything.
//!
//! Order of checks: structure, trust root validity, signer identity, role,
//! scope, time, generation, then cryptography. Cheap checks run first so that a
//! flood of junk costs no signature verifications; the batch path relies on it.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, VerifyingKey};

use crate::envelope::{DecodeError, Envelope};
use crate::kinds::{Kind, Spec};
use crate::scope::{Scope, ScopeTerm};
use crate::trust::{Role, TrustAnchor};

/// How far a record's `issued_at` may be ahead of our clock before it is
/// "not yet valid": tolerates ordinary NTP drift between nodes.
pub const MAX_CLOCK_SKEW_SECS: i64 = 30;

/// The key of a record in any store: kind and name.
pub type RecordKey = (Kind, String);

/// What a node already holds for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldRecord {
    /// Generation held; a lower offer is a rollback.
    pub generation: u64,
    /// SHA-256 of the held body; an offer at the same generation must match it.
    pub digest: [u8; 32],
    /// The held record's scope: a replacement must come from signers whose
    /// grants cover it too, so a narrowly scoped key cannot take over a record
    /// it could never have issued.
    pub scope: Scope,
}

impl HeldRecord {
    /// What a node holds once it has stored `envelope`.
    pub fn of(envelope: &Envelope) -> HeldRecord {
        HeldRecord {
            generation: envelope.record.generation,
            digest: envelope.digest(),
            scope: envelope.record.scope.clone(),
        }
    }
}

/// Read access to the records a node holds, for rollback checks.
pub trait HeldState {
    /// The record held under `kind` and `name`, if any.
    fn held(&self, kind: Kind, name: &str) -> Option<HeldRecord>;
}

impl HeldState for BTreeMap<RecordKey, HeldRecord> {
    fn held(&self, kind: Kind, name: &str) -> Option<HeldRecord> {
        self.get(&(kind, name.to_owned())).cloned()
    }
}

/// A node that holds nothing yet.
pub struct NothingHeld;

impl HeldState for NothingHeld {
    fn held(&self, _: Kind, _: &str) -> Option<HeldRecord> {
        None
    }
}

/// Why a record was refused. Every variant names what was wrong.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    /// Bad bytes or limits, a key signing twice, or a payload or scope unfit for the kind.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The trust root itself has expired, so nothing is accepted.
    #[error("trust root version {version} expired at {expires_at}; nothing can be accepted until it is renewed")]
    TrustRootExpired {
        /// Version of the expired trust root.
        version: u64,
        /// When it expired (Unix seconds).
        expires_at: i64,
    },
    /// A signer is not a key of the trust root.
    #[error("unknown signer {public_key}: not a key of the trust root")]
    UnknownSigner {
        /// The signer's public key, hex.
        public_key: String,
    },
    /// No signer holds the role this kind needs.
    #[error("wrong role for {kind}: needs a {required} signature, signed only by {signers:?}")]
    WrongRole {
        /// Kind of the refused record.
        kind: Kind,
        /// The role that kind needs.
        required: Role,
        /// Key ids of the signers, none of which holds `required`.
        signers: Vec<String>,
    },
    /// A signature does not verify.
    #[error("bad signature by key {key_id}")]
    BadSignature {
        /// Key id of the failing signer (hex public key if unknown).
        key_id: String,
    },
    /// Too few distinct keys of the required role signed.
    #[error("below threshold: {have} of {need} {role} signatures")]
    BelowThreshold {
        /// The role whose threshold was missed.
        role: Role,
        /// How many signers hold that role.
        have: u32,
        /// The trust root's threshold for it.
        need: u32,
    },
    /// The record's lifetime is over.
    #[error("expired at {expires_at} (now {now})")]
    Expired {
        /// The record's expiry (Unix seconds).
        expires_at: i64,
        /// The clock the check used (Unix seconds).
        now: i64,
    },
    /// `issued_at` is more than [`MAX_CLOCK_SKEW_SECS`] ahead of `now`.
    #[error("not yet valid: issued at {issued_at}, now {now}")]
    NotYetValid {
        /// The record's issue time (Unix seconds).
        issued_at: i64,
        /// The clock the check used (Unix seconds).
        now: i64,
    },
    /// Older than the generation already held.
    #[error("generation rollback: offered {offered}, already hold {held}")]
    GenerationRollback {
        /// Generation held.
        held: u64,
        /// Generation offered.
        offered: u64,
    },
    /// Same generation as the held record, different bytes.
    #[error("conflicting record at generation {generation}: same generation, different content")]
    ConflictingGeneration {
        /// The contested generation.
        generation: u64,
    },
    /// A signer's grant does not cover the record's scope, or the held record's.
    #[error("scope wider than key {key_id} may grant: {term} is outside its grant")]
    ScopeTooWide {
        /// The signer whose grant falls short.
        key_id: String,
        /// The scope term outside that grant.
        term: String,
    },
}

impl Rejection {
    /// Stable snake_case label, for counters and audit JSON.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::TrustRootExpired { .. } => "trust_root_expired",
            Rejection::UnknownSigner { .. } => "unknown_signer",
            Rejection::WrongRole { .. } => "wrong_role",
            Rejection::BadSignature { .. } => "bad_signature",
            Rejection::BelowThreshold { .. } => "below_threshold",
            Rejection::Expired { .. } => "expired",
            Rejection::NotYetValid { .. } => "not_yet_valid",
            Rejection::GenerationRollback { .. } => "generation_rollback",
            Rejection::ConflictingGeneration { .. } => "conflicting_generation",
            Rejection::ScopeTooWide { .. } => "scope_too_wide",
        }
    }
}

impl From<DecodeError> for Rejection {
    fn from(e: DecodeError) -> Self {
        Rejection::Malformed(e.to_string())
    }
}

/// Whether an accepted record is new to this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Novelty {
    /// Nothing was held under this kind and name.
    New,
    /// Newer than the held record, which it supersedes.
    Replaces {
        /// Generation of the record it replaces.
        previous_generation: u64,
    },
    /// Byte-identical to what we hold; nothing to store or forward.
    Duplicate,
}

/// A record that passed every check.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    /// The envelope as received; its body bytes are kept for relaying.
    pub envelope: Envelope,
    /// The payload, parsed as the record's kind.
    pub spec: Spec,
    /// The record digest: SHA-256 of the body.
    pub digest: [u8; 32],
    /// New, a replacement or a duplicate of what is held.
    pub novelty: Novelty,
    /// Key ids of the signers, in envelope order.
    pub signers: Vec<String>,
    /// Every role whose threshold these signers meet (e.g. `recovery-admin`
    /// on an override lease).
    pub roles_met: BTreeSet<Role>,
}

/// Accepts or rejects one envelope. Pure: same inputs, same answer.
pub fn accept(
    trust: &TrustAnchor,
    held: &impl HeldState,
    envelope: &[u8],
    now: i64,
) -> Result<Accepted, Rejection> {
    let checked = precheck(trust, held, envelope, now)?;
    for (entry, key) in checked.envelope.signatures.iter().zip(&checked.keys) {
        let sig = Signature::from_bytes(&entry.signature);
        key.verify_strict(&checked.envelope.body, &sig)
            .map_err(|_| Rejection::BadSignature {
                key_id: key_id(trust, &entry.public_key),
            })?;
    }
    Ok(checked.accepted)
}

/// Accepts many envelopes at once with one batched signature verification.
///
/// Results are in input order and equal to calling [`accept`] on each against
/// the same `held` state (records in one batch do not see each other). If the
/// batch fails, each candidate is re-verified alone so one bad signature
/// rejects only its own envelope.
pub fn accept_batch(
    trust: &TrustAnchor,
    held: &impl HeldState,
    envelopes: &[&[u8]],
    now: i64,
) -> Vec<Result<Accepted, Rejection>> {
    let mut results: Vec<Result<Prechecked, Rejection>> = envelopes
        .iter()
        .map(|e| precheck(trust, held, e, now))
        .collect();
    let mut messages: Vec<&[u8]> = Vec::new();
    let mut signatures = Vec::new();
    let mut keys = Vec::new();
    for p in results.iter().flatten() {
        for (entry, key) in p.envelope_sigs() {
            messages.push(&p.envelope.body);
            signatures.push(Signature::from_bytes(&entry.signature));
            keys.push(*key);
        }
    }
    let batch_ok =
        !messages.is_empty() && ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok();
    results
        .drain(..)
        .map(|r| {
            let p = r?;
            if !batch_ok {
                for (entry, key) in p.envelope_sigs() {
                    let sig = Signature::from_bytes(&entry.signature);
                    key.verify_strict(&p.envelope.body, &sig).map_err(|_| {
                        Rejection::BadSignature {
                            key_id: key_id(trust, &entry.public_key),
                        }
                    })?;
                }
            }
            Ok(p.accepted)
        })
        .collect()
}

struct Prechecked {
    accepted: Accepted,
    keys: Vec<VerifyingKey>,
}

impl Prechecked {
    fn envelope_sigs(
        &self,
    ) -> impl Iterator<Item = (&crate::envelope::SignatureEntry, &VerifyingKey)> {
        self.accepted.envelope.signatures.iter().zip(&self.keys)
    }
}

impl std::ops::Deref for Prechecked {
    type Target = Accepted;
    fn deref(&self) -> &Accepted {
        &self.accepted
    }
}

fn key_id(trust: &TrustAnchor, pk: &[u8; 32]) -> String {
    trust
        .key(pk)
        .map(|k| k.id.clone())
        .unwrap_or_else(|| hex::encode(pk))
}

/// Every check except signature verification.
fn precheck(
    trust: &TrustAnchor,
    held: &impl HeldState,
    bytes: &[u8],
    now: i64,
) -> Result<Prechecked, Rejection> {
    let envelope = Envelope::decode(bytes)?;
    if now >= trust.expires_at {
        return Err(Rejection::TrustRootExpired {
            version: trust.version,
            expires_at: trust.expires_at,
        });
    }
    let record = &envelope.record;
    let mut seen = BTreeSet::new();
    let mut signers = Vec::with_capacity(envelope.signatures.len());
    let mut role_counts: BTreeMap<Role, u32> = BTreeMap::new();
    for entry in &envelope.signatures {
        if !seen.insert(entry.public_key) {
            return Err(Rejection::Malformed(format!(
                "key {} signed twice",
                key_id(trust, &entry.public_key)
            )));
        }
        let known = trust
            .key(&entry.public_key)
            .ok_or_else(|| Rejection::UnknownSigner {
                public_key: hex::encode(entry.public_key),
            })?;
        for role in &known.roles {
            *role_counts.entry(*role).or_default() += 1;
        }
        signers.push(known);
    }
    let required = Role::required_for(record.kind);
    let have = role_counts.get(&required).copied().unwrap_or(0);
    if have == 0 {
        return Err(Rejection::WrongRole {
            kind: record.kind,
            required,
            signers: signers.iter().map(|k| k.id.clone()).collect(),
        });
    }
    let need = trust.threshold(required);
    if have < need {
        return Err(Rejection::BelowThreshold {
            role: required,
            have,
            need,
        });
    }
    // Every signer vouches for the record, so every signer's grant must cover its scope.
    for k in &signers {
        if let Some(term) = record.scope.first_uncovered(&k.grant) {
            return Err(Rejection::ScopeTooWide {
                key_id: k.id.clone(),
                term: term.to_string(),
            });
        }
    }
    let held_record = held.held(record.kind, &record.name);
    if let Some(h) = &held_record {
        for k in &signers {
            if let Some(term) = h.scope.first_uncovered(&k.grant) {
                return Err(Rejection::ScopeTooWide {
                    key_id: k.id.clone(),
                    term: format!("{term} (scope of the record it would replace)"),
                });
            }
        }
    }
    if record.issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Err(Rejection::NotYetValid {
            issued_at: record.issued_at,
            now,
        });
    }
    if record.expires_at <= now {
        return Err(Rejection::Expired {
            expires_at: record.expires_at,
            now,
        });
    }
    let digest = envelope.digest();
    let novelty = match held_record {
        None => Novelty::New,
        Some(h) if record.generation < h.generation => {
            return Err(Rejection::GenerationRollback {
                held: h.generation,
                offered: record.generation,
            })
        }
        Some(h) if record.generation == h.generation && digest != h.digest => {
            return Err(Rejection::ConflictingGeneration {
                generation: record.generation,
            })
        }
        Some(h) if record.generation == h.generation => Novelty::Duplicate,
        Some(h) => Novelty::Replaces {
            previous_generation: h.generation,
        },
    };
    let spec = record.spec()?;
    check_spec_scope(&spec, record)?;
    let keys = envelope.verifying_keys()?;
    let roles_met = Role::ALL
        .into_iter()
        .filter(|r| role_counts.get(r).copied().unwrap_or(0) >= trust.threshold(*r))
        .collect();
    let signer_ids = signers.iter().map(|k| k.id.clone()).collect();
    Ok(Prechecked {
        accepted: Accepted {
            envelope,
            spec,
            digest,
            novelty,
            signers: signer_ids,
            roles_met,
        },
        keys,
    })
}

/// What a scope may say depends on the kind:
/// - a node record's terms must name its own area, site, NAT group or node,
///   so a key scoped to `area:eu` cannot publish a node claiming another area;
/// - an update intent scoped to areas may only target those areas;
/// - service records, rollout policies and trust roots are fleet-wide (`*`):
///   a narrower key must not be able to redirect a service for everyone.
fn check_spec_scope(spec: &Spec, record: &crate::envelope::Record) -> Result<(), Rejection> {
    let any = record.scope.terms() == [ScopeTerm::Any];
    match spec {
        Spec::FabricNode(node) => {
            let ok = record.scope.terms().iter().all(|t| match t {
                ScopeTerm::Any => true,
                ScopeTerm::Area(a) => *a == node.area,
                ScopeTerm::Site(s) => *s == node.site_id,
                ScopeTerm::NatGroup(n) => *n == node.nat_group,
                ScopeTerm::Node(n) => *n == record.name,
            });
            if ok {
                Ok(())
            } else {
                Err(Rejection::Malformed(format!(
                    "scope {} does not match node {:?} (area {}, site {}, nat {})",
                    record.scope, record.name, node.area, node.site_id, node.nat_group
                )))
            }
        }
        Spec::UpdateIntent(intent) if !any => {
            let areas: Vec<&String> = record
                .scope
                .terms()
                .iter()
                .filter_map(|t| match t {
                    ScopeTerm::Area(a) => Some(a),
                    _ => None,
                })
                .collect();
            let t = &intent.target;
            let ok = areas.len() == record.scope.terms().len()
                && !t.all
                && !t.areas.is_empty()
                && t.areas.iter().all(|a| areas.contains(&a));
            if ok {
                Ok(())
            } else {
                Err(Rejection::Malformed(format!(
                    "an UpdateIntent scoped {} must target only those areas (target.areas {:?})",
                    record.scope, t.areas
                )))
            }
        }
        Spec::ServiceRecord(_) | Spec::RolloutPolicy(_) | Spec::TrustRoot(_) if !any => {
            Err(Rejection::Malformed(format!(
                "a {} is fleet-wide: its scope must be *, not {}",
                record.kind, record.scope
            )))
        }
        _ => Ok(()),
    }
}
