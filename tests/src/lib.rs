//! Shared helpers for Fabric's cross-crate integration tests (multi-node
//! fabrics on loopback, partitions, NAT in network namespaces). The tests
//! themselves live in `tests/tests/`.
//!
//! - [`netns`]: namespaces, veths, bridges and nftables for live NAT labs.
//! - [`natnode`]: the `fabric-nat-node` binary's line protocol and a handle
//!   that runs one inside a namespace.

pub mod natnode;
pub mod netns;
