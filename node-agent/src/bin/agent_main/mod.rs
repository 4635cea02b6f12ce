//! The node-agent's command line, shared by the `fabric-node-agent` binary
//! and its two stand-in builds for local rollouts: `-next` (the same agent
//! reporting another version, so its digest and version differ) and
//! `-broken` (starts, then exits before it says `READY=1`: a build that
//! fails its health check).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fabric::gossip::GossipConfig;
use fabric::topology::{NodeId, TopologyLabels};
use fabric_node_agent::{start, AgentConfig};
use fabric_schemas::TrustAnchor;

/// Join the fabric, keep the signed directory, probe the core services.
///
/// State (node key, peer cache, status.json) lives in --state-dir; a restart
/// comes back from the peer cache without contacting the control plane.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The node's name (its FabricNode metadata.name).
    #[arg(long)]
    name: String,
    #[arg(long)]
    state_dir: PathBuf,
    /// UDP address of the node's QUIC socket.
    #[arg(long, default_value = "0.0.0.0:7100")]
    listen: SocketAddr,
    /// TrustRoot manifest (from `fabricctl keys init`).
    #[arg(long)]
    trust_root: PathBuf,
    /// A peer to start from before the directory knows anyone: NODE_ID@IP:PORT.
    /// Repeat it: every bootstrap peer (and every node of the persisted peer
    /// cache) is a way in, so joining does not depend on one of them; a peer
    /// that does not answer is retried with backoff and jitter.
    #[arg(long = "bootstrap")]
    bootstrap: Vec<String>,
    /// Gossip partners kept besides the planned peers (default: log2 of the
    /// fleet size + 3, between 4 and 16).
    #[arg(long)]
    gossip_partners: Option<usize>,
    /// Folder of signed envelopes (*.fabenv) to admit at start.
    #[arg(long)]
    seed_dir: Option<PathBuf>,
    #[arg(long, default_value = "")]
    area: String,
    #[arg(long, default_value = "")]
    site_id: String,
    #[arg(long, default_value = "")]
    locality_group: String,
    #[arg(long, default_value = "")]
    nat_group: String,
    /// Forward relay tunnels for other nodes.
    #[arg(long)]
    relay: bool,
    /// Gossip round length in milliseconds.
    #[arg(long, default_value_t = 1000)]
    round_ms: u64,
    /// Core-service probe interval in milliseconds.
    #[arg(long, default_value_t = 5000)]
    probe_ms: u64,
    /// An external TCP ingress edge: `LISTEN=SERVICE@NODE_ID` maps every TCP
    /// connection to LISTEN into a fabric channel to SERVICE on the node
    /// NODE_ID (repeatable). Registered as a `service-ingress` edge.
    #[arg(long = "ingress", value_parser = parse_ingress)]
    ingress: Vec<fabric_node_agent::agent::IngressSpec>,
    /// Serve Prometheus `/metrics` on this TCP address (e.g. 127.0.0.1:9464;
    /// a registered `metrics-edge` listener). Off by default.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Log lines as `text` or `json` (one object per event); the filter is FABRIC_LOG.
    #[arg(long, default_value = "text", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<fabric_runtime::logging::LogFormat>()))]
    log_format: fabric_runtime::logging::LogFormat,
    /// Heartbeat interval to the control plane in milliseconds.
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
    /// The updater's safety-net poll in milliseconds (each wait is jittered
    /// 0.5x..1.5x); hints, gossip and file touches wake it sooner.
    #[arg(long, default_value_t = 60_000)]
    updater_poll_ms: u64,
    /// Do not watch update-trigger.json and apply-result.json: the updater
    /// polls only, and heartbeats report `supports_hint_wake: false`.
    #[arg(long)]
    no_updater_file_wake: bool,
    /// Run no updater at all (heartbeats then report an updater gap).
    #[arg(long)]
    no_updater: bool,
    /// How long an apply request may go unanswered (no host agent took it)
    /// while this build runs before the attempt is rolled back as
    /// `apply_timeout`; e.g. 90s, 10m.
    #[arg(long, default_value = "10m")]
    updater_apply_timeout: String,
}

