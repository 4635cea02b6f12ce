//! `fabricctl rollout pause|resume|abort|status|override NAME`: operator
//! control of one rollout (one `UpdateIntent`), through the Control API (its
//! address and token from `--server`/`--token-file` or the context file), or
//! with `--store` straight on the control plane's store, offline. The driver
//! picks changes up on its next tick; `status` shows a pause or abort at once.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use fabric_reconciler::api::{ApiClient, RolloutActionBody};
use fabric_reconciler::orchestrator::{control, RolloutView};
use fabric_reconciler::store::{EmbeddedStore, PostgresConfig, PostgresStore, Store};

use super::Output;

#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Stop granting new leases; outstanding ones may finish.
    Pause(Target),
    /// Continue after a pause, an automatic stop or an abort.
    Resume(ResumeArgs),
    /// Revoke every outstanding lease and grant no more.
    Abort(AbortArgs),
    /// Phase, counts, canary step, conditions with reasons, outstanding leases, bridge.
    Status(Target),
    /// Allow (or, with --off, withdraw) a farm-wide start for this rollout. The
    /// leases it produces are co-signed with the recovery-admin key, and nodes
    /// refuse them without that signature.
    Override(OverrideArgs),
}

#[derive(clap::Args)]
pub(crate) struct OverrideArgs {
    #[command(flatten)]
    pub target: Target,
    /// Withdraw the override instead of setting it.
    #[arg(long)]
    pub off: bool,
}

#[derive(clap::Args)]
pub(crate) struct Target {
    /// The rollout: the `UpdateIntent`'s name.
    pub name: String,
    /// Work on the control plane's store directly instead of the Control
    /// API: `embedded:PATH` (a redb file no replica holds open) or
    /// `postgres:URL` (e.g. `postgres:host=/var/run/postgresql dbname=fabric`).
    #[arg(long)]
    pub store: Option<String>,
    #[command(flatten)]
    pub server: super::apply::ServerArgs,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(clap::Args)]
pub(crate) struct ResumeArgs {
    #[command(flatten)]
    pub target: Target,
    /// Also give failed nodes (leased or bridged) fresh attempts.
    #[arg(long)]
    pub retry_failed: bool,
}

#[derive(clap::Args)]
pub(crate) struct AbortArgs {
    #[command(flatten)]
    pub target: Target,
    /// Why, for the audit log and status.
    #[arg(long, default_value = "aborted by the operator")]
    pub reason: String,
}

pub(crate) fn run(command: Command) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let target = match &command {
            Command::Pause(t) | Command::Status(t) => t,
            Command::Resume(a) => &a.target,
            Command::Abort(a) => &a.target,
            Command::Override(a) => &a.target,
        };
        let view = match &target.store {
            Some(spec) => offline(&command, &*open(spec).await?).await,
            None => through_api(&command, &target.server.client()?).await,
        };
        let view = view.with_context(|| format!("rollout {:?}", target.name))?;
        match target.output {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&view).context("encoding the status")?
            ),
            Output::Text => print!("{}", render(&view)),
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn offline(command: &Command, store: &dyn Store) -> Result<RolloutView> {
    Ok(match command {
        Command::Pause(t) => control::pause(store, &t.name).await?,
        Command::Resume(a) => control::resume(store, &a.target.name, a.retry_failed).await?,
        Command::Abort(a) => control::abort(store, &a.target.name, &a.reason).await?,
        Command::Status(t) => control::status(store, &t.name).await?,
        Command::Override(a) => {
            control::set_recovery_override(store, &a.target.name, !a.off).await?
        }
    })
}

async fn through_api(command: &Command, client: &ApiClient) -> Result<RolloutView> {
    Ok(match command {
        Command::Status(t) => client.rollout_status(&t.name).await?,
        Command::Pause(t) => {
            client
                .rollout_action(&t.name, "pause", &RolloutActionBody::default())
                .await?
        }
        Command::Resume(a) => {
            let b = RolloutActionBody {
                retry_failed: a.retry_failed,
                ..Default::default()
            };
            client.rollout_action(&a.target.name, "resume", &b).await?
        }
        Command::Abort(a) => {
            let b = RolloutActionBody {
                reason: Some(a.reason.clone()),
                ..Default::default()
            };
            client.rollout_action(&a.target.name, "abort", &b).await?
        }
        Command::Override(a) => {
            let b = RolloutActionBody {
                off: a.off,
                ..Default::default()
            };
            client
                .rollout_action(&a.target.name, "override", &b)
                .await?
        }
    })
}

