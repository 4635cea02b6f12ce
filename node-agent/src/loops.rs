//! The node-agent's background loops on the shared runtime (`fabric_runtime`):
//! one [`Reconciler`] each, keyed per target, level-triggered, with per-key
//! exponential backoff.
//!
//! - [`ProbeLoop`], keyed by provider name: probes each core-service provider
//!   every probe interval while it answers, and backs off (up to
//!   [`PROBE_BACKOFF_INTERVALS`] intervals) while it does not. The runner
//!   publishes the current targets; a key that is no longer a provider is
//!   dropped on its next pass.
//! - [`RedialLoop`], keyed by `NodeId`: keeps the planned peers connected. A
//!   planned peer without a path is dialled; a failed dial backs off from
//!   [`REDIAL_BASE`] to [`REDIAL_CAP`] per peer instead of a fixed retry.
//!
//! The runner only enqueues keys (every round, cheaply: the runtime
//! de-duplicates and holds a backing-off key until its deadline); what a
//! pass does is decided from the state the loop reads when it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabric::frame::{read_frame, write_frame};
use fabric::topology::NodeId;
use fabric::transport::Transport;
use fabric_runtime::{
    Action, BackoffConfig, Controller, ControllerConfig, QueueHandle, Reconciler,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::registry::ProbeResult;

/// The fabric service every node answers probes on.
pub const PROBE_SERVICE: &str = "probe";
/// Largest probe frame.
pub const PROBE_MAX_FRAME: usize = 1024;
/// A failing provider is probed at most this many probe intervals apart.
pub const PROBE_BACKOFF_INTERVALS: u32 = 8;
/// First retry of a planned peer that could not be dialled.
pub const REDIAL_BASE: Duration = Duration::from_secs(1);
/// Longest wait between dials of an unreachable planned peer.
pub const REDIAL_CAP: Duration = Duration::from_secs(60);

/// Why a pass failed (the key backs off).
#[derive(Debug, thiserror::Error)]
#[error("{target}: {reason}")]
pub struct PassError {
    target: String,
    reason: String,
}

/// Probes core-service providers.
pub struct ProbeLoop {
    transport: Transport,
    proof: crate::agent::OwnProof,
    own_id: NodeId,
    /// Provider name -> its key, as the runner's directory says now.
    targets: watch::Receiver<BTreeMap<String, NodeId>>,
    results: mpsc::Sender<ProbeResult>,
    interval: Duration,
}

impl ProbeLoop {
    /// Starts the loop; returns the queue the runner enqueues providers on and
    /// the loop's task, which ends after shutdown.
    pub(crate) fn spawn(
        transport: Transport,
        proof: crate::agent::OwnProof,
        targets: watch::Receiver<BTreeMap<String, NodeId>>,
        results: mpsc::Sender<ProbeResult>,
        interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> (QueueHandle<String>, JoinHandle<()>) {
        let interval = interval.max(Duration::from_millis(10));
        let own_id = transport.node_id();
        spawn_controller(
            ProbeLoop {
                transport,
                proof,
                own_id,
                targets,
                results,
                interval,
            },
            BackoffConfig::new(interval, interval * PROBE_BACKOFF_INTERVALS),
            shutdown,
        )
    }

    async fn probe(&self, target: &str, id: NodeId) -> Result<(), String> {
        let mut ch = self
            .transport
            .open(id, PROBE_SERVICE)
            .await
            .map_err(|e| e.to_string())?;
        write_frame(
            &mut ch,
            &self.proof.hello(),
            crate::membership::MAX_HELLO_BYTES,
        )
        .await
        .map_err(|e| e.to_string())?;
        write_frame(&mut ch, b"ping", PROBE_MAX_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        let answer = read_frame(&mut ch, PROBE_MAX_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        let _ = ch.shutdown().await;
        if answer != target.as_bytes() {
            return Err(format!(
                "answered as {:?}, expected {target:?}",
                String::from_utf8_lossy(&answer)
            ));
        }
        Ok(())
    }
}

impl Reconciler for ProbeLoop {
    type Key = String;
    type Object = (String, NodeId);
    type Ctx = ();
    type Error = PassError;

    async fn fetch(
        &self,
        key: &String,
        _: &(),
    ) -> Result<Option<Arc<(String, NodeId)>>, PassError> {
        Ok(self
            .targets
            .borrow()
            .get(key)
            .map(|id| Arc::new((key.clone(), *id))))
    }

    async fn reconcile(&self, obj: Arc<(String, NodeId)>, _: &()) -> Result<Action, PassError> {
        let (target, id) = (&obj.0, obj.1);
        let started = Instant::now();
        let r = if id == self.own_id {
            // We are the provider; answering ourselves is the live proof.
            Ok(())
        } else {
            tokio::time::timeout(Duration::from_secs(5), self.probe(target, id))
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
        };
        let result = ProbeResult {
            target: target.clone(),
            at_ms: now_ms(),
            ok: r.is_ok(),
            rtt_ms: r.is_ok().then(|| started.elapsed().as_millis() as u64),
            error: r.as_ref().err().cloned(),
        };
        let _ = self.results.send(result).await;
        match r {
            Ok(()) => Ok(Action::requeue(self.interval)),
            Err(reason) => Err(PassError {
                target: target.clone(),
                reason,
            }),
        }
    }

    fn error_policy(&self, key: &String, e: &PassError, _: &()) -> Action {
        tracing::debug!(provider = %key, error = %e, "core-service provider did not answer its probe; backing off");
        Action::backoff()
    }
}

/// Keeps planned peers connected.
pub struct RedialLoop {
    transport: Transport,
    /// The planned peer set, as the runner's last plan says.
    planned: watch::Receiver<BTreeSet<NodeId>>,
}

impl RedialLoop {
    /// Starts the loop; returns the queue the runner enqueues peers on and the
    /// loop's task, which ends after shutdown.
    pub fn spawn(
        transport: Transport,
        planned: watch::Receiver<BTreeSet<NodeId>>,
        shutdown: watch::Receiver<bool>,
    ) -> (QueueHandle<NodeId>, JoinHandle<()>) {
        spawn_controller(
            RedialLoop { transport, planned },
            BackoffConfig::new(REDIAL_BASE, REDIAL_CAP),
            shutdown,
        )
    }
}

impl Reconciler for RedialLoop {
    type Key = NodeId;
    type Object = NodeId;
    type Ctx = ();
    type Error = PassError;

    async fn fetch(&self, key: &NodeId, _: &()) -> Result<Option<Arc<NodeId>>, PassError> {
        // Level-triggered: a peer no longer planned, or already connected,
        // needs nothing.
        let wanted = self.planned.borrow().contains(key) && self.transport.path_to(*key).is_none();
        Ok(wanted.then(|| Arc::new(*key)))
    }

    async fn reconcile(&self, id: Arc<NodeId>, _: &()) -> Result<Action, PassError> {
        match self.transport.connect(*id).await {
            Ok(_) => Ok(Action::await_change()),
            Err(e) => Err(PassError {
                target: id.short(),
                reason: e.to_string(),
            }),
        }
    }

    fn error_policy(&self, key: &NodeId, e: &PassError, _: &()) -> Action {
        tracing::debug!(peer = %key.short(), error = %e, "planned peer not reachable; backing off");
        Action::backoff()
    }
}

fn spawn_controller<R>(
    r: R,
    backoff: BackoffConfig,
    mut shutdown: watch::Receiver<bool>,
) -> (QueueHandle<R::Key>, JoinHandle<()>)
where
    R: Reconciler<Ctx = ()>,
{
    let controller = Controller::new(
        Arc::new(r),
        Arc::new(()),
        ControllerConfig {
            concurrency: 8,
            backoff,
            shutdown_grace: Duration::from_secs(1),
            // Unreachable peers and providers are ordinary; status and the
            // error policy's debug line report them.
            warn_on_failure: false,
        },
    );
    let queue = controller.queue();
    let task = tokio::spawn(controller.run(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    }));
    (queue, task)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
