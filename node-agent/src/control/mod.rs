//! The node side of the control session: heartbeats out, update hints and
//! canonical control endpoints back (seed P0, Step A).
//!
//! The wire types are the contract crate's (`fabric_proto`); this module is
//! what the node does with them:
//!
//! - [`decide`](mod@decide): a pure, level-triggered decision: given the live
//!   session, the canonical endpoints (the providers of the signed
//!   `control-api` record) and the session config, keep the session, connect,
//!   or reconnect. It compares *the live session* with *the canonical
//!   endpoints*; it never asks whether a config file changed. That is the fix
//!   for the seed's noop-rewrite restart bug: a control-endpoint rewrite that
//!   produced identical bytes left the node on its old (compat) session
//!   forever, because the restart was triggered by "config file changed".
//! - [`config`]: the node's `control.json` (fallback endpoints, compat token).
//! - [`link`]: how a heartbeat reaches the Control API: a fabric channel, the
//!   legacy compat HTTP contract, or an in-process link for a node co-located
//!   with the control plane (a transport cannot dial its own id).
//! - [`driver`]: the thin driver, a `fabric_runtime` reconcile loop with one
//!   key: every pass re-reads the config, asks its [`CanonicalSource`], calls
//!   [`decide()`], executes the action and sends one heartbeat on the live
//!   session; failures back off.
//! - [`heartbeat`]: builds the heartbeat body from the node's status.

pub mod config;
pub mod decide;
pub mod driver;
pub mod heartbeat;
pub mod link;

pub use config::{ControlConfigFile, ControlError, DEFAULT_MAX_FAILURES};
pub use decide::{canonical_from_directory, decide, LiveSession, SessionAction, SessionConfig};
pub use driver::{CanonicalSource, ControlDriver, ControlState};
pub use heartbeat::{heartbeat_from_status, HeartbeatExtras, HeartbeatSource, StatusHeartbeat};
pub use link::{LocalControl, LocalControlSlot};
