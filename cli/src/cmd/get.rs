//! `fabricctl get KIND [NAME]`: stored objects from the Control API.

use std::process::ExitCode;

use anyhow::Context;
use fabric_reconciler::api::{parse_kind, ClientError};
use fabric_reconciler::store::StoredObject;
use fabric_schemas::kinds::API_VERSION;

use super::apply::ServerArgs;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum GetOutput {
    #[default]
    Table,
    Yaml,
    Json,
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// FabricNode, ServiceRecord, UpdateIntent, RolloutPolicy, RolloutLease,
    /// TrustRoot; lower case, plural and short names (fnode) work too.
    kind: String,
    name: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
    #[arg(short, long, value_enum, default_value_t)]
    output: GetOutput,
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
    let objects = match &args.name {
        Some(name) => match runtime.block_on(client.get(kind.as_str(), name)) {
            Ok(o) => vec![o],
            Err(e @ ClientError::Status { .. })
                if e.status().is_some_and(|s| s.as_u16() == 404) =>
            {
                eprintln!("error: {kind} {name:?} not found");
                return Ok(ExitCode::from(1));
            }
            Err(e) => return Err(e.into()),
        },
        None => runtime.block_on(client.list(kind.as_str()))?,
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
        GetOutput::Table => {
            if objects.is_empty() {
                eprintln!("no {kind} objects");
                return Ok(ExitCode::SUCCESS);
            }
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
