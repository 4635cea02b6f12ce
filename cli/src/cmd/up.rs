use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fabric::edge::EdgeInventory;
use fabric_compose::fleet::{synthetic_nodes, FleetOptions, LocalFleet};
use fabric_node_agent::registry::RegistryStatus;
use fabric_node_agent::status::NodeStatus;
use fabric_reconciler::api::{self, ApiConfig, ApiHandle, Token};
use fabric_reconciler::store::{EmbeddedStore, Op, PutObject, Store};
use fabric_schemas::kinds::{NodeRole, Spec};
use fabric_schemas::manifest::load_path;
use fabric_schemas::time::parse_duration;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;

/// Marks a state folder as ours, so `up` never wipes a folder it did not create.
const MARKER: &str = ".fabric-up";

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Manifests describing the fleet (FabricNodes, ServiceRecords, ...).
    #[arg(short = 'f', long = "filename", default_value = "manifests/examples")]
    path: PathBuf,
    /// Ignore the manifests' nodes and run N synthetic nodes over three areas.
    #[arg(long)]
    nodes: Option<usize>,
    /// Where keys, peer caches and status files go; wiped at start.
    #[arg(long, default_value = ".fabric/up")]
    state_dir: PathBuf,
    /// Exit 0 once every node is `active` with the full directory; exit 1
    /// naming the laggards after --timeout. For scripts and CI.
    #[arg(long)]
    until_converged: bool,
    /// How long --until-converged waits (e.g. 90s, 5m).
    #[arg(long, default_value = "120s")]
    timeout: String,
    /// Gossip round length in milliseconds.
    #[arg(long, default_value_t = 250)]
    round_ms: u64,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(up(a))
}

fn prepare_state_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        if !empty && !dir.join(MARKER).exists() {
            bail!(
                "{} exists and was not created by `fabricctl up`; refusing to wipe it (choose another --state-dir)",
                dir.display()
            );
        }
        for sub in ["nodes", "trust", "store.redb", "operator.token"] {
            let p = dir.join(sub);
            if p.is_dir() {
                std::fs::remove_dir_all(&p).with_context(|| format!("clearing {}", p.display()))?;
            } else if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("clearing {}", p.display()))?;
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        b"state of a local fleet started by fabricctl up\n",
    )
    .with_context(|| format!("writing {}", dir.join(MARKER).display()))?;
    Ok(())
}

fn converged(s: &NodeStatus, total: usize) -> bool {
    s.directory_records >= total && s.registry.status == RegistryStatus::Active
}

fn table(statuses: &[NodeStatus], total: usize) -> String {
    let mut out = format!(
        "{:<14} {:<8} {:<22} {:>9} {:<15} {:>5} {:>6} {:>9} {:>8} {:<10}\n",
        "NODE",
        "AREA",
        "LISTEN",
        "DIRECTORY",
        "REGISTRY",
        "PEERS",
        "DIRECT",
        "EXT-AREAS",
        "RECOVERY",
        "RESILIENCE"
    );
    for s in statuses {
        out.push_str(&format!(
            "{:<14} {:<8} {:<22} {:>4}/{:<4} {:<15} {:>5} {:>6} {:>9} {:>8} {:<10}\n",
            s.name,
            s.area,
            s.listen,
            s.directory_records,
            total,
            s.registry.status.as_str(),
            s.observations
                .iter()
                .filter(|(name, o)| **name != s.name && o.last_seen_ms.is_some())
                .count(),
            s.peer_metrics.direct_ready_count,
            s.peer_metrics.external_area_ready_count,
            s.peer_metrics.recovery_path_count,
            match &s.resilience {
                None => "-",
                Some(r) if r.is_met() => "met",
                Some(_) => "below",
            },
        ));
    }
    out
}

