//! Artifacts between nodes: the `artifact` fabric service every node serves
//! from its store, and the fetcher that takes pieces from several sources at
//! once.
//!
//! One request per channel, framed JSON:
//! - `{"op":"pieces","sha256":..,"piece_size":..}` -> the piece digests the
//!   server holds for that layout (the client checks them against the
//!   intent's signed root before trusting any of them);
//! - `{"op":"range","sha256":..,"offset":..,"len":..}` -> a reply, then the
//!   bytes as one frame, only from the staged file or verified pieces.
//!
//! A source that serves a bad piece, a short one, or stalls past
//! [`FetchConfig::stall`] is dropped for the rest of the fetch; the piece goes
//! back to the queue for the others. The fetch fails (with every source's
//! reason) only when no source is left.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fabric::frame::{read_frame, write_frame, Framed};
use fabric::topology::NodeId;
use fabric::transport::Transport;
use fabric_schemas::kinds::PieceSpec;
use serde::{Deserialize, Serialize};

use super::artifact::{piece_root, ArtifactError, ArtifactStore, Layout, DEFAULT_PIECE_SIZE};

/// The fabric service every node serves its artifacts on.
pub const ARTIFACT_SERVICE: &str = "artifact";

const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// A reply carries up to this many digests (a 16 GiB artifact at 1 MiB pieces).
const MAX_REPLY_BYTES: usize = 2 * 1024 * 1024;
const MAX_DATA_BYTES: usize = PieceSpec::MAX_PIECE_SIZE as usize;

/// A request to the artifact service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The piece digests at `piece_size`.
    Pieces {
        /// The artifact.
        sha256: String,
        /// The layout asked for.
        piece_size: u64,
    },
    /// Bytes of the artifact.
    Range {
        /// The artifact.
        sha256: String,
        /// Where they start.
        offset: u64,
        /// How many.
        len: u64,
    },
}

/// The server's answer (for `range`, followed by a data frame when `ok`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the server has what was asked.
    pub ok: bool,
    /// The artifact's size, as the server holds it.
    #[serde(default)]
    pub size: Option<u64>,
    /// The piece digests (hex) for `pieces`.
    #[serde(default)]
    pub digests: Vec<String>,
    /// Why not.
    #[serde(default)]
    pub error: Option<String>,
}

/// Serves one artifact channel from `store`; counts the bytes it sends.
pub async fn serve_one(
    mut ch: fabric::channel::Channel,
    store: ArtifactStore,
    served: Arc<AtomicU64>,
) -> Result<(), String> {
    let req = read_frame(&mut ch, MAX_REQUEST_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    let req: Request = serde_json::from_slice(&req).map_err(|e| format!("bad request: {e}"))?;
    let sha = match &req {
        Request::Pieces { sha256, .. } | Request::Range { sha256, .. } => sha256,
    };
    // The digest names a folder of the store: nothing but a digest passes.
    if !fabric_schemas::is_sha256_hex(sha) {
        return Err(format!("bad request: {sha:?} is not a sha256"));
    }
    let not_here = |what: &str| Reply {
        ok: false,
        error: Some(what.to_owned()),
        ..Default::default()
    };
    match req {
        Request::Pieces { sha256, piece_size } => {
            let reply = if !piece_size.is_power_of_two()
                || !(PieceSpec::MIN_PIECE_SIZE..=PieceSpec::MAX_PIECE_SIZE).contains(&piece_size)
            {
                not_here("bad_piece_size")
            } else {
                let s = store.clone();
                let sha = sha256.clone();
                let found = tokio::task::spawn_blocking(move || {
                    Some((s.size_of(&sha)?, s.piece_digests(&sha, piece_size)))
                })
                .await
                .ok()
                .flatten();
                match found {
                    Some((size, digests)) => Reply {
                        ok: true,
                        size: Some(size),
                        digests: digests
                            .unwrap_or_default()
                            .iter()
                            .map(hex::encode)
                            .collect(),
                        error: None,
                    },
                    None => not_here("not_here"),
                }
            };
            send_reply(&mut ch, &reply).await
        }
        Request::Range {
            sha256,
            offset,
            len,
        } => {
            if len == 0 || len as usize > MAX_DATA_BYTES {
                return send_reply(&mut ch, &not_here("bad_range")).await;
            }
            let s = store.clone();
            let bytes = tokio::task::spawn_blocking(move || s.read_range(&sha256, offset, len))
                .await
                .ok()
                .flatten();
            match bytes {
                Some(b) => {
                    send_reply(
                        &mut ch,
                        &Reply {
                            ok: true,
                            size: None,
                            digests: Vec::new(),
                            error: None,
                        },
                    )
                    .await?;
                    write_frame(&mut ch, &b, MAX_DATA_BYTES)
                        .await
                        .map_err(|e| e.to_string())?;
                    served.fetch_add(b.len() as u64, Ordering::Relaxed);
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut ch).await;
                    Ok(())
                }
                None => send_reply(&mut ch, &not_here("not_here")).await,
            }
        }
    }
}

