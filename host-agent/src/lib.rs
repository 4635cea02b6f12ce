//! The per-machine supervisor of the node-agent.
//!
//! - [`slots`]: binaries in slots by digest, `current` / `previous` links
//!   swapped atomically.
//! - [`phase`]: the node-agent phase (readiness deadline, probation, commit
//!   or roll back), sans-IO.
//! - [`notify`]: the readiness channel (systemd notify protocol).
//! - [`agent`]: the driver: supervises the node-agent and applies what its
//!   updater asks for.
//!
//! See `docs/host-agent.md`.

pub mod agent;
pub mod notify;
pub mod phase;
pub mod slots;

pub use fabric_runtime::faults;