async fn open(spec: &str) -> Result<Box<dyn Store>> {
    if let Some(path) = spec.strip_prefix("embedded:") {
        let path = PathBuf::from(path);
        // Opening creates a file; a typo must not silently make an empty store.
        if !path.exists() {
            bail!("embedded store {} does not exist", path.display());
        }
        let store = EmbeddedStore::open(&path)
            .await
            .with_context(|| format!("opening embedded store {}", path.display()))?;
        return Ok(Box::new(store));
    }
    if let Some(url) = spec.strip_prefix("postgres:") {
        let store = PostgresStore::connect(PostgresConfig::new(url))
            .await
            .context("connecting to the PostgreSQL store")?;
        return Ok(Box::new(store));
    }
    bail!("--store must be embedded:PATH or postgres:URL, got {spec:?}")
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The text form of `rollout status`.
pub(crate) fn render(v: &RolloutView) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let observed = v
        .observed_generation
        .map_or_else(|| "never".to_owned(), |g| g.to_string());
    let _ = writeln!(
        s,
        "rollout {}: {} {} (policy {}, generation {}, observed {})",
        v.intent,
        v.component.as_str(),
        v.version,
        v.policy,
        v.generation,
        observed
    );
    let phase = v.phase.map_or_else(
        || "NotStarted (the driver has not planned it yet)".to_owned(),
        |p| format!("{p:?}"),
    );
    let _ = writeln!(s, "phase:       {phase}");
    let c = &v.counts;
    let _ = writeln!(
        s,
        "nodes:       {} targeted, {} done, {} failed, {} in flight, {} remaining",
        c.target, c.done, c.failed, c.in_flight, c.remaining
    );
    if let Some(k) = &v.canary {
        let _ = writeln!(
            s,
            "canary:      step {}/{} ({} nodes when full)",
            k.step, k.steps, k.step_target
        );
    }
    let _ = writeln!(
        s,
        "control:     paused={} aborted={} recovery-override={}",
        yes(v.control.paused),
        v.control.aborted.as_deref().unwrap_or("no"),
        yes(v.control.recovery_override)
    );
    if let Some(stop) = &v.stopped {
        let _ = writeln!(s, "stopped:     {}: {}", stop.reason, stop.message);
    }
    if !v.conditions.is_empty() {
        let _ = writeln!(s, "conditions:");
        for c in &v.conditions {
            let _ = writeln!(s, "  {:<28} {}", c.reason, c.message);
        }
    }
    if !v.failed_nodes.is_empty() {
        let _ = writeln!(s, "failed nodes:");
        for (n, why) in &v.failed_nodes {
            let _ = writeln!(s, "  {n:<20} {why}");
        }
    }
    let _ = writeln!(s, "leases:      {} outstanding", v.leases.len());
    if !v.leases.is_empty() {
        let _ = writeln!(
            s,
            "  {:<20} {:<11} {:<31} {:<21} {:>7}",
            "NODE", "PHASE", "LEASE", "EXPIRES", "ATTEMPT"
        );
        for l in &v.leases {
            let _ = writeln!(
                s,
                "  {:<20} {:<11} {:<31} {:<21} {:>7}{}",
                l.node,
                l.phase.as_str(),
                l.lease_id,
                l.expires_at,
                l.attempt,
                if l.recovery_override {
                    "  recovery-override"
                } else {
                    ""
                }
            );
        }
    }
    if let Some(b) = &v.bridge {
        if b.compat_nodes > 0 || b.hold_required {
            let _ = writeln!(
                s,
                "bridge:      {} compat nodes, {} done, {} failed, {} pending, in flight: {}",
                b.compat_nodes,
                b.done,
                b.failed,
                b.pending,
                b.in_flight.as_deref().unwrap_or("-")
            );
        }
    }
    let _ = writeln!(s, "bridge_hold_required: {}", v.bridge_hold_required);
    if let Some(b) = &v.bridge {
        for r in &b.hold_reasons {
            let _ = writeln!(s, "  {r}");
        }
    }
    s
}
