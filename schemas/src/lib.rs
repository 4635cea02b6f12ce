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
