//! The Control API: HTTP/JSON for operators on a `control-api-ingress` edge
//! listener, the legacy heartbeat contract on a `compat-overlap` listener, and
//! the fabric channel service `control` for nodes.
//!
//! | method | path | auth | what |
//! |---|---|---|---|
//! | POST | `/api/v1/apply[?dryRun=true][&prune=true]` | operator | validate + one atomic write |
//! | GET | `/api/v1/objects/{kind}[/{name}]` | operator (or anonymous reads) | stored objects |
//! | POST | `/api/v1/heartbeat` | operator | heartbeat intake |
//! | GET | `/api/v1/audit[?freshnessMs=N]` | operator (or anonymous reads) | [`crate::audit`] |
//!
//! Only the compat listener serves `POST /api/v1/heartbeat` to legacy nodes
//! (operator or compat token) and nothing else. Every heartbeat that arrives
//! there is stamped `compat-overlap`, which the audit counts as a compat
//! control dependency. The wire format and the rules are in `docs/control-api.md`.

pub mod apply;
pub mod client;
pub mod intake;
pub mod metrics;
mod reply_cache;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fabric::edge::{EdgeError, EdgeInventory, EdgeListener, EdgeRole, EdgeTarget};
use fabric::frame::Framed;
use fabric::topology::NodeId;
use fabric::transport::Transport;
use fabric_schemas::kinds::{FabricNodeSpec, Kind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::audit::{self, AuditConfig, AuditInput, AuditReport};
use crate::store::{now_millis, Store, StoreError};
use fabric_proto::endpoint::{ControlEndpoint, CONTROL_SERVICE};
use fabric_proto::heartbeat::{
    ControlRequest, HeartbeatBody, HeartbeatError, HeartbeatReply, IntakePath, MAX_HEARTBEAT_BYTES,
};

pub use apply::{
    apply, parse_kind, ApplyAction, ApplyBundle, ApplyError, ApplyItem, ApplyOptions, ApplyResult,
    ManifestFile, BUNDLE_CONTENT_TYPE,
};
pub use client::{ApiClient, ClientError};
pub use intake::{HeartbeatIntake, IntakeConfig, IntakeStats};
pub use reply_cache::DEFAULT_REPLY_CACHE_MAX_AGE;

/// Largest apply request body.
pub const MAX_APPLY_BYTES: usize = 16 * 1024 * 1024;

/// A bearer token (operator or compat). Compared in constant time, as
/// SHA-256 digests so that not even the length leaks through timing.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from its secret (surrounding whitespace ignored); at least 16 characters.
    pub fn new(secret: &str) -> Result<Token, ApiError> {
        let secret = secret.trim();
        if secret.len() < 16 {
            return Err(ApiError::Token(
                "a token must be at least 16 characters".into(),
            ));
        }
        Ok(Token {
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// Reads a token file (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Token, ApiError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ApiError::Token(format!("reading {}: {e}", path.display())))?;
        Token::new(&text).map_err(|e| ApiError::Token(format!("{}: {e}", path.display())))
    }

    /// Constant-time comparison with a presented secret.
    pub fn matches(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(self.digest.ct_eq(&d))
    }
}

/// The legacy compat overlap listener (the seed's `19191`-style contract).
#[derive(Clone, Debug)]
pub struct CompatConfig {
    /// Where to listen; the port is configuration, never a constant.
    pub bind: SocketAddr,
    /// Token legacy nodes present, besides the operator token.
    pub token: Option<Token>,
}

/// Control API configuration.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Where the operator listener binds.
    pub bind: SocketAddr,
    /// The token operators present.
    pub operator_token: Token,
    /// The legacy heartbeat listener, if enabled.
    pub compat: Option<CompatConfig>,
    /// Serve `GET` endpoints without a token.
    pub anonymous_reads: bool,
    /// How the audit judges heartbeats.
    pub audit: AuditConfig,
    /// Heartbeat batching (one queue for every intake path).
    pub intake: IntakeConfig,
    /// How old the fleet-wide data in heartbeat replies (update hints,
    /// canonical endpoints, the node-identity check's `FabricNode`s) may be:
    /// one shared snapshot, refreshed when older, dropped when this API
    /// applies objects. Zero reads the store for every reply.
    pub reply_cache: Duration,
}

impl ApiConfig {
    /// Defaults for `bind` and `operator_token`: no compat listener, no anonymous reads.
    pub fn new(bind: SocketAddr, operator_token: Token) -> ApiConfig {
        ApiConfig {
            bind,
            operator_token,
            compat: None,
            anonymous_reads: false,
            audit: AuditConfig::default(),
            intake: IntakeConfig::default(),
            reply_cache: DEFAULT_REPLY_CACHE_MAX_AGE,
        }
    }
}

/// Why the Control API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A token is too short or its file unreadable.
    #[error("token: {0}")]
    Token(String),
    /// An edge listener could not be bound.
    #[error(transparent)]
    Edge(#[from] EdgeError),
    /// The fabric channel service could not be listened on.
    #[error("listening on fabric service {service:?}: {reason}")]
    Fabric {
        /// The service name.
        service: String,
        /// The transport's error.
        reason: String,
    },
}

struct Shared {
    store: Arc<dyn Store>,
    intake: HeartbeatIntake,
    inventory: EdgeInventory,
    cfg: ApiConfig,
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    via: IntakePath,
}

/// A running Control API. Dropping it does not stop it; call [`ApiHandle::stop`].
pub struct ApiHandle {
    addr: SocketAddr,
    compat_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    intake: HeartbeatIntake,
}

impl ApiHandle {
    /// The Control API ingress address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The compat overlap address, if one was configured.
    pub fn compat_addr(&self) -> Option<SocketAddr> {
        self.compat_addr
    }

    /// The heartbeat intake every path feeds (its counters; in-process
    /// heartbeats of the co-located node, see [`intake_colocated`]).
    pub fn intake(&self) -> &HeartbeatIntake {
        &self.intake
    }

    /// Stops every listener and waits for them (bounded), then commits the
    /// heartbeats still queued and stops the intake writer.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        // Listeners first: their in-flight requests still get their batch
        // committed (and a 200), without waiting out the linger; what is left
        // after them (a late fabric session, the co-located node) is flushed
        // below.
        self.intake.drain();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        self.intake.shutdown().await;
    }
}

