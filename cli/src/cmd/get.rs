//! `fabricctl get KIND [NAME]`: stored objects from the Control API.

use std::process::ExitCode;

use anyhow::Context;
use fabric_reconciler::api::{parse_kind, ApiClient, ClientError};
use fabric_reconciler::audit::NodeAudit;
use fabric_reconciler::store::StoredObject;
use fabric_schemas::kinds::{FabricNodeSpec, Kind, API_VERSION};

use super::apply::ServerArgs;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum GetOutput {
    #[default]
    Table,
    /// The table with more columns (for nodes: key, site, NAT group, endpoint, peers).
    Wide,
    Yaml,
    Json,
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// FabricNode, ServiceRecord, UpdateIntent, RolloutPolicy, RolloutLease,
    /// TrustRoot; lower case, plural and short names work too (nodes, no,
    /// node, fnode, svc, intents, policies, leases).
    kind: String,
    name: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
    #[arg(short, long, value_enum, default_value_t)]
    output: GetOutput,
    /// Print again every two seconds until Ctrl-C.
    #[arg(short, long)]
    watch: bool,
}

/// Exit 0 when found, 1 when the named object does not exist, 2 otherwise.
pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let kind = parse_kind(&args.kind).with_context(|| {
        format!(
            "unknown kind {:?}; expected one of FabricNode, ServiceRecord, UpdateIntent, RolloutPolicy, RolloutLease, TrustRoot",
            args.kind
        )
    })?;
    let client = args.server.client()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if !args.watch {
        return runtime.block_on(show(&args, kind, &client));
    }
    runtime.block_on(async {
        // One listener for the whole watch: a Ctrl-C during a fetch counts.
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("listening for Ctrl-C")?;
        loop {
            let code = show(&args, kind, &client).await?;
            if code != ExitCode::SUCCESS {
                return Ok(code);
            }
            tokio::select! {
                _ = interrupt.recv() => return Ok(ExitCode::SUCCESS),
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            }
            println!();
        }
    })
}

async fn show(args: &Args, kind: Kind, client: &ApiClient) -> anyhow::Result<ExitCode> {
    let objects = match &args.name {
        Some(name) => match client.get(kind.as_str(), name).await {
            Ok(o) => vec![o],
            Err(e @ ClientError::Status { .. })
                if e.status().is_some_and(|s| s.as_u16() == 404) =>
            {
                eprintln!("error: {kind} {name:?} not found");
                return Ok(ExitCode::from(1));
            }
            Err(e) => return Err(e.into()),
        },
        None => client.list(kind.as_str()).await?,
    };
    match args.output {
        GetOutput::Json => {
            let docs: Vec<_> = objects.iter().map(document).collect();
            let out = if args.name.is_some() && docs.len() == 1 {
                serde_json::to_string_pretty(&docs[0])?
            } else {
                serde_json::to_string_pretty(&serde_json::json!({"items": docs}))?
            };
            println!("{out}");
        }
        GetOutput::Yaml => {
            for (i, o) in objects.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", serde_norway::to_string(&document(o))?);
            }
        }
        GetOutput::Table | GetOutput::Wide if objects.is_empty() => {
            eprintln!("no {kind} objects");
        }
        out @ (GetOutput::Table | GetOutput::Wide) if kind == Kind::FabricNode => {
            // What each node reports of itself, from its heartbeats.
            let live = match client.audit(None).await {
                Ok(r) => r.nodes,
                Err(e) => {
                    tracing::warn!(error = %e, "no audit: live columns left empty");
                    Vec::new()
                }
            };
            print!("{}", node_table(&objects, &live, out == GetOutput::Wide));
        }
        GetOutput::Table | GetOutput::Wide => {
            let width = objects
                .iter()
                .map(|o| o.name().len())
                .max()
                .unwrap_or(4)
                .max(4);
            println!(
                "{:<width$}  {:>10}  {:>8}  UPDATED",
                "NAME", "GENERATION", "VERSION"
            );
            for o in &objects {
                let updated = jiff::Timestamp::from_millisecond(o.updated_at)
                    .map(|t| t.to_string())
                    .unwrap_or_else(|_| o.updated_at.to_string());
                println!(
                    "{:<width$}  {:>10}  {:>8}  {updated}",
                    o.name(),
                    o.generation(),
                    o.resource_version
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Nodes as stored, with what their latest heartbeat says.
fn node_table(objects: &[StoredObject], live: &[NodeAudit], wide: bool) -> String {
    use std::fmt::Write;
    let width = objects
        .iter()
        .map(|o| o.name().len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!(
        "{:<width$}  {:<8} {:<24} {:<9} {:<14} {:<12} {:>9}",
        "NAME", "AREA", "ROLES", "VERSION", "REGISTRY", "UPDATE", "HEARTBEAT"
    );
    if wide {
        let _ = write!(
            out,
            "  {:<10} {:<14} {:<14} {:<22} {:>6} {:>6}",
            "NODE-ID", "SITE", "NAT-GROUP", "ENDPOINT", "DIRECT", "RELAY"
        );
    }
    out.push('\n');
    for o in objects {
        let spec = serde_json::from_value::<FabricNodeSpec>(o.spec.clone()).ok();
        let n = live.iter().find(|n| n.node == o.name());
        let roles = spec
            .as_ref()
            .map(|s| {
                s.roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "-".into());
        let age = n.map_or_else(
            || "never".to_owned(),
            |n| {
                let s = format!("{:.0}s", n.heartbeat_age_ms.max(0) as f64 / 1000.0);
                if n.fresh {
                    s
                } else {
                    format!("{s} (stale)")
                }
            },
        );
        let _ = write!(
            out,
            "{:<width$}  {:<8} {:<24} {:<9} {:<14} {:<12} {:>9}",
            o.name(),
            spec.as_ref().map_or("-", |s| s.area.as_str()),
            roles,
            n.map_or("-", |n| n.agent_version.as_str()),
            n.map_or("-", |n| n.registry_status.as_str()),
            n.and_then(|n| n.update_state.as_deref()).unwrap_or("-"),
            age
        );
        if wide {
            let id = spec
                .as_ref()
                .and_then(|s| s.node_id.as_deref())
                .map_or("-".to_owned(), |id| id.chars().take(10).collect());
            let _ = write!(
                out,
                "  {:<10} {:<14} {:<14} {:<22} {:>6} {:>6}",
                id,
                spec.as_ref().map_or("-", |s| s.site_id.as_str()),
                spec.as_ref().map_or("-", |s| s.nat_group.as_str()),
                spec.as_ref()
                    .and_then(|s| s.endpoints.first())
                    .map_or("-", |e| e.address.as_str()),
                n.map_or("-".into(), |n| n
                    .peer_metrics
                    .direct_ready_count
                    .to_string()),
                n.map_or("-".into(), |n| n.peer_metrics.relay_ready_count.to_string()),
            );
        }
        out.push('\n');
    }
    out
}

/// The object as a Kubernetes-style document (what `apply` takes back).
fn document(o: &StoredObject) -> serde_json::Value {
    let mut doc = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": o.kind.as_str(),
        "metadata": o.metadata,
        "spec": o.spec,
    });
    if let (Some(status), Some(map)) = (&o.status, doc.as_object_mut()) {
        map.insert("status".into(), status.clone());
    }
    if let Some(meta) = doc.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.insert(
            "resourceVersion".into(),
            o.resource_version.to_string().into(),
        );
    }
    doc
}
