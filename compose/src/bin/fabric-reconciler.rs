//! `fabric-reconciler`: the control-plane process.
//!
//! `serve` campaigns for leadership through the store; the leader applies the
//! GitOps folder to the store, publishes signed records and drives rollouts,
//! followers wait and take over when the leader's lease lapses. With `--node`
//! the replica runs co-located with a `control-api` node: an in-process
//! node-agent gets the published records and carries the fabric `control`
//! service. The Control API is served by every replica. Ctrl-C or SIGTERM stop
//! it cleanly (leadership is released at once). Design: `docs/control-plane.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use fabric::topology::{NodeId, TopologyLabels};
use fabric_compose::replica::{Replica, ReplicaConfig};
use fabric_node_agent::AgentConfig;
use fabric_reconciler::api::{ApiConfig, CompatConfig, Token};
use fabric_reconciler::controller::{ControlPlaneConfig, RolloutLoop};
use fabric_reconciler::orchestrator::{Orchestrator, OrchestratorConfig, OrchestratorKeys};
use fabric_reconciler::publish::Signer;
use fabric_reconciler::source::GitOpsConfig;
use fabric_reconciler::store::{EmbeddedStore, PostgresConfig, PostgresStore, Store};
use fabric_schemas::time::parse_duration;

#[derive(Parser)]
#[command(
    name = "fabric-reconciler",
    version,
    about = "The Fabric control plane"
)]
struct Cli {
    /// Log lines as `text` or `json` (one object per event); the filter is FABRIC_LOG.
    #[arg(long, global = true, default_value = "text", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<fabric_runtime::logging::LogFormat>()))]
    log_format: fabric_runtime::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run a reconciler replica: GitOps source, registry publishing, rollouts,
    /// Control API, leader election; optionally co-located with a node (--node).
    Serve(Box<ServeArgs>),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// `embedded:PATH` (a redb file) or `postgres:URL` (a libpq string or postgresql:// URL).
    #[arg(long)]
    store: String,
    /// GitOps folder of manifests to apply.
    #[arg(long)]
    gitops: Option<PathBuf>,
    /// Delete objects removed from the GitOps folder (default: report them as orphaned).
    #[arg(long)]
    prune: bool,
    /// Folder written by `fabricctl keys init` (trust-root.yaml and keys/control-*.pem).
    #[arg(long)]
    keys: PathBuf,
    /// Lifetime of signed records; they are re-signed at half of it.
    #[arg(long, default_value = "24h")]
    record_ttl: String,
    /// Leader lease; a follower takes over at most this long after a leader dies.
    #[arg(long, default_value = "15s")]
    lease_ttl: String,
    /// This replica's name in the leader election (default: host name and pid).
    #[arg(long)]
    holder: Option<String>,
    /// Time between rollout driver ticks (leader only).
    #[arg(long, default_value = "5s")]
    rollout_interval: String,

    /// Control API HTTP address (needs --token-file).
    #[arg(long, requires = "token_file")]
    api_listen: Option<SocketAddr>,
    /// File holding the operator bearer token (at least 16 characters).
    #[arg(long, requires = "api_listen")]
    token_file: Option<PathBuf>,
    /// Legacy heartbeat listener (compat overlap) for nodes not yet on the fabric.
    #[arg(long, requires = "api_listen")]
    compat_listen: Option<SocketAddr>,
    /// Token legacy nodes present on --compat-listen (besides the operator token).
    #[arg(long, requires = "compat_listen")]
    compat_token_file: Option<PathBuf>,

    /// Run co-located with this node (its FabricNode name): an in-process
    /// node-agent receives the published records and carries the fabric
    /// `control` service.
    #[arg(long, requires_all = ["node_state", "api_listen"])]
    node: Option<String>,
    /// The co-located node's state folder (node key, peer cache, status.json).
    #[arg(long, requires = "node")]
    node_state: Option<PathBuf>,
    /// UDP address of the co-located node's QUIC socket.
    #[arg(long, default_value = "0.0.0.0:7100", requires = "node")]
    listen: SocketAddr,
    /// A peer to start from before the directory knows anyone: NODE_ID@IP:PORT.
    #[arg(long = "bootstrap", requires = "node")]
    bootstrap: Vec<String>,
    #[arg(long, default_value = "", requires = "node")]
    area: String,
    #[arg(long, default_value = "", requires = "node")]
    site_id: String,
    #[arg(long, default_value = "", requires = "node")]
    locality_group: String,
    #[arg(long, default_value = "", requires = "node")]
    nat_group: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    fabric_runtime::logging::init(cli.log_format, "info");
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    match cli.command {
        Command::Serve(a) => rt.block_on(serve(*a)),
    }
}

fn seconds(flag: &str, value: &str) -> anyhow::Result<Duration> {
    let s = parse_duration(value).with_context(|| format!("--{flag}"))?;
    Ok(Duration::from_secs(
        u64::try_from(s).context("duration out of range")?,
    ))
}

/// Where the desired state lives, checked before anything is opened so a
/// typo fails at once.
enum StoreSpec<'a> {
    Embedded(&'a str),
    Postgres(&'a str),
}

fn parse_store(spec: &str) -> anyhow::Result<StoreSpec<'_>> {
    match spec.split_once(':') {
        Some(("embedded", path)) if !path.is_empty() => Ok(StoreSpec::Embedded(path)),
        Some(("postgres", url)) if !url.is_empty() => Ok(StoreSpec::Postgres(url)),
        _ => bail!("--store {spec:?}: expected embedded:PATH or postgres:URL"),
    }
}

