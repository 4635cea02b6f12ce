//! Shared helpers for Fabric's cross-crate integration tests (multi-node
//! fabrics on loopback, partitions, NAT in network namespaces). The tests
//! themselves live in `tests/tests/`.
