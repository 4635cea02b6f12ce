//! Where published records go after they are stored: a few nodes of the
//! fabric, from which gossip carries them to every node.

use std::sync::Arc;

use fabric_schemas::kinds::Kind;
use sha2::{Digest, Sha256};

use crate::store::BoxFuture;

/// A signed record ready to hand to the fabric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedRecord {
    /// Kind of the record.
    pub kind: Kind,
    /// The record's name.
    pub name: String,
    /// The record generation.
    pub generation: u64,
    /// The encoded envelope, byte for byte as stored.
    pub envelope: Vec<u8>,
}

/// What a delivery achieved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Targets that now hold the record (newly admitted or already held).
    pub holders: Vec<String>,
    /// Targets that refused or could not be reached, with why.
    pub failures: Vec<(String, String)>,
}

/// Why a record could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// No target took the record.
    #[error("no node took {kind} {name:?} generation {generation}: {detail}")]
    Undelivered {
        /// Kind of the record.
        kind: Kind,
        /// The record's name.
        name: String,
        /// The record generation.
        generation: u64,
        /// Every target's failure, joined.
        detail: String,
    },
}

/// Hands records to the fabric. Delivery to *some* node is enough: gossip does
/// the rest, and a node that missed it gets it from its peers.
pub trait RecordSink: Send + Sync {
    /// Hands `record` to some nodes; an error only when none took it.
    fn deliver<'a>(
        &'a self,
        record: &'a PublishedRecord,
    ) -> BoxFuture<'a, Result<Delivery, SinkError>>;
}

/// Stores only; nodes fetch records some other way (Control API). Used when
/// no injection targets are configured.
pub struct StoreOnlySink;

impl RecordSink for StoreOnlySink {
    fn deliver<'a>(&'a self, _: &'a PublishedRecord) -> BoxFuture<'a, Result<Delivery, SinkError>> {
        Box::pin(async { Ok(Delivery::default()) })
    }
}

/// One node that can admit a signed envelope.
pub trait RecordInjector: Send + Sync {
    /// For logs: the node's name or id.
    fn label(&self) -> String;
    /// `Ok(true)` if newly admitted, `Ok(false)` if already held, `Err` if refused.
    fn inject(&self, envelope: Vec<u8>) -> BoxFuture<'_, Result<bool, String>>;
}

/// Injects each record into `fanout` of its targets (default 3): a different
/// subset per record, chosen by hashing the record key, so the seeding load
/// spreads over the targets. A target that refuses or is down is replaced by
/// the next one; delivery fails only when no target took the record.
pub struct AgentSink {
    targets: Vec<Arc<dyn RecordInjector>>,
    fanout: usize,
}

impl AgentSink {
    /// How many targets each record goes to unless set otherwise.
    pub const DEFAULT_FANOUT: usize = 3;

    /// A sink over `targets`, each record to [`Self::DEFAULT_FANOUT`] of them.
    pub fn new(targets: Vec<Arc<dyn RecordInjector>>) -> Self {
        AgentSink {
            targets,
            fanout: Self::DEFAULT_FANOUT,
        }
    }

    /// Sends each record to `fanout` targets (at least 1).
    pub fn with_fanout(mut self, fanout: usize) -> Self {
        self.fanout = fanout.max(1);
        self
    }

    fn start(&self, record: &PublishedRecord) -> usize {
        let mut h = Sha256::new();
        h.update([record.kind.code()]);
        h.update(record.name.as_bytes());
        h.update(record.generation.to_be_bytes());
        let d = h.finalize();
        let n = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        (n % self.targets.len().max(1) as u64) as usize
    }
}

impl RecordSink for AgentSink {
    fn deliver<'a>(
        &'a self,
        record: &'a PublishedRecord,
    ) -> BoxFuture<'a, Result<Delivery, SinkError>> {
        Box::pin(async move {
            let mut out = Delivery::default();
            let n = self.targets.len();
            let start = self.start(record);
            for i in 0..n {
                if out.holders.len() >= self.fanout {
                    break;
                }
                let t = &self.targets[(start + i) % n];
                match t.inject(record.envelope.clone()).await {
                    Ok(_) => out.holders.push(t.label()),
                    Err(e) => out.failures.push((t.label(), e)),
                }
            }
            if out.holders.is_empty() && n > 0 {
                return Err(SinkError::Undelivered {
                    kind: record.kind,
                    name: record.name.clone(),
                    generation: record.generation,
                    detail: out
                        .failures
                        .iter()
                        .map(|(t, e)| format!("{t}: {e}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
            Ok(out)
        })
    }
}
