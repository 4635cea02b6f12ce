use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fabric::edge::EdgeInventory;
use fabric_compose::fleet::{localize, synthetic_nodes, FleetOptions, LocalFleet, ProcessMode};
use fabric_compose::replica::{Replica, ReplicaConfig};
use fabric_node_agent::registry::RegistryStatus;
use fabric_node_agent::status::NodeStatus;
use fabric_node_agent::update::artifact::ArtifactStore;
use fabric_reconciler::api::{self, ApiConfig, Token};
use fabric_reconciler::controller::{ControlPlaneConfig, RolloutLoop};
use fabric_reconciler::orchestrator::{
    control, Orchestrator, OrchestratorConfig, OrchestratorKeys,
};
use fabric_reconciler::publish::Signer;
use fabric_reconciler::rollout::RolloutPhase;
use fabric_reconciler::source::{GitOpsConfig, Overlay};
use fabric_reconciler::store::{EmbeddedStore, PostgresConfig, PostgresStore, Store};
use fabric_schemas::kinds::{NodeRole, Spec};
use fabric_schemas::manifest::load_path;
use fabric_schemas::time::parse_duration;
use fabric_schemas::trust::Role;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
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
    /// The control plane's store: `embedded` (a redb file in the state
    /// folder) or `postgres:URL`.
    #[arg(long, default_value = "embedded")]
    store: String,
    /// How long a node's apply request waits for a host agent before it is
    /// rolled back as `apply_timeout` (the in-process nodes of `up` have no
    /// host agent).
    #[arg(long, default_value = "60s")]
    apply_timeout: String,
    /// After converging, roll out a stand-in build to every node run by a
    /// host agent: `next` (a genuinely different build reporting version
    /// `<version>-next`) or `broken` (one that fails its health check: it
    /// must be rolled back and the rollout must stop).
    #[arg(long, value_enum)]
    rollout: Option<RolloutBuild>,
    /// With --rollout: exit 0 once every targeted node runs the new build and
    /// the audit passes; exit 1 naming why when the rollout stops or fails,
    /// or after --rollout-timeout.
    #[arg(long, requires = "rollout")]
    until_rolled_out: bool,
    /// How long --until-rolled-out waits once the intent is published.
    #[arg(long, default_value = "300s")]
    rollout_timeout: String,
    /// Run every node inside this process, without host agents (the default
    /// when the fabric-host-agent and fabric-node-agent binaries are not
    /// next to fabricctl; build them with `cargo build --workspace --bins`).
    #[arg(long, conflicts_with = "rollout")]
    in_process: bool,
    /// Where to write the context file that lets `fabricctl get|apply|audit|rollout`
    /// run without flags (default: $FABRIC_CONTEXT, else ~/.config/fabric/context.json).
    #[arg(long)]
    context: Option<PathBuf>,
}

/// The stand-in builds `--rollout` rolls out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RolloutBuild {
    /// `fabric-node-agent-next`: the same agent, another digest and version.
    Next,
    /// `fabric-node-agent-broken`: exits before it says READY=1.
    Broken,
}

impl RolloutBuild {
    fn binary(self) -> &'static str {
        match self {
            RolloutBuild::Next => "fabric-node-agent-next",
            RolloutBuild::Broken => "fabric-node-agent-broken",
        }
    }

    fn version(self) -> String {
        match self {
            RolloutBuild::Next => format!("{}-next", env!("CARGO_PKG_VERSION")),
            RolloutBuild::Broken => format!("{}-broken", env!("CARGO_PKG_VERSION")),
        }
    }

    fn intent(self) -> &'static str {
        match self {
            RolloutBuild::Next => "node-agent-next",
            RolloutBuild::Broken => "node-agent-broken",
        }
    }
}

/// A binary next to this one (how `cargo build` lays out a workspace's).
fn sibling(name: &str) -> Option<PathBuf> {
    let p = std::env::current_exe().ok()?.parent()?.join(name);
    p.is_file().then_some(p)
}