/// Starts the Control API: the HTTP ingress, the compat listener if configured,
/// and the `control` fabric service if a transport is given.
pub async fn serve(
    store: Arc<dyn Store>,
    inventory: EdgeInventory,
    cfg: ApiConfig,
    transport: Option<Transport>,
) -> Result<ApiHandle, ApiError> {
    let intake =
        HeartbeatIntake::start_with_reply_cache(store.clone(), cfg.intake, cfg.reply_cache);
    let shared = Arc::new(Shared {
        store,
        intake: intake.clone(),
        inventory: inventory.clone(),
        cfg: cfg.clone(),
    });
    let (shutdown, rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let started = start_listeners(&shared, &inventory, &cfg, transport, &rx, &mut tasks).await;
    let (addr, compat_addr) = match started {
        Ok(a) => a,
        Err(e) => {
            // Nothing may outlive a failed start: not the listeners already
            // bound, not the intake writer.
            let _ = shutdown.send(true);
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
            }
            intake.shutdown().await;
            return Err(e);
        }
    };
    Ok(ApiHandle {
        addr,
        compat_addr,
        shutdown,
        tasks,
        intake,
    })
}

/// Binds the HTTP ingress, the compat listener and the fabric service.
async fn start_listeners(
    shared: &Arc<Shared>,
    inventory: &EdgeInventory,
    cfg: &ApiConfig,
    transport: Option<Transport>,
    rx: &watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<(SocketAddr, Option<SocketAddr>), ApiError> {
    let listener = inventory
        .bind(
            EdgeRole::ControlApiIngress,
            cfg.bind,
            EdgeTarget::Local {
                handler: "control-api".into(),
            },
        )
        .await?;
    let addr = listener.local_addr().map_err(|source| EdgeError::Bind {
        role: EdgeRole::ControlApiIngress,
        addr: cfg.bind,
        source,
    })?;
    tasks.push(spawn_http(
        listener,
        operator_router(shared.clone()),
        rx.clone(),
    ));

    let mut compat_addr = None;
    if let Some(c) = &cfg.compat {
        let listener = inventory
            .bind(
                EdgeRole::CompatOverlap,
                c.bind,
                EdgeTarget::Local {
                    handler: "control-api-compat".into(),
                },
            )
            .await?;
        compat_addr = Some(listener.local_addr().map_err(|source| EdgeError::Bind {
            role: EdgeRole::CompatOverlap,
            addr: c.bind,
            source,
        })?);
        tasks.push(spawn_http(
            listener,
            compat_router(shared.clone()),
            rx.clone(),
        ));
    }

    if let Some(t) = transport {
        tasks.push(spawn_control_service(&t, shared.clone(), rx.clone())?);
    }
    Ok((addr, compat_addr))
}

/// Adapts an inventory listener to axum's listener trait.
struct EdgeAcceptor(EdgeListener);

impl axum::serve::Listener for EdgeAcceptor {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok(c) => return c,
                // Out of file descriptors and the like: back off instead of
                // spinning, as axum's own TcpListener impl does.
                Err(e) => {
                    tracing::warn!(error = %e, "control api accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

fn spawn_http(
    listener: EdgeListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let r = axum::serve(EdgeAcceptor(listener), router)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "control api server stopped");
        }
    })
}

