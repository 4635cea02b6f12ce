//! Peer exchange: bounded push-pull gossip of signed directory records.
//!
//! What it is for: spreading opaque signed envelopes (node and service
//! records) so that every node holds the full directory without asking the
//! centre, within a fixed byte budget per round and per peer.
//!
//! What it is not for: interpreting records (that is [`Admission`], backed by
//! `fabric_schemas` in production), runtime observations (never gossiped), or
//! I/O. [`Gossip`] is a sans-IO state machine in the style of `quinn-proto`:
//! the driver feeds it datagrams, ticks and time, and sends what it returns.
//! [`sim`] drives the same core over a deterministic simulated network.
//!
//! See `docs/gossip.md` for the algorithm, budgets, wire format and the
//! simulator's results.

mod budget;
mod core;
mod record;
pub mod rng;
mod rumor;
pub mod sim;
mod store;
pub mod wire;

pub use self::budget::TokenBucket;
pub use self::core::{
    Accepted, Gossip, GossipConfig, GossipStats, Outgoing, Output, MESSAGE_TYPES,
};
pub use self::record::{
    digest_of, Admission, AdmittedRecord, Envelope, KeyHash, RecordKey, RejectReason,
    MAX_NAME_BYTES,
};
pub use self::store::Snapshot;