async fn send_reply(ch: &mut fabric::channel::Channel, reply: &Reply) -> Result<(), String> {
    let body = serde_json::to_vec(reply).map_err(|e| e.to_string())?;
    write_frame(ch, &body, MAX_REPLY_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    if !reply.ok {
        let _ = tokio::io::AsyncWriteExt::shutdown(ch).await;
    }
    Ok(())
}

/// What to fetch.
#[derive(Clone, Debug)]
pub struct FetchPlan {
    /// The artifact's sha256.
    pub sha256: String,
    /// Its signed size.
    pub size: u64,
    /// Its pinned pieces, if the intent pins them.
    pub pieces: Option<PieceSpec>,
    /// Peers in order of preference (the area's earlier nodes, then the
    /// neighbours).
    pub sources: Vec<NodeId>,
    /// The origin tier (`update-cache`, then `update-store` providers): asked
    /// only when no peer holds the artifact or every peer dropped out.
    pub fallback: Vec<NodeId>,
}

/// Limits of one fetch.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Sources fetched from at once.
    pub parallel: usize,
    /// A request that takes longer drops its source.
    pub stall: Duration,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            parallel: 4,
            stall: Duration::from_secs(10),
        }
    }
}

/// Why a fetch gave up.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No source had the artifact, or every one that did was dropped.
    #[error("no source could serve artifact {sha256}: {}", tried.iter().map(|(n, r)| format!("{}: {r}", n.short())).collect::<Vec<_>>().join("; "))]
    NoSource {
        /// The artifact.
        sha256: String,
        /// Each source tried, with why it was dropped.
        tried: Vec<(NodeId, String)>,
    },
    /// Sources hold the artifact but none offered the piece list the
    /// intent's root pins.
    #[error("no source offered the signed piece list of artifact {sha256}")]
    NoPieceList {
        /// The artifact.
        sha256: String,
        /// Sources dropped on the way.
        tried: Vec<(NodeId, String)>,
    },
    /// The store refused what was fetched, or failed.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
}

impl FetchError {
    /// A stable label for the journal and heartbeats.
    pub fn reason(&self) -> String {
        match self {
            FetchError::NoSource { tried, .. } => {
                if tried.iter().any(|(_, r)| r.starts_with("bad_piece")) {
                    "bad_piece".into()
                } else if tried.iter().any(|(_, r)| r.starts_with("stalled")) {
                    "stalled".into()
                } else {
                    "no_source".into()
                }
            }
            FetchError::NoPieceList { .. } => "no_piece_list".into(),
            FetchError::Artifact(e) => e.reason().into(),
        }
    }
}

/// Asks `source` one request; the data frame too for `range`.
async fn ask(
    transport: &Transport,
    source: NodeId,
    req: &Request,
    stall: Duration,
) -> Result<(Reply, Option<Vec<u8>>), String> {
    let exchange = async {
        let ch = transport
            .open(source, ARTIFACT_SERVICE)
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        let mut framed = Framed::with_max_frame(ch, MAX_REPLY_BYTES);
        let reply: Reply = framed
            .request(req)
            .await
            .map_err(|e| format!("protocol: {e}"))?;
        let data = if let (true, Request::Range { len, .. }) = (reply.ok, req) {
            let mut ch = framed.into_inner();
            // Never more than was asked for: a longer frame is refused
            // before it is buffered.
            Some(
                read_frame(&mut ch, (*len as usize).min(MAX_DATA_BYTES))
                    .await
                    .map_err(|e| format!("protocol: {e}"))?,
            )
        } else {
            None
        };
        Ok::<_, String>((reply, data))
    };
    match tokio::time::timeout(stall, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("stalled for {stall:?}")),
    }
}

