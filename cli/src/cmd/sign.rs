use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use fabric_schemas::keys::{read_private_key, write_atomic};
use fabric_schemas::manifest::load_path;
use fabric_schemas::time::{now_unix, parse_duration};
use fabric_schemas::{Envelope, Record, Scope, ScopeTerm};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Manifest file or folder; every valid object is signed.
    #[arg(short = 'f', long = "filename")]
    path: PathBuf,
    /// Private key (PKCS#8 PEM) to sign with; repeat for multi-signature thresholds.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// Record generation; defaults to metadata.generation, else 1.
    #[arg(long)]
    generation: Option<u64>,
    /// Lifetime of the signed records (e.g. 24h, 7d).
    #[arg(long, default_value = "24h")]
    expires_in: String,
    /// Scope terms (`*`, `area:X`, `site:X`, `nat:X`, `node:X`); default `*`.
    #[arg(long = "scope")]
    scope: Vec<String>,
    /// Folder to write `<Kind>-<name>.fabenv` files into.
    #[arg(long)]
    out_dir: PathBuf,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let report = load_path(&a.path);
    if !report.errors.is_empty() {
        for e in &report.errors {
            eprintln!("{e}");
        }
        bail!(
            "refusing to sign: {} manifest error(s)",
            report.errors.len()
        );
    }
    let keys = a
        .keys
        .iter()
        .map(|p| read_private_key(p))
        .collect::<Result<Vec<_>, _>>()?;
    let key_refs: Vec<_> = keys.iter().collect();
    let lifetime = parse_duration(&a.expires_in).context("--expires-in")?;
    let terms = if a.scope.is_empty() {
        vec![ScopeTerm::Any]
    } else {
        a.scope
            .iter()
            .map(|s| s.parse::<ScopeTerm>())
            .collect::<Result<Vec<_>, _>>()
            .context("--scope")?
    };
    let scope = Scope::new(terms).context("--scope is empty")?;
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("creating {}", a.out_dir.display()))?;
    let now = now_unix();
    for o in &report.objects {
        let generation = a
            .generation
            .or_else(|| o.metadata.generation.and_then(|g| u64::try_from(g).ok()))
            .unwrap_or(1);
        let record = Record::new(
            &o.spec,
            o.name(),
            generation,
            now,
            now + lifetime,
            scope.clone(),
        )
        .with_context(|| format!("{} {:?}", o.kind, o.name()))?;
        let env = Envelope::sign(record, &key_refs);
        let path = a.out_dir.join(format!("{}-{}.fabenv", o.kind, o.name()));
        write_atomic(&path, &env.encode(), 0o644)?;
        println!(
            "signed {} {:?} generation {generation} -> {}",
            o.kind,
            o.name(),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