fn operator_router(shared: Arc<Shared>) -> Router {
    let state = AppState {
        shared,
        via: IntakePath::ControlApi,
    };
    Router::new()
        .route("/api/v1/apply", post(apply_handler))
        .route("/api/v1/objects/{kind}", get(list_handler))
        .route("/api/v1/objects/{kind}/{name}", get(get_handler))
        .route(
            "/api/v1/heartbeat",
            post(heartbeat_handler).layer(DefaultBodyLimit::max(MAX_HEARTBEAT_BYTES)),
        )
        .route("/api/v1/audit", get(audit_handler))
        .route("/metrics", get(metrics_handler))
        .route("/api/v1/rollouts/{name}", get(rollout_status_handler))
        .route(
            "/api/v1/rollouts/{name}/{action}",
            post(rollout_action_handler),
        )
        .layer(DefaultBodyLimit::max(MAX_APPLY_BYTES))
        .with_state(state)
}

fn compat_router(shared: Arc<Shared>) -> Router {
    let state = AppState {
        shared,
        via: IntakePath::CompatOverlap,
    };
    Router::new()
        .route("/api/v1/heartbeat", post(heartbeat_handler))
        .layer(DefaultBodyLimit::max(MAX_HEARTBEAT_BYTES))
        .with_state(state)
}

/// An error body: `{"error": "...", "errors": [...]}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// Manifest errors of a refused apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<fabric_schemas::manifest::ManifestError>,
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: msg.into(),
            errors: Vec::new(),
        }),
    )
        .into_response()
}

fn store_err(e: StoreError) -> Response {
    tracing::error!(error = %e, "store error in control api");
    err(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}"))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// `Ok` if the request may write (`write`) or read.
#[allow(clippy::result_large_err)]
fn authorize(st: &AppState, headers: &HeaderMap, write: bool) -> Result<(), Response> {
    let cfg = &st.shared.cfg;
    if !write && cfg.anonymous_reads {
        return Ok(());
    }
    let Some(presented) = bearer(headers) else {
        return Err(unauthorized("missing bearer token"));
    };
    let compat_ok = st.via == IntakePath::CompatOverlap
        && cfg
            .compat
            .as_ref()
            .and_then(|c| c.token.as_ref())
            .is_some_and(|t| t.matches(presented));
    if cfg.operator_token.matches(presented) || compat_ok {
        Ok(())
    } else {
        Err(unauthorized("token not accepted"))
    }
}

fn unauthorized(msg: &str) -> Response {
    let mut r = err(StatusCode::UNAUTHORIZED, msg);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    prune: bool,
    /// File name for errors when the body is plain manifest text.
    #[serde(default)]
    file: Option<String>,
}

async fn apply_handler(
    State(st): State<AppState>,
    Query(q): Query<ApplyQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorize(&st, &headers, true) {
        return r;
    }
    let is_bundle = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(BUNDLE_CONTENT_TYPE));
    let files = if is_bundle {
        match serde_json::from_slice::<ApplyBundle>(&body) {
            Ok(b) => b.files,
            Err(e) => return err(StatusCode::BAD_REQUEST, format!("apply bundle: {e}")),
        }
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(text) => vec![ManifestFile {
                name: q.file.clone().unwrap_or_else(|| "request.yaml".into()),
                text,
            }],
            Err(_) => return err(StatusCode::BAD_REQUEST, "manifest text is not UTF-8"),
        }
    };
    let opts = ApplyOptions {
        dry_run: q.dry_run,
        prune: q.prune,
    };
    match apply(st.shared.store.as_ref(), &files, opts).await {
        Ok(r) => {
            if !r.dry_run {
                // Heartbeat replies show the new objects at once.
                st.shared.intake.invalidate_replies();
            }
            tracing::info!(dry_run = r.dry_run, objects = r.items.len(), "apply");
            Json(r).into_response()
        }
        Err(ApplyError::Invalid(errors)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(ErrorBody {
                error: format!("{} manifest error(s); nothing was applied", errors.len()),
                errors,
            }),
        )
            .into_response(),
        Err(ApplyError::Store(e)) if e.is_conflict() => err(
            StatusCode::CONFLICT,
            format!("{e}; nothing was applied, retry"),
        ),
        Err(ApplyError::Store(e)) => store_err(e),
    }
}

