//! A trust root in the form `accept` works with: keys indexed by public key,
//! roles resolved, expiry as Unix seconds. Built once, checked strictly.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::kinds::{Kind, TrustRootSpec};
use crate::scope::ScopeTerm;
use crate::time::parse_rfc3339;

/// The four signing roles of the trust model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Signs trust-root versions.
    Root,
    /// Signs node and service records, update intents and rollout policies.
    Control,
    /// Signs rollout leases.
    Orchestrator,
    /// Co-signs overrides such as a farm-wide start.
    RecoveryAdmin,
}

impl Role {
    /// Every role, in order.
    pub const ALL: [Role; 4] = [
        Role::Root,
        Role::Control,
        Role::Orchestrator,
        Role::RecoveryAdmin,
    ];

    /// The role's name as the trust root spells it (kebab-case).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Control => "control",
            Role::Orchestrator => "orchestrator",
            Role::RecoveryAdmin => "recovery-admin",
        }
    }

    /// The role whose threshold must be met for a record of `kind`.
    pub fn required_for(kind: Kind) -> Role {
        match kind {
            Kind::FabricNode | Kind::ServiceRecord | Kind::UpdateIntent | Kind::RolloutPolicy => {
                Role::Control
            }
            Kind::RolloutLease => Role::Orchestrator,
            Kind::TrustRoot => Role::Root,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One key the trust root knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownKey {
    /// The key's id in the trust root.
    pub id: String,
    /// Roles whose key list names this key.
    pub roles: BTreeSet<Role>,
    /// Scope terms the key may sign for (`*` when the spec lists none).
    pub grant: Vec<ScopeTerm>,
}

/// Why a trust-root spec cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustRootError {
    /// A key's `publicKey` is not a usable ed25519 key.
    #[error("keys[{index}].publicKey: {reason}")]
    PublicKey {
        /// Position of the key in `keys`.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Two keys share an id.
    #[error("keys[{index}].id: duplicate key id {id:?}")]
    DuplicateId {
        /// Position of the second key in `keys`.
        index: usize,
        /// The shared id.
        id: String,
    },
    /// The same public key is listed twice.
    #[error("keys[{index}].publicKey: the same key is listed twice")]
    DuplicateKey {
        /// Position of the second listing in `keys`.
        index: usize,
    },
    /// A key's scope term does not parse.
    #[error("keys[{index}].scope[{term}]: {reason}")]
    Scope {
        /// Position of the key in `keys`.
        index: usize,
        /// Position of the term in its `scope`.
        term: usize,
        /// Why it does not parse.
        reason: String,
    },
    /// A role names a key id that `keys` does not have.
    #[error("roles.{role}.keyIds: unknown key id {id:?}")]
    UnknownKeyId {
        /// The role naming it.
        role: Role,
        /// The unknown id.
        id: String,
    },
    /// A role's threshold is 0 or above its number of keys.
    #[error("roles.{role}.threshold: {threshold} with {keys} keys (need 1 <= threshold <= keys)")]
    Threshold {
        /// The role concerned.
        role: Role,
        /// Its threshold.
        threshold: u32,
        /// Its number of distinct keys.
        keys: usize,
    },
    /// `expiresAt` is not an RFC 3339 timestamp.
    #[error("expiresAt: {0}")]
    Expiry(String),
}

/// A usable trust root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustAnchor {
    /// The spec's version; nodes only move to a higher one.
    pub version: u64,
    /// Unix seconds; at and after this instant nothing is accepted.
    pub expires_at: i64,
    keys: BTreeMap<[u8; 32], KnownKey>,
    thresholds: BTreeMap<Role, u32>,
}

impl TrustAnchor {
    /// Checks a trust-root spec strictly and indexes its keys by public key.
    pub fn from_spec(spec: &TrustRootSpec) -> Result<TrustAnchor, TrustRootError> {
        let expires_at =
            parse_rfc3339(&spec.expires_at).map_err(|e| TrustRootError::Expiry(e.to_string()))?;
        let mut keys = BTreeMap::new();
        let mut by_id: BTreeMap<&str, [u8; 32]> = BTreeMap::new();
        for (index, k) in spec.keys.iter().enumerate() {
            let mut pk = [0u8; 32];
            hex::decode_to_slice(&k.public_key, &mut pk).map_err(|_| {
                TrustRootError::PublicKey {
                    index,
                    reason: format!("{:?} is not 64 hex digits", k.public_key),
                }
            })?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).map_err(|_| {
                TrustRootError::PublicKey {
                    index,
                    reason: "not a valid ed25519 point".into(),
                }
            })?;
            // Small-order keys verify forged signatures; batch verification
            // would not catch them, so they never enter a trust root.
            if vk.is_weak() {
                return Err(TrustRootError::PublicKey {
                    index,
                    reason: "a weak (small-order) ed25519 key".into(),
                });
            }
            if by_id.insert(&k.id, pk).is_some() {
                return Err(TrustRootError::DuplicateId {
                    index,
                    id: k.id.clone(),
                });
            }
            let grant = if k.scope.is_empty() {
                vec![ScopeTerm::Any]
            } else {
                k.scope
                    .iter()
                    .enumerate()
                    .map(|(term, s)| {
                        s.parse::<ScopeTerm>().map_err(|e| TrustRootError::Scope {
                            index,
                            term,
                            reason: e.to_string(),
                        })
                    })
                    .collect::<Result<_, _>>()?
            };
            let known = KnownKey {
                id: k.id.clone(),
                roles: BTreeSet::new(),
                grant,
            };
            if keys.insert(pk, known).is_some() {
                return Err(TrustRootError::DuplicateKey { index });
            }
        }
        let mut thresholds = BTreeMap::new();
        let r = &spec.roles;
        for (role, rk) in [
            (Role::Root, &r.root),
            (Role::Control, &r.control),
            (Role::Orchestrator, &r.orchestrator),
            (Role::RecoveryAdmin, &r.recovery_admin),
        ] {
            let ids: BTreeSet<&String> = rk.key_ids.iter().collect();
            if rk.threshold == 0 || rk.threshold as usize > ids.len() {
                return Err(TrustRootError::Threshold {
                    role,
                    threshold: rk.threshold,
                    keys: ids.len(),
                });
            }
            for id in ids {
                let pk = by_id
                    .get(id.as_str())
                    .ok_or_else(|| TrustRootError::UnknownKeyId {
                        role,
                        id: id.clone(),
                    })?;
                if let Some(k) = keys.get_mut(pk) {
                    k.roles.insert(role);
                }
            }
            thresholds.insert(role, rk.threshold);
        }
        Ok(TrustAnchor {
            version: spec.version,
            expires_at,
            keys,
            thresholds,
        })
    }

    /// The trust-root key with this public key, if any.
    pub fn key(&self, public_key: &[u8; 32]) -> Option<&KnownKey> {
        self.keys.get(public_key)
    }

    /// How many distinct keys of `role` must sign.
    pub fn threshold(&self, role: Role) -> u32 {
        // from_spec fills every role, so the fallback is never taken; u32::MAX fails closed.
        self.thresholds.get(&role).copied().unwrap_or(u32::MAX)
    }
}