fn parse_ingress(s: &str) -> Result<fabric_node_agent::agent::IngressSpec, String> {
    s.parse()
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

/// What a build is.
pub(crate) struct Build {
    /// The version heartbeats and `READY=1` report.
    pub version: &'static str,
    /// Exit before readiness (the `-broken` stand-in).
    pub broken: bool,
}

/// Runs the node-agent command line as `build`.
pub(crate) fn run(build: Build) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(main(build))
}

async fn main(build: Build) -> anyhow::Result<()> {
    let args = Args::parse();
    fabric_runtime::logging::init(args.log_format, "info");
    let spec = fabric_schemas::keys::read_trust_root_manifest(&args.trust_root)?;
    let trust = TrustAnchor::from_spec(&spec).context("trust root")?;
    let mut cfg = AgentConfig::new(&args.name, args.state_dir.clone(), args.listen, trust);
    cfg.version = build.version.to_owned();
    cfg.labels = TopologyLabels {
        area: args.area,
        site_id: args.site_id,
        locality_group: args.locality_group,
        nat_group: args.nat_group,
    };
    cfg.relay = args.relay;
    cfg.gossip_partners = args.gossip_partners;
    cfg.bootstrap = args
        .bootstrap
        .iter()
        .map(|s| parse_bootstrap(s))
        .collect::<anyhow::Result<_>>()?;
    cfg.gossip = GossipConfig {
        round_ms: args.round_ms.max(50),
        ..GossipConfig::default()
    };
    cfg.probe_interval = Duration::from_millis(args.probe_ms.max(100));
    cfg.heartbeat_interval = Duration::from_millis(args.heartbeat_ms.max(100));
    cfg.metrics_listen = args.metrics_listen;
    cfg.ingress = args.ingress.clone();
    cfg.updater = !args.no_updater;
    cfg.updater_poll = Duration::from_millis(args.updater_poll_ms.max(100));
    cfg.updater_apply_timeout = Duration::from_secs(
        fabric_schemas::time::parse_duration(&args.updater_apply_timeout)
            .context("--updater-apply-timeout")? as u64,
    );
    cfg.updater_file_wake = !args.no_updater_file_wake;
    if let Some(dir) = &args.seed_dir {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "fabenv"))
            .collect();
        files.sort();
        for f in files {
            cfg.seed_records
                .push(std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?);
        }
    }
    let handle = start(cfg).await?;
    tracing::info!(name = %args.name, node_id = %handle.node_id(), addr = %handle.local_addr(), version = build.version, "node-agent running");
    if build.broken {
        // A stand-in for a build that fails its health check.
        tracing::error!(
            version = build.version,
            "this build is broken on purpose: exiting before readiness"
        );
        handle.stop().await;
        anyhow::bail!("build {} is broken on purpose", build.version);
    }
    tell_supervisor(build.version).await;
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; }
        _ = terminate() => {}
    }
    tracing::info!("shutting down");
    handle.stop().await;
    Ok(())
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending().await
}

/// Under a supervisor (the host agent, or systemd): `READY=1` with the
/// digest of the binary that runs, measured here, then `WATCHDOG=1` every
/// two seconds while the process lives.
async fn tell_supervisor(version: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let digest =
        tokio::task::spawn_blocking(fabric_node_agent::update::artifact::running_binary_sha256)
            .await
            .ok()
            .flatten();
    let Some(digest) = digest else {
        tracing::warn!("cannot hash the running binary; readiness not reported");
        return;
    };
    let ready = format!("READY=1\nDIGEST={digest}\nVERSION={version}");
    match fabric_runtime::supervisor::notify(&ready) {
        Ok(_) => tracing::info!(%digest, "readiness sent to the supervisor"),
        Err(e) => tracing::warn!(error = %e, "readiness not sent to the supervisor"),
    }
    tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            if fabric_runtime::supervisor::notify("WATCHDOG=1").is_err() {
                return;
            }
        }
    });
}
