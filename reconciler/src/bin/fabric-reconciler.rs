//! `fabric-reconciler`: the control-plane process.
//!
//! `serve` campaigns for leadership through the store; the leader applies the
//! GitOps folder to the store and publishes signed records, followers wait and
//! take over when the leader's lease lapses. Ctrl-C or SIGTERM stop it cleanly
//! (leadership is released at once).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use fabric_reconciler::controller::{ControlPlane, ControlPlaneConfig};
use fabric_reconciler::publish::{RecordSink, Signer, StoreOnlySink};
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
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run a reconciler replica: GitOps source, registry publishing, leader election.
    Serve(ServeArgs),
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
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    match cli.command {
        Command::Serve(a) => rt.block_on(serve(a)),
    }
}

fn seconds(flag: &str, value: &str) -> anyhow::Result<Duration> {
    let s = parse_duration(value).with_context(|| format!("--{flag}"))?;
    Ok(Duration::from_secs(
        u64::try_from(s).context("duration out of range")?,
    ))
}

async fn open_store(spec: &str) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(path) = spec.strip_prefix("embedded:") {
        let store = EmbeddedStore::open(PathBuf::from(path))
            .await
            .with_context(|| format!("opening embedded store {path}"))?;
        Ok(Arc::new(store))
    } else if let Some(url) = spec.strip_prefix("postgres:") {
        let store = PostgresStore::connect(PostgresConfig::new(url))
            .await
            .context("connecting to PostgreSQL")?;
        Ok(Arc::new(store))
    } else {
        bail!("--store {spec:?}: expected embedded:PATH or postgres:URL")
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let record_ttl = seconds("record-ttl", &a.record_ttl)?;
    let lease_ttl = seconds("lease-ttl", &a.lease_ttl)?;
    let signer = Signer::from_keys_dir(&a.keys)?;
    let store = open_store(&a.store).await?;
    if let Some(dir) = &a.gitops {
        if !dir.is_dir() {
            bail!("--gitops {}: not a folder", dir.display());
        }
    }
    let holder = a.holder.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "reconciler".into());
        format!("{host}-{}", std::process::id())
    });
    let mut config = ControlPlaneConfig::new(holder.clone());
    config.lease_ttl = lease_ttl;
    config.publish.ttl = record_ttl;
    config.gitops = a.gitops.map(|dir| {
        let mut g = GitOpsConfig::new(dir);
        g.prune = a.prune;
        g
    });
    // Records are stored; nodes are handed them by the Control API's control
    // channel. In-process fleets (tests, `fabricctl up`) use `AgentSink`.
    let sink: Arc<dyn RecordSink> = Arc::new(StoreOnlySink);
    tracing::info!(holder = %holder, store = %a.store.split(':').next().unwrap_or(""), prune = a.prune, "fabric-reconciler starting");
    let plane = ControlPlane::new(store, signer, sink, config);
    plane.run(shutdown_signal()).await?;
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
