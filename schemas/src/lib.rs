//! Fabric's declarative types, signed envelopes and record acceptance.
//!
//! - [`kinds`]: the custom resources of `fabric.dev/v1alpha1`.
//! - [`envelope`] and [`canonical`]: the signed, canonical byte form of a record.
//! - [`accept`](mod@accept): the one rule deciding whether a node takes a record.
//! - [`manifest`]: loading and validating operator manifests with precise errors.
//! - [`crd`]: CustomResourceDefinition generation and structural-schema checks.
//!
//! Everything here is pure: no sockets, no clocks (time is an argument), no
//! files except in [`manifest::load_path`].

pub mod accept;
pub mod canonical;
pub mod crd;
pub mod envelope;
pub mod keys;
pub mod kinds;
pub mod lease;
pub mod manifest;
pub mod scope;
pub mod time;
pub mod trust;

pub use accept::{accept, accept_batch, Accepted, HeldRecord, HeldState, Novelty, Rejection};
pub use envelope::{Envelope, Record};
pub use kinds::{Kind, Spec};
pub use scope::{Scope, ScopeTerm};
pub use trust::{Role, TrustAnchor};

/// Bits of a published record's generation taken by the publisher's
/// re-sign counter: a record of an object at generation `g` carries
/// `g << RESIGN_BITS | resigns`, so a re-signed record (a refreshed expiry)
/// supersedes the previous one and a spec change supersedes every re-sign.
/// The reconciler writes generations this way; nodes read the object's
/// generation back (`generation >> RESIGN_BITS`).
pub const RESIGN_BITS: u32 = 20;

/// Whether `s` is a sha256 digest as Fabric spells one everywhere (an
/// intent's `artifact.sha256`, artifact store folders, host-agent slots):
/// 64 lowercase hex digits. Anything else must not name a file.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
