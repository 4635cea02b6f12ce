//! Shared fixtures of Fabric's tests and benches. A dev-dependency only:
//! nothing in a shipped binary links it (the architecture test checks).
//!
//! - [`heartbeat`]: a heartbeat of a healthy, fabric-only node, for tests
//!   and benches of the intake, the audit and the orchestrator to change the
//!   one field they are about.
//! - [`wait_until`]: the bounded poll every multi-node test waits with.
//!
//! A local fleet on loopback (`LocalFleet`) is product code (`fabricctl up`
//! runs one) and lives in `fabric-compose`; a point-to-point peer is
//! `fabric::path::PeerInfo::public`.
//!
//! This crate depends on the contract crate only, never on an agent or the
//! control plane, so any crate may use it without a dependency cycle.

use std::future::Future;
use std::time::{Duration, Instant};

use fabric_proto::heartbeat::{
    HeartbeatBody, RegistryRuntimeReport, UpdaterReport, UpdaterSubscription,
};

/// The node-agent version fixtures report unless a test says otherwise.
pub const AGENT_VERSION: &str = "0.3.0";

/// A heartbeat of a healthy node on the fabric-only contract: registry
/// `active`, `quic-udp`, updater alive with hint wake, no update attempt,
/// lease-capable.
pub fn heartbeat(node: &str, node_id: &str) -> HeartbeatBody {
    let mut hb = HeartbeatBody::new(node, node_id, AGENT_VERSION);
    hb.fabric_registry_runtime_report = RegistryRuntimeReport {
        status: "active".into(),
        ..Default::default()
    };
    hb.updater = UpdaterReport {
        subscription: UpdaterSubscription::Alive,
        supports_hint_wake: true,
        status_at_ms: None,
        update: None,
    };
    hb
}

/// [`heartbeat`] of synthetic node `n`: name `node-{n:04}`, a node id made
/// of `n` (64 hex digits), `sent_at_ms` = `seq` so a test can tell which
/// body was stored.
pub fn numbered_heartbeat(n: usize, seq: u64) -> HeartbeatBody {
    let mut hb = heartbeat(&format!("node-{n:04}"), &format!("{n:064x}"));
    hb.sent_at_ms = seq;
    hb
}

/// [`heartbeat`] as the JSON the intake stores, with the versions a node
/// runs.
pub fn heartbeat_json(node: &str, node_agent: &str, host_agent: Option<&str>) -> serde_json::Value {
    let mut hb = heartbeat(node, &"0".repeat(64));
    hb.agent_version = node_agent.to_owned();
    hb.host_agent_version = host_agent.map(str::to_owned);
    serde_json::to_value(hb).unwrap_or_default()
}

/// Polls `check` every `every` until it returns true or `within` passed;
/// returns whether it did. Bounded in time, as every wait in a test must be.
pub async fn wait_until<F, Fut>(within: Duration, every: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if started.elapsed() >= within {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// A plain HTTP/1.1 `GET path` to `addr` on loopback (`Connection: close`),
/// for tests of `/metrics` endpoints: `(status line, body)`. Panics on I/O
/// errors, as a test should.
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_owned(), body.to_owned())
}