/// The nodes a reconciler replica runs beside: the `control-api` nodes, or
/// the first node when none has the role.
fn colocated_names(objects: &[fabric_schemas::manifest::Object]) -> Vec<String> {
    let nodes: Vec<(&str, &fabric_schemas::kinds::FabricNodeSpec)> = objects
        .iter()
        .filter_map(|o| match &o.spec {
            Spec::FabricNode(n) => Some((o.name(), n)),
            _ => None,
        })
        .collect();
    let control: Vec<String> = nodes
        .iter()
        .filter(|(_, n)| n.roles.contains(&NodeRole::ControlApi))
        .map(|(name, _)| (*name).to_owned())
        .collect();
    if control.is_empty() {
        nodes
            .first()
            .map(|(n, _)| vec![(*n).to_owned()])
            .unwrap_or_default()
    } else {
        control
    }
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
        for sub in [
            "nodes",
            "trust",
            "store.redb",
            "operator.token",
            "manifests",
            "context.json",
        ] {
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

/// The fleet view: one line per running node. `roles` are the nodes'
/// roles from the desired state; the version is what the node's host agent
/// saw it report on readiness (in-process nodes run this build).
fn table(statuses: &[NodeStatus], total: usize, roles: &BTreeMap<String, String>) -> String {
    let mut out = format!(
        "{:<12} {:<7} {:<13} {:<24} {:<13} {:>9} {:<15} {:<12} {:>6} {:>5} {:>9} {:>8} {:<10}\n",
        "NODE",
        "AREA",
        "NAT-GROUP",
        "ROLES",
        "VERSION",
        "DIRECTORY",
        "REGISTRY",
        "UPDATE",
        "DIRECT",
        "RELAY",
        "EXT-AREAS",
        "RECOVERY",
        "RESILIENCE"
    );
    for s in statuses {
        let version = s
            .host
            .as_ref()
            .and_then(|h| h.node_agent_version.clone())
            .unwrap_or_else(|| {
                if s.host.is_some() {
                    "-".into()
                } else {
                    env!("CARGO_PKG_VERSION").into()
                }
            });
        out.push_str(&format!(
            "{:<12} {:<7} {:<13} {:<24} {:<13} {:>4}/{:<4} {:<15} {:<12} {:>6} {:>5} {:>9} {:>8} {:<10}\n",
            s.name,
            s.area,
            s.nat_group,
            roles.get(&s.name).map_or("-", String::as_str),
            version,
            s.directory_records,
            total,
            s.registry.status.as_str(),
            s.update.as_ref().map_or("-", |u| u.state.as_str()),
            s.peer_metrics.direct_ready_count,
            s.peer_metrics.relay_ready_count,
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
    // Listening from the start and across the view's iterations: a Ctrl-C
    // (or SIGTERM) that arrives while the fleet starts or a tick is being
    // processed is kept, not missed, and the fleet is always stopped
    // cleanly (its context file removed).
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let timeout = Duration::from_secs(parse_duration(&a.timeout).context("--timeout")? as u64);
    let apply_timeout =
        Duration::from_secs(parse_duration(&a.apply_timeout).context("--apply-timeout")? as u64);
    let store_spec = StoreSpec::parse(&a.store, &a.state_dir)?;
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
    // With --rollout the folder's own intents are left out (and the watched
    // folder is a copy): the stand-in build is the one rollout of the
    // node-agent.
    let objects: Vec<_> = objects
        .into_iter()
        .filter(|o| a.rollout.is_none() || !matches!(o.spec, Spec::UpdateIntent(_)))
        .collect();
    prepare_state_dir(&a.state_dir)?;
    let state_dir = std::path::absolute(&a.state_dir)
        .with_context(|| format!("resolving {}", a.state_dir.display()))?;
    // The watched GitOps folder: the operator's, or the synthetic fleet
    // written out so it can be edited like one.
    let gitops_dir = match (a.nodes, a.rollout) {
        (Some(_), _) | (_, Some(_)) => {
            let dir = state_dir.join("manifests");
            write_manifests(&dir, &objects)?;
            dir
        }
        (None, None) => std::path::absolute(&a.path)
            .with_context(|| format!("resolving {}", a.path.display()))?,
    };
    let binaries = match (sibling("fabric-host-agent"), sibling("fabric-node-agent")) {
        _ if a.in_process => None,
        (Some(h), Some(n)) => Some((h, n)),
        _ if a.rollout.is_some() => bail!(
            "--rollout needs host agents: fabric-host-agent, fabric-node-agent and {} must be next to fabricctl (build them with `cargo build --workspace --bins`)",
            a.rollout.map(RolloutBuild::binary).unwrap_or_default()
        ),
        _ => {
            println!("note: fabric-host-agent and fabric-node-agent are not next to fabricctl; every node runs in this process (build them with `cargo build --workspace --bins` for host agents)");
            None
        }
    };
    let stand_in = match a.rollout {
        Some(b) => Some(sibling(b.binary()).with_context(|| {
            format!(
                "--rollout {}: {} is not next to fabricctl (build it with `cargo build --workspace --bins`)",
                b.intent(),
                b.binary()
            )
        })?),
        None => None,
    };
    let rollout_timeout = Duration::from_secs(
        parse_duration(&a.rollout_timeout).context("--rollout-timeout")? as u64,
    );
    let mut opts = FleetOptions::new(state_dir.clone());
    opts.round = Duration::from_millis(a.round_ms.max(50));
    opts.updater_apply_timeout = apply_timeout;
    // Every node serves /metrics on an ephemeral loopback port (a declared
    // metrics-edge; see each node's status.json edge_listeners).
    opts.metrics = true;
    // The control plane publishes every record, as in production.
    opts.seed_records = false;
    let in_process = colocated_names(&objects);
    if let Some((host_agent, node_agent)) = &binaries {
        opts.processes = Some(ProcessMode {
            host_agent: host_agent.clone(),
            node_agent: node_agent.clone(),
            in_process: in_process.clone(),
            ready_deadline: Duration::from_secs(20),
            probation: Duration::from_secs(3),
        });
    }
    let started = Instant::now();
    let mut fleet = LocalFleet::start(&objects, opts)
        .await
        .context("starting the fleet")?;
    let total = fleet.expected_records();
    let n = fleet.members.len();
    let roles: BTreeMap<String, String> = fleet
        .members
        .iter()
        .map(|m| {
            let r: Vec<&str> = m.spec.roles.iter().map(|r| r.as_str()).collect();
            let r = if r.is_empty() {
                "-".to_owned()
            } else {
                r.join(",")
            };
            (m.name.clone(), r)
        })
        .collect();
    let mut control = match ControlPlane::start(
        &mut fleet,
        in_process.clone(),
        &gitops_dir,
        &store_spec,
        &state_dir,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            fleet.stop_all().await;
            return Err(e.context("starting the control plane"));
        }
    };
    println!(
        "fabric: {n} nodes on loopback; the control plane runs co-located with {} and publishes {total} signed records from {}; state in {}",
        control.colocated.join(", "),
        gitops_dir.display(),
        state_dir.display()
    );
    println!("trust root: {}", fleet.trust_root_file().display());
    let shared_context = a.context.clone().or_else(crate::context::default_path);
    match control.write_context(&fleet, &store_spec, &state_dir, shared_context.as_deref()) {
        Ok(()) => println!(
            "control API: {0} ({1} store), Prometheus metrics at {0}/metrics; context written to {2}{3}; try `fabricctl get nodes`, `fabricctl audit`, `fabricctl rollout status NAME`",
            control.servers.first().map(String::as_str).unwrap_or("-"),
            store_spec.label(),
            state_dir.join("context.json").display(),
            shared_context
                .as_ref()
                .map(|p| format!(" and {}", p.display()))
                .unwrap_or_default()
        ),
        Err(e) => eprintln!("warning: {e:#}"),
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
    let mut rollout = a.rollout.map(|build| LocalRollout {
        build,
        targets: fleet
            .members
            .iter()
            .filter(|m| !in_process.contains(&m.name))
            .map(|m| m.name.clone())
            .collect(),
        published: None,
        last_line: String::new(),
        last_print: Instant::now(),
    });
    let mut done_at: Option<Duration> = None;
    let mut faults = Faults::default();
    let mut last_print = Instant::now();
    let code = loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = interrupt.recv() => true,
            _ = terminate.recv() => true,
        };
        if stop {
            bar.finish_and_clear();
            println!("stopping {n} nodes...");
            break ExitCode::SUCCESS;
        }
        for (id, request) in super::fault::pending(&state_dir) {
            let (ok, message) = match request {
                Ok(f) => {
                    let r = faults.apply(&f, &mut fleet, &mut control).await;
                    if ok_and_changed_servers(&r, &f) {
                        if let Err(e) = control.write_context(
                            &fleet,
                            &store_spec,
                            &state_dir,
                            shared_context.as_deref(),
                        ) {
                            eprintln!("warning: {e:#}");
                        }
                    }
                    r
                }
                Err(e) => (false, format!("unreadable fault request: {e}")),
            };
            bar.suspend(|| println!("fault: {message}"));
            super::fault::answer(&state_dir, &id, ok, message);
        }
        let statuses = control.statuses(&fleet);
        let ready = statuses.iter().filter(|s| converged(s, total)).count();
        bar.set_position(ready as u64);
        let audit = if ready == n {
            control.audit().await
        } else {
            None
        };
        // Converged means every node active with the full directory and the
        // fleet audit (over the nodes' heartbeats) passing every criterion.
        let audited = audit
            .as_ref()
            .is_some_and(|r| r.converged && r.nodes.iter().filter(|x| x.fresh).count() >= n);
        if audited && done_at.is_none() {
            let t = started.elapsed();
            done_at = Some(t);
            bar.finish_and_clear();
            print!("{}", table(&statuses, total, &roles));
            if let Some(r) = &audit {
                println!("{}", audit_line(r));
            }
            println!(
                "converged: {n}/{n} nodes active with {total}/{total} records in {:.1}s",
                t.as_secs_f64()
            );
            if a.until_converged && rollout.is_none() {
                break ExitCode::SUCCESS;
            }
            if let (Some(r), Some(binary)) = (rollout.as_mut(), &stand_in) {
                r.publish(&fleet, &objects, &gitops_dir, binary)?;
            } else {
                println!("fleet running; Ctrl-C stops every node");
            }
        }
        if let Some(r) = rollout.as_mut().filter(|r| r.published.is_some()) {
            if let Some(code) = r
                .watch(&control, &statuses, a.until_rolled_out, rollout_timeout)
                .await
            {
                break code;
            }
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
            && !a.until_rolled_out
            && last_print.elapsed() >= Duration::from_secs(10)
        {
            print!("{}", table(&statuses, total, &roles));
            last_print = Instant::now();
        }
        if (a.until_converged || a.until_rolled_out)
            && done_at.is_none()
            && started.elapsed() > timeout
        {
            bar.finish_and_clear();
            print!("{}", table(&statuses, total, &roles));
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
    control.stop().await;
    fleet.stop_all().await;
    if let Some(p) = &shared_context {
        crate::context::remove_if_ours(p, &state_dir);
    }
    Ok(code)
}

/// Where the control plane keeps its state.
enum StoreSpec {
    Embedded(PathBuf),
    Postgres(String),
}

impl StoreSpec {
    fn parse(s: &str, state_dir: &Path) -> anyhow::Result<StoreSpec> {
        if s == "embedded" {
            return Ok(StoreSpec::Embedded(state_dir.join("store.redb")));
        }
        if let Some(url) = s.strip_prefix("postgres:") {
            return Ok(StoreSpec::Postgres(url.to_owned()));
        }
        bail!("--store must be `embedded` or `postgres:URL`, got {s:?}")
    }

    fn label(&self) -> &'static str {
        match self {
            StoreSpec::Embedded(_) => "embedded",
            StoreSpec::Postgres(_) => "PostgreSQL",
        }
    }

    /// As `rollout --store` takes it.
    fn arg(&self) -> String {
        match self {
            StoreSpec::Embedded(p) => format!("embedded:{}", p.display()),
            StoreSpec::Postgres(u) => format!("postgres:{u}"),
        }
    }

    async fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        Ok(match self {
            StoreSpec::Embedded(p) => Arc::new(
                EmbeddedStore::open(p)
                    .await
                    .with_context(|| format!("opening the embedded store {}", p.display()))?,
            ),
            StoreSpec::Postgres(url) => Arc::new(
                PostgresStore::connect(PostgresConfig::new(url))
                    .await
                    .context("connecting to the PostgreSQL store")?,
            ),
        })
    }
}

/// Writes `objects` as one JSON manifest per object (JSON is YAML).
fn write_manifests(dir: &Path, objects: &[fabric_schemas::manifest::Object]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for o in objects {
        let doc = serde_json::json!({
            "apiVersion": fabric_schemas::kinds::API_VERSION,
            "kind": o.kind.as_str(),
            "metadata": {"name": o.name()},
            "spec": o.spec.to_json()?,
        });
        let file = dir.join(format!(
            "{}-{}.json",
            o.kind.as_str().to_ascii_lowercase(),
            o.name()
        ));
        let bytes = serde_json::to_vec_pretty(&doc)?;
        fabric_schemas::keys::write_atomic(&file, &bytes, 0o644)
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

/// The production shape on loopback: a reconciler replica co-located with
/// every `control-api` node (leader election over the shared store; the
/// leader watches the GitOps folder, publishes and drives rollouts), each
/// serving the Control API on its node's transport and on a loopback HTTP
/// edge.
struct ControlPlane {
    replicas: Vec<(String, Replica)>,
    colocated: Vec<String>,
    servers: Vec<String>,
    token_file: PathBuf,
    store: Arc<dyn Store>,
    inventory: EdgeInventory,
    signer: Signer,
    token: Token,
    overlay: Overlay,
    gitops_dir: PathBuf,
}

impl ControlPlane {
    async fn start(
        fleet: &mut LocalFleet,
        colocated: Vec<String>,
        gitops_dir: &Path,
        store_spec: &StoreSpec,
        state_dir: &Path,
    ) -> anyhow::Result<ControlPlane> {
        let store = store_spec.open().await?;
        let signer = Signer::from_keys_dir(&fleet.trust_dir).context("reading the control keys")?;
        let mut secret = [0u8; 24];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
        let secret = hex::encode(secret);
        let token_file = state_dir.join("operator.token");
        fabric_schemas::keys::write_atomic(&token_file, secret.as_bytes(), 0o600)?;
        let token = Token::new(&secret)?;
        // The example FabricNodes name documentation addresses and no key:
        // the overlay gives each the key and loopback endpoint of the node
        // running it, so the folder itself stays what is watched.
        let live: BTreeMap<String, (fabric::topology::NodeId, std::net::SocketAddr)> = fleet
            .members
            .iter()
            .map(|m| (m.name.clone(), (m.node_id, m.addr)))
            .collect();
        let overlay = Overlay(Arc::new(move |o: &mut fabric_schemas::manifest::Object| {
            let name = o.name().to_owned();
            if let (Spec::FabricNode(n), Some((id, addr))) = (&mut o.spec, live.get(&name)) {
                *n = localize(n, *id, *addr);
            }
        }));
        let mut plane = ControlPlane {
            replicas: Vec::new(),
            colocated,
            servers: Vec::new(),
            token_file,
            store,
            // One inventory for the process: the in-process nodes' listeners
            // and the replicas' Control API edges.
            inventory: fleet.inventory.clone(),
            signer,
            token,
            overlay,
            gitops_dir: gitops_dir.to_path_buf(),
        };
        plane.start_replicas(fleet).await?;
        Ok(plane)
    }

    /// Starts a replica beside every co-located node (taking its agent from
    /// the fleet).
    async fn start_replicas(&mut self, fleet: &mut LocalFleet) -> anyhow::Result<()> {
        for name in self.colocated.clone() {
            let (agent, slot) = fleet.detach(&name)?;
            let mut plane = ControlPlaneConfig::new(name.clone());
            let mut g = GitOpsConfig::new(&self.gitops_dir);
            g.prune = true;
            g.overlay = Some(self.overlay.clone());
            plane.gitops = Some(g);
            let mut cfg = ReplicaConfig::new(plane);
            cfg.api = Some(ApiConfig::new("127.0.0.1:0".parse()?, self.token.clone()));
            cfg.inventory = Some(self.inventory.clone());
            cfg.rollouts = Some(RolloutLoop {
                orchestrator: Orchestrator::new(
                    OrchestratorKeys {
                        orchestrator: fleet.role_key(Role::Orchestrator)?,
                        recovery_admin: fleet.role_key(Role::RecoveryAdmin).ok(),
                    },
                    OrchestratorConfig::default(),
                ),
                interval: Duration::from_secs(1),
            });
            let replica = Replica::start_with_agent(
                self.store.clone(),
                self.signer.clone(),
                cfg,
                agent,
                slot,
            )
            .await
            .with_context(|| format!("starting the reconciler replica on {name}"))?;
            if let Some(addr) = replica.api_addr() {
                self.servers.push(format!("http://{addr}"));
            }
            self.replicas.push((name, replica));
        }
        Ok(())
    }

    /// Stops every replica and its co-located node: the control edge is gone.
    async fn stop_replicas(&mut self) {
        for (name, r) in self.replicas.drain(..) {
            if let Err(e) = r.stop().await {
                tracing::warn!(node = %name, error = %e, "replica stopped with an error");
            }
        }
        self.servers.clear();
    }

    /// Every node's status, in manifest order: the fleet's and the
    /// co-located ones.
    fn statuses(&self, fleet: &LocalFleet) -> Vec<NodeStatus> {
        fleet
            .members
            .iter()
            .filter_map(|m| {
                if m.detached {
                    return self
                        .replicas
                        .iter()
                        .find(|(n, _)| *n == m.name)
                        .and_then(|(_, r)| r.agent().map(|a| a.status()));
                }
                match (&m.handle, &m.process) {
                    (Some(h), _) => Some(h.status()),
                    // A node-agent process: the status.json it writes.
                    (None, Some(_)) => fabric_node_agent::status::read(&m.state_dir).ok(),
                    (None, None) => None,
                }
            })
            .collect()
    }

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

    fn write_context(
        &self,
        fleet: &LocalFleet,
        store: &StoreSpec,
        state_dir: &Path,
        shared: Option<&Path>,
    ) -> anyhow::Result<()> {
        let Some(server) = self.servers.first() else {
            bail!("no Control API is served; no context file written");
        };
        let ctx = crate::context::FleetContext {
            server: server.clone(),
            servers: self.servers.clone(),
            token_file: self.token_file.clone(),
            trust_root: std::path::absolute(fleet.trust_root_file())?,
            store: store.arg(),
            state_dir: state_dir.to_path_buf(),
            pid: std::process::id(),
        };
        crate::context::write(&state_dir.join("context.json"), &ctx)?;
        if let Some(p) = shared {
            crate::context::write(p, &ctx)?;
        }
        Ok(())
    }

    async fn stop(mut self) {
        self.stop_replicas().await;
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
        r.nodes.iter().filter(|n| n.fresh).count(),
        r.acceptance_criteria.len(),
        if failing.is_empty() { String::new() } else { format!(", failing: {}", failing.join(", ")) }
    )
}

/// `--rollout`: the stand-in build published once the fleet converged, and
/// the rollout watched until it ends.
struct LocalRollout {
    build: RolloutBuild,
    /// The nodes run by host agents (the co-located ones cannot be swapped).
    targets: Vec<String>,
    /// When the intent was published.
    published: Option<Instant>,
    last_line: String,
    last_print: Instant,
}

impl LocalRollout {
    /// Stores the build in every `update-store` node's artifact store and
    /// writes its intent (and a policy with the example's limits) into the
    /// watched folder.
    fn publish(
        &mut self,
        fleet: &LocalFleet,
        objects: &[fabric_schemas::manifest::Object],
        gitops_dir: &Path,
        binary: &Path,
    ) -> anyhow::Result<()> {
        let pinned = super::artifact::pin(binary, 1024 * 1024)?;
        let stores: Vec<String> = objects
            .iter()
            .filter_map(|o| match &o.spec {
                Spec::ServiceRecord(s) if s.service == "update-store" => Some(s.providers.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        anyhow::ensure!(
            !stores.is_empty(),
            "--rollout: no update-store ServiceRecord names a node to serve the build"
        );
        for name in &stores {
            let Some(m) = fleet.member(name) else {
                continue;
            };
            ArtifactStore::new(&m.state_dir.join("artifacts"))
                .import(binary, Some((&pinned.sha256, pinned.size)))
                .with_context(|| format!("storing {} on {name}", binary.display()))?;
        }
        let version = self.build.version();
        let policy = serde_json::json!({
            "apiVersion": fabric_schemas::kinds::API_VERSION,
            "kind": "RolloutPolicy",
            "metadata": {"name": "local-careful"},
            "spec": {
                "strategy": "canary",
                "maxParallel": 2,
                "maxParallelPerArea": 1,
                "maxUnavailable": 2,
                "failureRateStopPercent": 20,
                "canarySteps": [{"count": 1}, {"percent": 50}, {"percent": 100}],
            },
        });
        let intent = serde_json::json!({
            "apiVersion": fabric_schemas::kinds::API_VERSION,
            "kind": "UpdateIntent",
            "metadata": {"name": self.build.intent()},
            "spec": {
                "component": "node-agent",
                "version": version,
                "artifact": {
                    "sha256": pinned.sha256,
                    "size": pinned.size,
                    "mirrors": [format!("fabric://update-store/node-agent/{version}")],
                    "pieces": {"pieceSize": pinned.pieces.piece_size, "root": pinned.pieces.root},
                },
                "target": {"nodes": self.targets},
                "policy": "local-careful",
            },
        });
        for (file, doc) in [
            ("rolloutpolicy-local-careful.json", policy),
            (
                &*format!("updateintent-{}.json", self.build.intent()),
                intent,
            ),
        ] {
            let path = gitops_dir.join(file);
            fabric_schemas::keys::write_atomic(&path, &serde_json::to_vec_pretty(&doc)?, 0o644)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        println!(
            "rollout {}: {} {} ({} bytes, sha256 {}) served by {}; {} nodes targeted (the co-located control-api nodes are not: no host agent runs them)",
            self.build.intent(),
            self.build.binary(),
            version,
            pinned.size,
            &pinned.sha256[..16],
            stores.join(", "),
            self.targets.len()
        );
        self.published = Some(Instant::now());
        Ok(())
    }

    /// One look at the rollout; `Some(code)` when `up` should exit.
    async fn watch(
        &mut self,
        control: &ControlPlane,
        statuses: &[NodeStatus],
        until: bool,
        timeout: Duration,
    ) -> Option<ExitCode> {
        let view = control::status(&*control.store, self.build.intent())
            .await
            .ok();
        let version = self.build.version();
        let on_new: Vec<&str> = statuses
            .iter()
            .filter(|s| self.targets.contains(&s.name))
            .filter(|s| {
                s.host
                    .as_ref()
                    .is_some_and(|h| h.node_agent_version.as_deref() == Some(version.as_str()))
            })
            .map(|s| s.name.as_str())
            .collect();
        let line = match &view {
            Some(v) => format!(
                "rollout {}: {} — {} done, {} in flight, {} failed, {} remaining of {} ({} running {version})",
                v.intent,
                v.phase.map_or("NotStarted".to_owned(), |p| format!("{p:?}")),
                v.counts.done,
                v.counts.in_flight,
                v.counts.failed,
                v.counts.remaining,
                v.counts.target,
                on_new.len()
            ),
            None => format!("rollout {}: not planned yet", self.build.intent()),
        };
        if line != self.last_line || self.last_print.elapsed() >= Duration::from_secs(10) {
            println!("{line}");
            self.last_line = line;
            self.last_print = Instant::now();
        }
        let v = view?;
        let elapsed = self.published.map(|t| t.elapsed()).unwrap_or_default();
        match v.phase {
            Some(RolloutPhase::Complete) => {
                let audit = control.audit().await;
                let audited = audit.as_ref().is_some_and(|r| r.converged);
                if on_new.len() == self.targets.len() && audited {
                    println!(
                        "rolled out: {}/{} targeted nodes run {version} after {:.1}s; {}",
                        on_new.len(),
                        self.targets.len(),
                        elapsed.as_secs_f64(),
                        audit.as_ref().map(audit_line).unwrap_or_default()
                    );
                    if until {
                        return Some(ExitCode::SUCCESS);
                    }
                }
            }
            Some(p @ (RolloutPhase::Stopped | RolloutPhase::Failed | RolloutPhase::Aborted)) => {
                let why = v
                    .stopped
                    .as_ref()
                    .map(|s| format!("{}: {}", s.reason, s.message))
                    .unwrap_or_else(|| format!("{p:?}"));
                let failed: Vec<String> = v
                    .failed_nodes
                    .iter()
                    .map(|(n, w)| format!("{n} ({w})"))
                    .collect();
                // Nothing in flight any more: every node is on a committed build.
                if until && v.counts.in_flight == 0 {
                    eprintln!(
                        "rollout {} did not complete: {why}; failed: {}; nodes running {version}: {}",
                        v.intent,
                        if failed.is_empty() { "none".into() } else { failed.join(", ") },
                        if on_new.is_empty() { "none".into() } else { on_new.join(", ") }
                    );
                    return Some(ExitCode::from(1));
                }
            }
            _ => {}
        }
        if until && elapsed > timeout {
            eprintln!(
                "rollout {} not finished after {:.0}s: {}",
                v.intent,
                timeout.as_secs_f64(),
                self.last_line
            );
            return Some(ExitCode::from(1));
        }
        None
    }
}

/// Whether an applied fault moved the Control API (the context names it).
fn ok_and_changed_servers(r: &(bool, String), f: &super::fault::Fault) -> bool {
    r.0 && matches!(f, super::fault::Fault::Heal)
}

/// What `fabricctl fault` requests changed, so `heal` can undo it.
#[derive(Default)]
struct Faults {
    killed: Vec<String>,
    control_stopped: bool,
}

impl Faults {
    /// Applies one fault; `(applied, what happened or why not)`.
    async fn apply(
        &mut self,
        f: &super::fault::Fault,
        fleet: &mut LocalFleet,
        control: &mut ControlPlane,
    ) -> (bool, String) {
        use super::fault::Fault;
        match f {
            Fault::KillNode { node } => {
                if fleet.member(node).is_none() {
                    return (false, format!("no node {node:?} in this fleet"));
                }
                if control.colocated.contains(node) {
                    return (
                        false,
                        format!("{node} runs beside a reconciler replica; `fabricctl fault stop-control` stops it"),
                    );
                }
                if self.killed.contains(node) {
                    return (false, format!("{node} is already down"));
                }
                match fleet.kill_node(node).await {
                    Ok(()) => {
                        self.killed.push(node.clone());
                        (true, format!("killed {node} (SIGKILL of its host agent and node-agent); the rest of the fleet rides through"))
                    }
                    Err(e) => (false, format!("killing {node}: {e}")),
                }
            }
            Fault::StopControl => {
                if self.control_stopped {
                    return (false, "the control plane is already stopped".into());
                }
                control.stop_replicas().await;
                self.control_stopped = true;
                (
                    true,
                    format!(
                        "stopped the control plane: the reconciler replicas and their nodes ({}); every other node keeps working from its signed directory",
                        control.colocated.join(", ")
                    ),
                )
            }
            Fault::Heal => {
                let mut done = Vec::new();
                let mut failed = Vec::new();
                for node in std::mem::take(&mut self.killed) {
                    match fleet.restart_node(&node).await {
                        Ok(()) => done.push(format!("restarted {node}")),
                        Err(e) => {
                            failed.push(format!("{node}: {e}"));
                            self.killed.push(node);
                        }
                    }
                }
                if self.control_stopped {
                    let mut back = true;
                    for node in control.colocated.clone() {
                        if let Err(e) = fleet.reattach(&node).await {
                            failed.push(format!("{node}: {e}"));
                            back = false;
                        }
                    }
                    if back {
                        match control.start_replicas(fleet).await {
                            Ok(()) => {
                                self.control_stopped = false;
                                done.push(format!(
                                    "control plane back at {}",
                                    control.servers.first().map(String::as_str).unwrap_or("-")
                                ));
                            }
                            Err(e) => failed.push(format!("control plane: {e:#}")),
                        }
                    }
                }
                match (done.is_empty(), failed.is_empty()) {
                    (true, true) => (true, "nothing to heal".into()),
                    (_, true) => (true, format!("healed: {}", done.join("; "))),
                    _ => (
                        false,
                        format!(
                            "healed: {}; not healed: {}",
                            if done.is_empty() {
                                "nothing".into()
                            } else {
                                done.join("; ")
                            },
                            failed.join("; ")
                        ),
                    ),
                }
            }
        }
    }
}
