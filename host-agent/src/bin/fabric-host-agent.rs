//! `fabric-host-agent`: runs once per machine and supervises the node-agent.
//!
//! - `run`: start the node-agent from its `current` slot, watch its
//!   readiness and exits, and apply the updates its updater asks for.
//! - `notify`: tell the supervising host agent something (`READY=1`,
//!   `WATCHDOG=1`), like `systemd-notify`, for builds that are scripts.
//! - `install`: write the systemd unit into a root folder.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fabric_host_agent::agent::{HostAgent, HostConfig};
use fabric_host_agent::phase::Window;
use fabric_runtime::BackoffConfig;

/// The per-machine supervisor of the Fabric node-agent.
#[derive(Parser)]
#[command(name = "fabric-host-agent", version, about)]
struct Cli {
    /// Log lines as `text` or `json` (one object per event); the filter is FABRIC_LOG.
    #[arg(long, global = true, default_value = "text", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<fabric_runtime::logging::LogFormat>()))]
    log_format: fabric_runtime::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Supervise the node-agent and apply its updates.
    Run(RunArgs),
    /// Send readiness or liveness to the host agent in $NOTIFY_SOCKET.
    Notify(NotifyArgs),
    /// Write the systemd unit that runs the host agent into ROOT.
    Install(InstallArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The node-agent's state folder (its `update/` holds the apply request).
    #[arg(long)]
    state_dir: PathBuf,
    /// The host agent's folder: slots, `current` / `previous`, its journal.
    #[arg(long)]
    host_dir: PathBuf,
    /// A node-agent binary to install as the first slot when none is current.
    #[arg(long)]
    node_agent: Option<PathBuf>,
    /// How long a new build has to say READY=1, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    ready_deadline_ms: u64,
    /// How long a ready build must keep running before it is committed, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    probation_ms: u64,
    /// The node-agent's arguments (after `--`).
    /// Stop (as on SIGTERM, stopping the node-agent too) when the process
    /// that started this one dies: for host agents a local fleet starts.
    #[arg(long)]
    exit_with_parent: bool,
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(clap::Args)]
struct NotifyArgs {
    /// READY=1.
    #[arg(long)]
    ready: bool,
    /// WATCHDOG=1.
    #[arg(long)]
    watchdog: bool,
    /// DIGEST=: the sha256 of the binary that runs.
    #[arg(long)]
    digest: Option<String>,
}

#[derive(clap::Args)]
struct InstallArgs {
    /// The root to write into (`/` on a real machine).
    #[arg(long)]
    root: PathBuf,
    /// Where the host-agent binary will be.
    #[arg(long, default_value = "/usr/local/bin/fabric-host-agent")]
    binary: PathBuf,
    /// The node-agent's state folder.
    #[arg(long, default_value = "/var/lib/fabric/node")]
    state_dir: PathBuf,
    /// The host agent's folder.
    #[arg(long, default_value = "/var/lib/fabric/host")]
    host_dir: PathBuf,
    /// The node-agent's arguments (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    fabric_runtime::logging::init(cli.log_format, "info");
    match cli.command {
        Command::Run(a) => run(a),
        Command::Notify(a) => {
            let mut msg = Vec::new();
            if a.ready {
                msg.push("READY=1".to_owned());
            }
            if a.watchdog {
                msg.push("WATCHDOG=1".to_owned());
            }
            if let Some(d) = a.digest {
                msg.push(format!("DIGEST={d}"));
            }
            anyhow::ensure!(
                !msg.is_empty(),
                "nothing to send: give --ready and/or --watchdog"
            );
            let sent = fabric_host_agent::notify::send(&msg.join("\n"))
                .context("sending to $NOTIFY_SOCKET")?;
            anyhow::ensure!(
                sent,
                "NOTIFY_SOCKET is not set: not running under a host agent"
            );
            Ok(())
        }
        Command::Install(a) => {
            let unit = format!(
                "[Unit]\nDescription=Fabric host agent (supervises the node-agent)\nAfter=network-online.target\nWants=network-online.target\n\n[Service]\nExecStart={} run --state-dir {} --host-dir {} -- {}\nRestart=always\nRestartSec=2\nKillMode=mixed\n\n[Install]\nWantedBy=multi-user.target\n",
                a.binary.display(),
                a.state_dir.display(),
                a.host_dir.display(),
                a.args.join(" ")
            );
            let dir = a.root.join("etc/systemd/system");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join("fabric-host-agent.service");
            fabric_schemas::keys::write_atomic(&path, unit.as_bytes(), 0o644)?;
            println!("wrote {}", path.display());
            Ok(())
        }
    }
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    if a.exit_with_parent {
        let parent = rustix::process::getppid();
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
            .context("asking to be stopped with the parent")?;
        // The parent may have died before the request took effect.
        if rustix::process::getppid() != parent {
            anyhow::bail!("the process that started this host agent is gone");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        let agent = HostAgent::new(HostConfig {
            state_dir: a.state_dir,
            host_dir: a.host_dir,
            initial: a.node_agent,
            args: a.args,
            window: Window {
                ready_deadline: Duration::from_millis(a.ready_deadline_ms),
                probation: Duration::from_millis(a.probation_ms),
            },
            restart_backoff: BackoffConfig::new(Duration::from_millis(500), Duration::from_secs(30)),
        })?;
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        agent.run(stop).await?;
        Ok(())
    })
}