async fn up(a: Args) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(parse_duration(&a.timeout).context("--timeout")? as u64);
    let objects = match a.nodes {
        Some(0) => bail!("--nodes must be at least 1"),
        Some(n) => synthetic_nodes(n),
        None => {
            let report = load_path(&a.path);
            if !report.errors.is_empty() {
                for e in &report.errors {
                    eprintln!("{e}");
                }
                bail!(
                    "{} manifest error(s) in {}",
                    report.errors.len(),
                    a.path.display()
                );
            }
            report.objects
        }
    };
    prepare_state_dir(&a.state_dir)?;
    let mut opts = FleetOptions::new(a.state_dir.clone());
    opts.round = Duration::from_millis(a.round_ms.max(50));
    let started = Instant::now();
    let mut fleet = LocalFleet::start(&objects, opts)
        .await
        .context("starting the fleet")?;
    let total = fleet.expected_records();
    let n = fleet.members.len();
    let control = start_control_plane(&fleet, &objects, &a.state_dir)
        .await
        .context("starting the control plane")?;
    println!(
        "fabric: {n} nodes on loopback, {total} signed records seeded into {} only; state in {}",
        fleet.members[0].name,
        a.state_dir.display()
    );
    println!("trust root: {}", fleet.trust_root_file().display());
    if let Some(first) = control.apis.first() {
        println!(
            "control API: http://{} (embedded store {}, operator token in {}); try `fabricctl audit --server http://{} --token-file {}`",
            first.addr(),
            a.state_dir.join("store.redb").display(),
            control.token_file.display(),
            first.addr(),
            control.token_file.display()
        );
    }
    let tty = std::io::stdout().is_terminal();
    let bar = if tty {
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} converging [{bar:30}] {pos}/{len} nodes active with the full directory ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut done_at: Option<Duration> = None;
    let mut last_print = Instant::now();
    let code = loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                bar.finish_and_clear();
                println!("stopping {n} nodes...");
                break ExitCode::SUCCESS;
            }
        }
        let statuses = fleet.statuses();
        let ready = statuses.iter().filter(|s| converged(s, total)).count();
        bar.set_position(ready as u64);
        let audit = if ready == n {
            control.audit().await
        } else {
            None
        };
        // Converged means every node active with the full directory and the
        // fleet audit (over the nodes' heartbeats) passing every criterion.
        let audited = audit.as_ref().is_some_and(|r| r.converged);
        if audited && done_at.is_none() {
            let t = started.elapsed();
            done_at = Some(t);
            bar.finish_and_clear();
            print!("{}", table(&statuses, total));
            if let Some(r) = &audit {
                println!("{}", audit_line(r));
            }
            println!(
                "converged: {n}/{n} nodes active with {total}/{total} records in {:.1}s",
                t.as_secs_f64()
            );
            if a.until_converged {
                break ExitCode::SUCCESS;
            }
            println!("fleet running; Ctrl-C stops every node");
        }
        if done_at.is_none() && !tty && last_print.elapsed() >= Duration::from_secs(5) {
            println!(
                "{ready}/{n} nodes converged after {:.0}s",
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        if done_at.is_some()
            && !a.until_converged
            && last_print.elapsed() >= Duration::from_secs(10)
        {
            print!("{}", table(&statuses, total));
            last_print = Instant::now();
        }
        if a.until_converged && done_at.is_none() && started.elapsed() > timeout {
            bar.finish_and_clear();
            print!("{}", table(&statuses, total));
            if let Some(r) = control.audit().await {
                println!("{}", audit_line(&r));
            }
            let laggards: Vec<String> = statuses
                .iter()
                .filter(|s| !converged(s, total))
                .map(|s| {
                    format!(
                        "{} ({}, {}/{total} records)",
                        s.name,
                        s.registry.status.as_str(),
                        s.directory_records
                    )
                })
                .collect();
            if laggards.is_empty() {
                eprintln!(
                    "not converged after {}: every node is active, but the fleet audit does not pass yet (see above)",
                    a.timeout
                );
            } else {
                eprintln!("not converged after {}: {}", a.timeout, laggards.join(", "));
            }
            break ExitCode::from(1);
        }
    };
    for api in control.apis {
        api.stop().await;
    }
    fleet.stop_all().await;
    Ok(code)
}

