//! The node-agent's own `/metrics` (Prometheus text format): its P3 peer
//! metrics, directory, registry, update state and updater liveness, read from
//! the status the node already measures (the same figures its heartbeats and
//! `status.json` carry).
//!
//! Served only when `metrics_listen` is set, on a listener opened through the
//! node's edge inventory with the `metrics-edge` role, so the node's own
//! listener report (and the audit) classify it as a service edge.

use std::convert::Infallible;

use fabric::edge::EdgeListener;
use fabric_runtime::metrics::{Exposition, CONTENT_TYPE};
use http_body_util::Full;
use hyper::body::Bytes;
use tokio::sync::watch;

use crate::status::NodeStatus;

/// The exposition for `s`.
pub fn render(s: &NodeStatus) -> String {
    let mut e = Exposition::new();
    let node = [("node", s.name.as_str())];
    for (name, help, v) in s.peer_metrics.named() {
        e.gauge(name, help, &node, f64::from(v));
    }
    for (name, help, v) in [
        (
            "fabric_directory_records",
            "Signed records the node's directory holds.",
            s.directory_records,
        ),
        (
            "fabric_directory_nodes",
            "Node records in the directory.",
            s.directory_nodes,
        ),
        (
            "fabric_directory_services",
            "Service records in the directory.",
            s.directory_services,
        ),
        (
            "fabric_connections",
            "QUIC connections the node holds.",
            s.connections,
        ),
        (
            "fabric_gossip_partners",
            "Gossip partners this round.",
            s.gossip_partners,
        ),
    ] {
        e.gauge(name, help, &node, v as f64);
    }
    e.gauge(
        "fabric_refused_channels",
        "Channels refused at the door since start.",
        &node,
        s.refused_channels as f64,
    );
    e.gauge(
        "fabric_artifact_bytes_served",
        "Artifact bytes this node served to others since start.",
        &node,
        s.artifact_bytes_served as f64,
    );
    let status = s.registry.status.as_str();
    for st in ["active", "candidate_only", "missing"] {
        e.flag(
            "fabric_registry_runtime_report_status",
            "The node's signed registry runtime status (1 for the current one).",
            &[("node", s.name.as_str()), ("status", st)],
            status == st,
        );
    }
    if let Some(h) = &s.health {
        e.flag(
            "fabric_node_healthy",
            "1 when every health check passes.",
            &node,
            h.healthy,
        );
    }
    if let Some(u) = &s.updater {
        e.flag(
            "fabric_updater_alive",
            "1 when the updater passed recently.",
            &node,
            u.alive,
        );
        e.gauge(
            "fabric_updater_restarts",
            "Updater task restarts by the supervisor.",
            &node,
            u.restarts as f64,
        );
        e.flag(
            "fabric_updater_supports_hint_wake",
            "1 when an update hint can wake the updater.",
            &node,
            u.supports_hint_wake,
        );
    }
    if let Some(u) = &s.update {
        e.flag(
            "fabric_node_update_state",
            "The node's update state (1 for the current one).",
            &[
                ("node", s.name.as_str()),
                ("intent", u.intent.as_str()),
                ("state", u.state.as_str()),
            ],
            true,
        );
    }
    e.render()
}

/// Serves `/metrics` on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: EdgeListener,
    status: watch::Receiver<NodeStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            // The watch guard is dropped inside: it must not live in the
            // select's output across the spawn.
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        };
        let status = status.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let status = status.clone();
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            let body = render(&status.borrow());
                            hyper::Response::builder()
                                .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
                                .body(Full::new(Bytes::from(body)))
                        } else {
                            hyper::Response::builder()
                                .status(hyper::StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(
                                    b"only /metrics is served here\n",
                                )))
                        };
                        Ok::<_, Infallible>(resp.unwrap_or_default())
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}