async fn list_handler(
    State(st): State<AppState>,
    UrlPath(kind): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&st, &headers, false) {
        return r;
    }
    let Some(kind) = parse_kind(&kind) else {
        return err(StatusCode::NOT_FOUND, format!("unknown kind {kind:?}"));
    };
    match st.shared.store.list_objects(kind).await {
        Ok(objs) => Json(objs).into_response(),
        Err(e) => store_err(e),
    }
}

async fn get_handler(
    State(st): State<AppState>,
    UrlPath((kind, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&st, &headers, false) {
        return r;
    }
    let Some(kind) = parse_kind(&kind) else {
        return err(StatusCode::NOT_FOUND, format!("unknown kind {kind:?}"));
    };
    match st.shared.store.get_object(kind, &name).await {
        Ok(Some(o)) => Json(o).into_response(),
        Ok(None) => err(StatusCode::NOT_FOUND, format!("{kind} {name:?} not found")),
        Err(e) => store_err(e),
    }
}

/// The body of `POST /api/v1/rollouts/{name}/{action}`; every field optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutActionBody {
    /// `resume`: also give failed nodes fresh attempts.
    #[serde(default)]
    pub retry_failed: bool,
    /// `abort`: why, for the audit log and status.
    #[serde(default)]
    pub reason: Option<String>,
    /// `override`: withdraw the override instead of setting it.
    #[serde(default)]
    pub off: bool,
}

fn rollout_err(e: crate::orchestrator::OrchestratorError) -> Response {
    use crate::orchestrator::OrchestratorError as E;
    match e {
        E::IntentNotFound(_) => err(StatusCode::NOT_FOUND, e.to_string()),
        E::Store(e) => store_err(e),
        other => err(StatusCode::CONFLICT, other.to_string()),
    }
}

async fn rollout_status_handler(
    State(st): State<AppState>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&st, &headers, false) {
        return r;
    }
    match crate::orchestrator::control::status(&*st.shared.store, &name).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => rollout_err(e),
    }
}

async fn rollout_action_handler(
    State(st): State<AppState>,
    UrlPath((name, action)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    use crate::orchestrator::control;
    if let Err(r) = authorize(&st, &headers, true) {
        return r;
    }
    let body: RolloutActionBody = if body.is_empty() {
        RolloutActionBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return err(StatusCode::BAD_REQUEST, format!("rollout {action}: {e}")),
        }
    };
    let store = &*st.shared.store;
    let r = match action.as_str() {
        "pause" => control::pause(store, &name).await,
        "resume" => control::resume(store, &name, body.retry_failed).await,
        "abort" => {
            let reason = body.reason.as_deref().unwrap_or("aborted by the operator");
            control::abort(store, &name, reason).await
        }
        "override" => control::set_recovery_override(store, &name, !body.off).await,
        other => {
            return err(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown rollout action {other:?}; expected pause, resume, abort or override"
                ),
            )
        }
    };
    match r {
        Ok(v) => {
            tracing::info!(rollout = %name, %action, "rollout control changed through the Control API");
            Json(v).into_response()
        }
        Err(e) => rollout_err(e),
    }
}