/// Fetches the artifact into `store` and stages it; returns the staged path.
pub async fn fetch(
    transport: &Transport,
    store: &ArtifactStore,
    plan: &FetchPlan,
    cfg: &FetchConfig,
) -> Result<PathBuf, FetchError> {
    if store.is_staged(&plan.sha256, plan.size) {
        return Ok(store.staged_path(&plan.sha256));
    }
    let piece_size = plan
        .pieces
        .as_ref()
        .map_or(DEFAULT_PIECE_SIZE, |p| p.piece_size);
    let layout = Layout::new(plan.size, piece_size);
    let mut tried: Vec<(NodeId, String)> = Vec::new();
    let mut digests: Option<Vec<[u8; 32]>> = None;
    // Peers first; the origin tier only when no peer holds it.
    let mut holders = discover(
        transport,
        &plan.sources,
        plan,
        layout,
        cfg,
        &mut digests,
        &mut tried,
    )
    .await;
    let mut origin_asked = false;
    if holders.is_empty() {
        origin_asked = true;
        holders = discover(
            transport,
            &plan.fallback,
            plan,
            layout,
            cfg,
            &mut digests,
            &mut tried,
        )
        .await;
    }
    if plan.pieces.is_some() && digests.is_none() && !holders.is_empty() {
        return Err(FetchError::NoPieceList {
            sha256: plan.sha256.clone(),
            tried,
        });
    }
    if holders.is_empty() {
        return Err(FetchError::NoSource {
            sha256: plan.sha256.clone(),
            tried,
        });
    }
    let parallel = if digests.is_some() {
        cfg.parallel.max(1)
    } else {
        1
    };
    let mut remaining: VecDeque<NodeId> = holders.into();
    loop {
        let progress = {
            let (s, sha, d) = (store.clone(), plan.sha256.clone(), digests.clone());
            tokio::task::spawn_blocking(move || s.begin(&sha, layout, d.as_deref()))
                .await
                .map_err(|e| ArtifactError::Io {
                    path: plan.sha256.clone(),
                    source: std::io::Error::other(e),
                })??
        };
        let queue = Arc::new(Mutex::new(VecDeque::from(progress.missing())));
        let progress = Arc::new(Mutex::new(progress));
        let mut workers = tokio::task::JoinSet::new();
        while workers.len() < parallel {
            let Some(source) = remaining.pop_front() else {
                break;
            };
            workers.spawn(worker(
                transport.clone(),
                store.clone(),
                plan.sha256.clone(),
                layout,
                source,
                queue.clone(),
                progress.clone(),
                cfg.stall,
            ));
        }
        // Sources whose worker ran out of pieces: they take over the share
        // of a source dropped later.
        let mut idle: Vec<NodeId> = Vec::new();
        while let Some(done) = workers.join_next().await {
            match done {
                Ok(Ok(source)) => idle.push(source),
                Ok(Err((source, why))) => {
                    tried.push((source, why));
                    if remaining.is_empty() && idle.is_empty() && !origin_asked {
                        // Every peer dropped out: the origin tier takes over.
                        origin_asked = true;
                        let more = discover(
                            transport,
                            &plan.fallback,
                            plan,
                            layout,
                            cfg,
                            &mut digests,
                            &mut tried,
                        )
                        .await;
                        remaining.extend(more);
                    }
                    if let Some(next) = remaining.pop_front().or_else(|| idle.pop()) {
                        workers.spawn(worker(
                            transport.clone(),
                            store.clone(),
                            plan.sha256.clone(),
                            layout,
                            next,
                            queue.clone(),
                            progress.clone(),
                            cfg.stall,
                        ));
                    }
                }
                Err(_) => {}
            }
        }
        let complete = progress
            .lock()
            .map(|p| p.missing().is_empty())
            .unwrap_or(false);
        if !complete {
            // Keep what was fetched for the next attempt.
            let (s, sha, p) = (store.clone(), plan.sha256.clone(), progress.clone());
            let _ = tokio::task::spawn_blocking(move || {
                if let Ok(mut p) = p.lock() {
                    if let Err(e) = s.flush(&sha, &mut p) {
                        tracing::warn!(error = %e, "cannot record the fetched pieces");
                    }
                }
            })
            .await;
            return Err(FetchError::NoSource {
                sha256: plan.sha256.clone(),
                tried,
            });
        }
        let (s, sha, size) = (store.clone(), plan.sha256.clone(), plan.size);
        match tokio::task::spawn_blocking(move || s.finish(&sha, size)).await {
            Ok(Ok(path)) => return Ok(path),
            Ok(Err(e)) if digests.is_none() && !remaining.is_empty() => {
                // Unpinned: the whole file is all that can be checked; the
                // one source that served it is dropped and the next tried.
                tracing::warn!(error = %e, "assembled artifact did not verify; trying the next source");
                continue;
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => {
                return Err(FetchError::Artifact(ArtifactError::Io {
                    path: plan.sha256.clone(),
                    source: std::io::Error::other(e),
                }))
            }
        }
    }
}

/// Asks each of `sources` whether it holds the artifact; returns those
/// that do. The first piece list matching the signed root is kept in
/// `digests`; a source offering another is dropped.
async fn discover(
    transport: &Transport,
    sources: &[NodeId],
    plan: &FetchPlan,
    layout: Layout,
    cfg: &FetchConfig,
    digests: &mut Option<Vec<[u8; 32]>>,
    tried: &mut Vec<(NodeId, String)>,
) -> Vec<NodeId> {
    let mut holders = Vec::new();
    for &source in sources {
        let req = Request::Pieces {
            sha256: plan.sha256.clone(),
            piece_size: layout.piece_size,
        };
        match ask(transport, source, &req, cfg.stall).await {
            Ok((r, _)) if r.ok && r.size == Some(plan.size) => {
                if let Some(pin) = &plan.pieces {
                    let d: Option<Vec<[u8; 32]>> = r
                        .digests
                        .iter()
                        .map(|h| hex::decode(h).ok().and_then(|b| b.try_into().ok()))
                        .collect();
                    match d {
                        Some(d)
                            if d.len() as u64 == layout.count()
                                && hex::encode(piece_root(&d)) == pin.root =>
                        {
                            if digests.is_none() {
                                *digests = Some(d);
                            }
                        }
                        // A holder without whole digests may still serve pieces.
                        _ if r.digests.is_empty() => {}
                        _ => {
                            tried.push((source, "bad_piece_list".into()));
                            continue;
                        }
                    }
                }
                holders.push(source);
            }
            Ok((r, _)) if r.ok => {
                tried.push((source, format!("size_mismatch: holds {:?} bytes", r.size)))
            }
            Ok((r, _)) => tried.push((source, r.error.unwrap_or_else(|| "refused".into()))),
            Err(e) => tried.push((source, e)),
        }
    }
    holders
}

/// Ranges a source may answer `not_here` in a row before it is dropped:
/// a peer still fetching serves its pieces as they arrive, so a miss is
/// first a "not yet".
const MAX_MISSES: u32 = 200;
const MISS_PAUSE: Duration = Duration::from_millis(25);

#[allow(clippy::too_many_arguments)]
async fn worker(
    transport: Transport,
    store: ArtifactStore,
    sha: String,
    layout: Layout,
    source: NodeId,
    queue: Arc<Mutex<VecDeque<u64>>>,
    progress: Arc<Mutex<super::artifact::Progress>>,
    stall: Duration,
) -> Result<NodeId, (NodeId, String)> {
    let mut misses = 0u32;
    loop {
        let Some(index) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
            return Ok(source);
        };
        let give_back = |why: String| {
            if let Ok(mut q) = queue.lock() {
                q.push_back(index);
            }
            Err((source, why))
        };
        let (offset, len) = layout.range(index);
        let req = Request::Range {
            sha256: sha.clone(),
            offset,
            len,
        };
        let bytes = match ask(&transport, source, &req, stall).await {
            Ok((_, Some(b))) => b,
            Ok((r, None)) if r.error.as_deref() == Some("not_here") && misses < MAX_MISSES => {
                misses += 1;
                if let Ok(mut q) = queue.lock() {
                    q.push_back(index);
                }
                tokio::time::sleep(MISS_PAUSE).await;
                continue;
            }
            Ok((r, None)) => {
                let why = match r.error {
                    Some(e) if e == "not_here" => "stalled: served no piece for a while".to_owned(),
                    Some(e) => e,
                    None => "refused".into(),
                };
                return give_back(why);
            }
            Err(e) => return give_back(e),
        };
        misses = 0;
        let (s, sha2, p) = (store.clone(), sha.clone(), progress.clone());
        let kept = tokio::task::spawn_blocking(move || {
            let mut p = p.lock().map_err(|_| "progress lock poisoned".to_owned())?;
            s.put_piece(&sha2, &mut p, index, &bytes)
                .map_err(|e| format!("{}: {e}", e.reason()))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        if let Err(why) = kept {
            tracing::warn!(source = %source.short(), piece = index, reason = %why, "dropping an artifact source");
            return give_back(why);
        }
    }
}
