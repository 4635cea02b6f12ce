//! The per-node runtime.
//!
//! It will join the fabric, keep the distributed directory, heartbeat to the
//! Control API and run the updater plane (hints, `update-trigger.json`, the
//! durable update journal and its states).