async fn heartbeat_handler(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorize(&st, &headers, true) {
        return r;
    }
    let hb: HeartbeatBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("heartbeat: {e}")),
    };
    match intake(&st.shared.intake, hb, st.via, None).await {
        Ok(reply) => Json(reply).into_response(),
        Err(IntakeError::Refused(e)) => err(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(IntakeError::Store(e)) => store_err(e),
        Err(e @ (IntakeError::Busy { .. } | IntakeError::ShuttingDown)) => {
            // Back-pressure, not failure: the node keeps its heartbeat and
            // sends it again (here or to another replica).
            let mut r = err(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
        // Already logged once per batch by the writer.
        Err(e @ IntakeError::Commit(_)) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditQuery {
    freshness_ms: Option<i64>,
}

async fn audit_handler(
    State(st): State<AppState>,
    Query(q): Query<AuditQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&st, &headers, false) {
        return r;
    }
    let mut cfg = st.shared.cfg.audit;
    if let Some(f) = q.freshness_ms {
        cfg.freshness_ms = f.max(0);
    }
    match run_audit(
        st.shared.store.as_ref(),
        &st.shared.inventory,
        cfg,
        now_millis(),
    )
    .await
    {
        Ok(r) => Json(r).into_response(),
        Err(e) => store_err(e),
    }
}

/// `GET /metrics` (see [`metrics`]): no token, like most exporters.
async fn metrics_handler(State(st): State<AppState>) -> Response {
    let store = st.shared.store.as_ref();
    let report = match run_audit(
        store,
        &st.shared.inventory,
        st.shared.cfg.audit,
        now_millis(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return store_err(e),
    };
    let intents = match store.list_objects(Kind::UpdateIntent).await {
        Ok(i) => i,
        Err(e) => return store_err(e),
    };
    let mut rollouts = Vec::with_capacity(intents.len());
    for i in &intents {
        match crate::orchestrator::control::status(store, i.name()).await {
            Ok(v) => rollouts.push(v),
            Err(e) => {
                tracing::warn!(intent = %i.name(), error = %e, "rollout left out of /metrics")
            }
        }
    }
    (
        [(header::CONTENT_TYPE, fabric_runtime::metrics::CONTENT_TYPE)],
        metrics::render(&report, &rollouts),
    )
        .into_response()
}

/// Loads the audit's inputs from the store and computes it.
pub async fn run_audit(
    store: &dyn Store,
    inventory: &EdgeInventory,
    cfg: AuditConfig,
    now_ms: i64,
) -> Result<AuditReport, StoreError> {
    let heartbeats = store.list_heartbeats().await?;
    let nodes = store.list_objects(Kind::FabricNode).await?;
    // The process-wide listener audit also finds sockets nobody registered.
    let listeners = inventory.audit().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "listener audit failed; reporting registered listeners only");
        inventory.entries()
    });
    Ok(audit::compute(AuditInput {
        now_ms,
        heartbeats: &heartbeats,
        nodes: &nodes,
        control_plane_listeners: &listeners,
        config: cfg,
    }))
}

/// Why a heartbeat was not taken.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The heartbeat itself is invalid; sending it again will not help.
    #[error(transparent)]
    Refused(#[from] HeartbeatError),
    /// Reading the store for the node's spec or the reply failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The intake queue is full; nothing was stored. Retry shortly.
    #[error(
        "heartbeat intake busy: {capacity} heartbeats already waiting to be stored; \
         nothing was stored, retry shortly"
    )]
    Busy {
        /// Heartbeats the queue holds.
        capacity: usize,
    },
    /// The intake is stopping; nothing was stored. Retry (another replica).
    #[error("heartbeat intake shutting down; nothing was stored, retry")]
    ShuttingDown,
    /// The batch holding this heartbeat failed to commit.
    #[error("storing the heartbeat batch: {0}")]
    Commit(Arc<StoreError>),
}

impl IntakeError {
    /// True when sending the same heartbeat again later may succeed (the
    /// heartbeat itself was fine).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, IntakeError::Refused(_))
    }
}

impl HeartbeatIntake {
    /// One heartbeat through the full intake (validation, batched durable
    /// store, reply), as the HTTP listener takes it; for benches and tools
    /// that hold an intake without the listeners.
    pub async fn heartbeat(
        &self,
        hb: HeartbeatBody,
        via: IntakePath,
    ) -> Result<HeartbeatReply, IntakeError> {
        intake(self, hb, via, None).await
    }
}

