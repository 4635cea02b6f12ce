//! The node-side update plane.
//!
//! - [`machine`]: the sans-IO update state machine (the seven states).
//! - [`journal`]: the journal on disk, written atomically.
//! - [`faults`]: named pause points for crash tests.

pub mod faults;
pub mod journal;
pub mod machine;
