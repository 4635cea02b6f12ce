//! `fabricctl apply`: send manifests to the Control API, which validates them
//! against what is stored and writes them in one transaction.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use fabric_reconciler::api::{ApiClient, ApplyAction, ApplyOptions, ClientError, ManifestFile};

use super::Output;

/// Where the Control API is and how to authenticate; shared by apply/get/audit.
/// Without `--server`, both come from the context file `fabricctl up` writes.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ServerArgs {
    /// Control API base URL, e.g. http://127.0.0.1:7180 (default: the
    /// context file's).
    #[arg(long)]
    pub server: Option<String>,
    /// File holding the operator bearer token (default: the context file's).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The context file (default: $FABRIC_CONTEXT, else
    /// ~/.config/fabric/context.json, as written by `fabricctl up`).
    #[arg(long)]
    pub context: Option<PathBuf>,
}

impl ServerArgs {
    pub(crate) fn client(&self) -> anyhow::Result<ApiClient> {
        let (server, token_file) = match &self.server {
            Some(s) => (s.clone(), self.token_file.clone()),
            None => {
                let ctx = crate::context::load(self.context.as_deref())?;
                let token = self.token_file.clone().unwrap_or(ctx.token_file);
                (ctx.server, Some(token))
            }
        };
        let token = match &token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading token file {}", p.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        Ok(ApiClient::new(&server, token)?)
    }
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// A manifest file or a folder of them (searched recursively).
    #[arg(short = 'f', long = "filename")]
    path: PathBuf,
    /// Validate on the server and show what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Delete stored objects of the kinds in these manifests that they do not contain.
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    server: ServerArgs,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// Exit 0 when applied (or valid, for a dry run), 1 when the server refused
/// the manifests (every error is printed with file and field), 2 otherwise.
pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let files = read_files(&args.path)?;
    let client = args.server.client()?;
    let opts = ApplyOptions {
        dry_run: args.dry_run,
        prune: args.prune,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match runtime.block_on(client.apply(files, opts)) {
        Ok(result) => {
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&result)?),
                Output::Text => {
                    let suffix = if result.dry_run { " (dry run)" } else { "" };
                    for i in &result.items {
                        let action = match i.action {
                            ApplyAction::Created => "created",
                            ApplyAction::Configured => "configured",
                            ApplyAction::Unchanged => "unchanged",
                            ApplyAction::Pruned => "pruned",
                        };
                        let generation = i
                            .generation
                            .map(|g| format!(" (generation {g})"))
                            .unwrap_or_default();
                        println!("{}/{} {action}{generation}{suffix}", i.kind, i.name);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::Status {
            status,
            message,
            errors,
        }) if status.as_u16() == 422 => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("error: {message}");
            Ok(ExitCode::from(1))
        }
        Err(e @ ClientError::Status { .. }) if e.status().is_some_and(|s| s.as_u16() == 401) => {
            anyhow::bail!("{e} (pass the operator token with --token-file)")
        }
        Err(e) => Err(e.into()),
    }
}

/// The file, or every .yaml/.yml/.json file under the folder (sorted,
/// recursive, hidden entries skipped), as `fabricctl validate` reads them.
fn read_files(path: &Path) -> anyhow::Result<Vec<ManifestFile>> {
    let paths = fabric_schemas::manifest::manifest_files(path)
        .with_context(|| format!("reading {}", path.display()))?;
    if paths.is_empty() {
        anyhow::bail!("{}: no .yaml, .yml or .json files found", path.display());
    }
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            Ok(ManifestFile {
                name: p.display().to_string(),
                text,
            })
        })
        .collect()
}
