//! The node-side update plane.
//!
//! - [`machine`]: the sans-IO update state machine (the seven states).
//! - [`intents`]: which intents and leases this node holds (pure).
//! - [`journal`]: the journal on disk, written atomically.
//! - [`artifact`]: the content-addressed artifact store (verified pieces, staging).
//! - [`exchange`]: the `artifact` service and the multi-source piece fetcher.
//! - [`updater`]: the updater task (wakes, journal first, fetch, apply request).
//! - [`faults`]: named pause points for crash tests.

pub mod artifact;
pub mod exchange;
pub use fabric_runtime::faults;
pub mod intents;
pub mod journal;
pub mod machine;
pub mod updater;