struct ControlPlane {
    apis: Vec<ApiHandle>,
    token_file: PathBuf,
    store: Arc<dyn Store>,
    inventory: EdgeInventory,
}

impl ControlPlane {
    /// The fleet audit over the heartbeats the Control API received.
    async fn audit(&self) -> Option<fabric_reconciler::audit::AuditReport> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        api::run_audit(&*self.store, &self.inventory, Default::default(), now)
            .await
            .map_err(|e| tracing::warn!(error = %e, "audit failed"))
            .ok()
    }
}

fn audit_line(r: &fabric_reconciler::audit::AuditReport) -> String {
    let passed = r.acceptance_criteria.iter().filter(|c| c.passed).count();
    let failing: Vec<String> = r
        .acceptance_criteria
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{} ({})", c.id, c.name))
        .collect();
    format!(
        "audit: fabric_registry_runtime_report.status={} compat_control_dependency_nodes={} heartbeats={} acceptance criteria {passed}/{} passed{}",
        r.fabric_registry_runtime_report.status,
        r.compat_control_dependency_nodes.len(),
        r.nodes.len().saturating_sub(r.nodes_without_heartbeat.len()),
        r.acceptance_criteria.len(),
        if failing.is_empty() { String::new() } else { format!(", failing: {}", failing.join(", ")) }
    )
}

/// The embedded default control plane: the desired state in an embedded store
/// and the Control API served by every `control-api` provider node, on its
/// fabric transport (heartbeats from nodes) and on a loopback HTTP edge (for
/// `fabricctl apply/get/audit`).
async fn start_control_plane(
    fleet: &LocalFleet,
    objects: &[fabric_schemas::manifest::Object],
    state_dir: &Path,
) -> anyhow::Result<ControlPlane> {
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(state_dir.join("store.redb"))
            .await
            .context("opening the embedded store")?,
    );
    let mut ops = Vec::new();
    for o in objects {
        let spec = match &o.spec {
            Spec::FabricNode(n) => match fleet.member(o.name()) {
                Some(m) => Spec::FabricNode(fleet.local_spec(n, m)),
                None => continue,
            },
            Spec::RolloutLease(_) | Spec::TrustRoot(_) => continue,
            other => other.clone(),
        };
        let mut put = PutObject::new(o.kind, o.name(), spec.to_json()?);
        put.labels = o.metadata.labels.clone();
        put.annotations = o.metadata.annotations.clone();
        ops.push(Op::PutObject(put));
    }
    for bytes in &fleet.records {
        let env = fabric_schemas::Envelope::decode(bytes)?;
        ops.push(Op::PutRecord {
            kind: env.record.kind,
            name: env.record.name.clone(),
            generation: i64::try_from(env.record.generation).unwrap_or(i64::MAX),
            envelope: bytes.clone(),
        });
    }
    store
        .apply_batch(ops)
        .await
        .context("storing the desired state")?;
    let mut secret = [0u8; 24];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
    let secret = hex::encode(secret);
    let token_file = state_dir.join("operator.token");
    fabric_schemas::keys::write_atomic(&token_file, secret.as_bytes(), 0o600)?;
    let token = Token::new(&secret)?;
    // One inventory for every edge this process opens, so the audit can tell
    // registered listeners from unclassified ones.
    let inventory = EdgeInventory::new();
    let mut apis = Vec::new();
    for m in &fleet.members {
        if !m.spec.roles.contains(&NodeRole::ControlApi) {
            continue;
        }
        let Some(h) = m.handle.as_ref() else { continue };
        let cfg = ApiConfig::new("127.0.0.1:0".parse()?, token.clone());
        let api = api::serve(
            store.clone(),
            inventory.clone(),
            cfg,
            Some(h.transport().clone()),
        )
        .await
        .with_context(|| format!("serving the Control API on {}", m.name))?;
        apis.push(api);
    }
    Ok(ControlPlane {
        apis,
        token_file,
        store,
        inventory,
    })
}