/// Heartbeat intake for the node co-located with this process (see
/// `crate::replica`): a transport refuses to dial itself, so that node cannot
/// open a fabric channel to its own `control` service. Its heartbeats come in
/// through this call instead, with the same checks as the fabric path (the
/// node's own key as the verified sender) and stamped `fabric`: nothing
/// crosses a TCP edge, so it is no compat dependency.
pub async fn intake_colocated(
    intake: &HeartbeatIntake,
    hb: HeartbeatBody,
    node: NodeId,
) -> Result<HeartbeatReply, IntakeError> {
    self::intake(intake, hb, IntakePath::Fabric, Some(node)).await
}

/// Validates, stamps and stores one heartbeat (through the batching queue:
/// this returns only after its batch committed) and builds the reply.
/// `sender` is the verified `NodeId` of a fabric channel's peer.
async fn intake(
    intake: &HeartbeatIntake,
    mut hb: HeartbeatBody,
    via: IntakePath,
    sender: Option<NodeId>,
) -> Result<HeartbeatReply, IntakeError> {
    let store = intake.store();
    // Also keeps a malformed node name out of a shared batch: the checks are
    // the store's name rules.
    hb.validate()?;
    if let Some(peer) = sender {
        if hb.node_id != peer.to_string() {
            return Err(HeartbeatError::WrongSender {
                claimed: hb.node_id.clone(),
                presented: peer.to_string(),
            }
            .into());
        }
    }
    // A cached spec is used only when it carries exactly the claimed
    // `nodeId`; anything else (unknown node, no key, another key) is decided
    // on a fresh store read, so the cache never accepts what the store would
    // refuse, except for a key changed within the cache's max age.
    let snapshot = intake.reply_snapshot().await?;
    let cached = snapshot
        .as_ref()
        .and_then(|s| s.node_with_id(&hb.node, &hb.node_id))
        .cloned();
    let node_spec = match cached {
        Some(spec) => Some(spec),
        None => store
            .get_object(Kind::FabricNode, &hb.node)
            .await?
            .and_then(|o| serde_json::from_value::<FabricNodeSpec>(o.spec).ok()),
    };
    if let Some(expected) = node_spec.as_ref().and_then(|s| s.node_id.clone()) {
        if !expected.eq_ignore_ascii_case(&hb.node_id) {
            return Err(HeartbeatError::NodeIdMismatch {
                node: hb.node.clone(),
                claimed: hb.node_id.clone(),
                expected,
            }
            .into());
        }
    }
    hb.received_via = Some(via);
    let node = hb.node.clone();
    let body = serde_json::to_value(&hb).map_err(|e| StoreError::Invalid {
        what: format!("heartbeat of {node:?}"),
        reason: e.to_string(),
    })?;
    let received_ms = now_millis();
    intake.record(node.clone(), body, received_ms).await?;
    // Only a node that says it cannot hold leases is updated through the
    // bridge; a lease-capable node never gets a command, even if the store
    // named it (it is updated by leases, and two update paths would race).
    let bridge = if hb.lease_support == Some(false) {
        crate::orchestrator::bridge_command(store.as_ref(), &node, received_ms.div_euclid(1000))
            .await?
    } else {
        None
    };
    if let Some(b) = &bridge {
        tracing::info!(node, intent = %b.intent, version = %b.version, "bridge command delivered");
    }
    // Re-read after the commit: the snapshot may have been refreshed while
    // this heartbeat waited for its batch.
    let (update_hints, control_endpoints) = match intake.reply_snapshot().await? {
        Some(s) => (
            s.update_hints(&node, node_spec.as_ref()),
            s.endpoints().iter().map(|e| e.to_string()).collect(),
        ),
        None => (
            update_hints(store.as_ref(), &node, node_spec.as_ref()).await?,
            canonical_endpoints(store.as_ref())
                .await?
                .into_iter()
                .map(|e| e.to_string())
                .collect(),
        ),
    };
    let records = records_for(store.as_ref(), &node, &hb, &update_hints).await?;
    Ok(HeartbeatReply {
        accepted: true,
        update_hints,
        control_endpoints,
        error: None,
        bridge,
        records,
        ..HeartbeatReply::default()
    })
}

