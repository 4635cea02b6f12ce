//! The per-machine supervisor.
//!
//! It will run and restart the node-agent, own the binary slots (current and
//! previous), apply node-agent and host-agent phases under rollout leases, roll
//! back, and repair stale updater command lines from the live process state.