async fn open_store(spec: StoreSpec<'_>) -> anyhow::Result<Arc<dyn Store>> {
    match spec {
        StoreSpec::Embedded(path) => {
            let store = EmbeddedStore::open(PathBuf::from(path))
                .await
                .with_context(|| format!("opening embedded store {path}"))?;
            Ok(Arc::new(store))
        }
        StoreSpec::Postgres(url) => {
            let store = PostgresStore::connect(PostgresConfig::new(url))
                .await
                .context("connecting to PostgreSQL")?;
            Ok(Arc::new(store))
        }
    }
}

fn parse_bootstrap(s: &str) -> anyhow::Result<(NodeId, SocketAddr)> {
    let (id, addr) = s
        .split_once('@')
        .with_context(|| format!("--bootstrap {s:?}: expected NODE_ID@IP:PORT"))?;
    Ok((
        id.parse().with_context(|| format!("--bootstrap {s:?}"))?,
        addr.parse()
            .with_context(|| format!("--bootstrap {s:?}: bad address"))?,
    ))
}

/// The orchestrator key (`keys/orchestrator-1.pem`) and, if present, the
/// recovery-admin key. `None` when there is no orchestrator key: the replica
/// then publishes but does not drive rollouts (and says so).
fn orchestrator_keys(dir: &Path) -> anyhow::Result<Option<OrchestratorKeys>> {
    let read = |file: &str| -> anyhow::Result<Option<ed25519_dalek::SigningKey>> {
        let path = dir.join("keys").join(file);
        if !path.exists() {
            return Ok(None);
        }
        fabric_schemas::keys::read_private_key(&path)
            .map(Some)
            .with_context(|| format!("reading {}", path.display()))
    };
    let Some(orchestrator) = read("orchestrator-1.pem")? else {
        tracing::warn!(dir = %dir.join("keys").display(), "no orchestrator-1.pem: rollouts will not be driven");
        return Ok(None);
    };
    Ok(Some(OrchestratorKeys {
        orchestrator,
        recovery_admin: read("recovery-admin-1.pem")?,
    }))
}

fn api_config(a: &ServeArgs) -> anyhow::Result<Option<ApiConfig>> {
    let (Some(bind), Some(token_file)) = (a.api_listen, &a.token_file) else {
        return Ok(None);
    };
    let mut cfg = ApiConfig::new(bind, Token::from_file(token_file)?);
    if let Some(compat) = a.compat_listen {
        cfg.compat = Some(CompatConfig {
            bind: compat,
            token: a
                .compat_token_file
                .as_deref()
                .map(Token::from_file)
                .transpose()?,
        });
    }
    Ok(Some(cfg))
}

fn node_config(a: &ServeArgs, signer: &Signer) -> anyhow::Result<Option<AgentConfig>> {
    let (Some(name), Some(state)) = (&a.node, &a.node_state) else {
        return Ok(None);
    };
    // The node trusts the same trust root the records are signed for.
    let mut cfg = AgentConfig::new(name, state.clone(), a.listen, signer.trust().clone());
    cfg.labels = TopologyLabels {
        area: a.area.clone(),
        site_id: a.site_id.clone(),
        locality_group: a.locality_group.clone(),
        nat_group: a.nat_group.clone(),
    };
    cfg.bootstrap = a
        .bootstrap
        .iter()
        .map(|s| parse_bootstrap(s))
        .collect::<anyhow::Result<_>>()?;
    Ok(Some(cfg))
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    // Everything that can be checked without side effects is checked first.
    let store_spec = parse_store(&a.store)?;
    let record_ttl = seconds("record-ttl", &a.record_ttl)?;
    let lease_ttl = seconds("lease-ttl", &a.lease_ttl)?;
    let rollout_interval = seconds("rollout-interval", &a.rollout_interval)?;
    if rollout_interval.is_zero() {
        bail!("--rollout-interval must be at least 1s");
    }
    let signer = Signer::from_keys_dir(&a.keys)?;
    let orchestrator = orchestrator_keys(&a.keys)?;
    if let Some(dir) = &a.gitops {
        if !dir.is_dir() {
            bail!("--gitops {}: not a folder", dir.display());
        }
    }
    let api = api_config(&a)?;
    let node = node_config(&a, &signer)?;
    let store = open_store(store_spec).await?;
    let holder = a.holder.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "reconciler".into());
        format!("{host}-{}", std::process::id())
    });
    let mut plane = ControlPlaneConfig::new(holder.clone());
    plane.lease_ttl = lease_ttl;
    plane.publish.ttl = record_ttl;
    plane.gitops = a.gitops.clone().map(|dir| {
        let mut g = GitOpsConfig::new(dir);
        g.prune = a.prune;
        g
    });
    let mut cfg = ReplicaConfig::new(plane);
    cfg.node = node;
    cfg.api = api;
    cfg.rollouts = orchestrator.map(|keys| RolloutLoop {
        orchestrator: Orchestrator::new(keys, OrchestratorConfig::default()),
        interval: rollout_interval,
    });
    tracing::info!(holder = %holder, store = %a.store.split(':').next().unwrap_or(""), prune = a.prune, node = a.node.as_deref().unwrap_or("-"), "fabric-reconciler starting");
    let replica = Replica::start(store, signer, cfg).await?;
    replica.run_until(shutdown_signal()).await?;
    tracing::info!(holder = %holder, "fabric-reconciler stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the reconciler");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested");
}