/// The signed records a node gets in its heartbeat reply: its leases, and
/// the intents its hints name while its updater reports an older generation
/// (or none). A node that is up to date costs the intake nothing but the
/// check, so steady-state replies stay small.
async fn records_for(
    store: &dyn Store,
    node: &str,
    hb: &HeartbeatBody,
    hints: &BTreeMap<String, i64>,
) -> Result<Vec<String>, StoreError> {
    if hints.is_empty() {
        return Ok(Vec::new());
    }
    let reported = hb.updater.update.as_ref();
    let behind = hints.iter().any(|(component, generation)| {
        reported.is_none_or(|u| u.phase != *component || (u.generation as i64) < *generation)
    });
    let mut out = Vec::new();
    if behind {
        for r in store.list_records(Some(Kind::UpdateIntent)).await? {
            let Ok(env) = fabric_schemas::Envelope::decode(&r.envelope) else {
                continue;
            };
            let Ok(fabric_schemas::Spec::UpdateIntent(i)) = env.record.spec() else {
                continue;
            };
            let named = hints.get(i.component.as_str()).is_some_and(|g| {
                (env.record.generation >> crate::publish::RESIGN_BITS) as i64 == *g
            });
            if named {
                out.push(hex::encode(&r.envelope));
            }
        }
    }
    for phase in ["node-agent", "host-agent"] {
        if let Some(r) = store
            .get_record(Kind::RolloutLease, &format!("{node}.{phase}"))
            .await?
        {
            out.push(hex::encode(&r.envelope));
        }
    }
    Ok(out)
}

/// The newest `UpdateIntent` generation per component that targets `node`
/// (the rule is `fabric_proto::hints::update_hints`), read from the store.
async fn update_hints(
    store: &dyn Store,
    node: &str,
    spec: Option<&FabricNodeSpec>,
) -> Result<BTreeMap<String, i64>, StoreError> {
    let Some(spec) = spec else {
        return Ok(BTreeMap::new());
    };
    let intents = reply_cache::load_intents(store).await?;
    Ok(fabric_proto::hints::update_hints(
        node,
        spec,
        intents.iter().map(|(s, g)| (s, *g)),
    ))
}

/// The canonical control endpoints (the rule is
/// `fabric_proto::endpoint::canonical_control_endpoints`), read from the store.
pub async fn canonical_endpoints(store: &dyn Store) -> Result<Vec<ControlEndpoint>, StoreError> {
    let services = reply_cache::load_services(store).await?;
    let mut ids = std::collections::HashMap::new();
    for s in &services {
        if s.service != fabric_proto::endpoint::CONTROL_API_SERVICE {
            continue;
        }
        for p in &s.providers {
            if ids.contains_key(p) {
                continue;
            }
            let id = store
                .get_object(Kind::FabricNode, p)
                .await?
                .and_then(|o| serde_json::from_value::<FabricNodeSpec>(o.spec).ok())
                .and_then(|n| n.node_id)
                .and_then(|id| id.parse::<NodeId>().ok());
            ids.insert(p.clone(), id);
        }
    }
    Ok(fabric_proto::endpoint::canonical_control_endpoints(
        &services,
        |name| ids.get(name).copied().flatten(),
        &[],
    ))
}

/// Serves heartbeats on the fabric service `control`: framed JSON requests
/// and replies, many per channel (the node's control session).
fn spawn_control_service(
    transport: &Transport,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, ApiError> {
    let mut listener = transport
        .listen(CONTROL_SERVICE)
        .map_err(|e| ApiError::Fabric {
            service: CONTROL_SERVICE.into(),
            reason: e.to_string(),
        })?;
    Ok(tokio::spawn(async move {
        loop {
            let ch = tokio::select! {
                ch = listener.accept() => ch,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let Some(ch) = ch else { return };
            let shared = shared.clone();
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                let peer = ch.peer();
                let mut framed = Framed::with_max_frame(ch, MAX_HEARTBEAT_BYTES);
                loop {
                    let req = tokio::select! {
                        r = framed.recv::<ControlRequest>() => r,
                        _ = stop.wait_for(|s| *s) => return,
                    };
                    let reply = match req {
                        Ok(ControlRequest::Heartbeat(hb)) => {
                            match intake(&shared.intake, *hb, IntakePath::Fabric, Some(peer)).await
                            {
                                Ok(r) => r,
                                Err(e) => HeartbeatReply {
                                    accepted: false,
                                    error: Some(e.to_string()),
                                    ..HeartbeatReply::default()
                                },
                            }
                        }
                        // Closed or garbage: end this session; the node reconnects.
                        Err(e) => {
                            tracing::debug!(peer = %peer.short(), error = %e, "control session ended");
                            return;
                        }
                    };
                    if framed.send(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    }))
}
