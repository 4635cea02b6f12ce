use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use fabric_schemas::accept::NothingHeld;
use fabric_schemas::time::now_unix;
use fabric_schemas::{accept, TrustAnchor};

use super::Output;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The TrustRoot manifest to check against (e.g. trust-root.yaml from `keys init`).
    #[arg(long)]
    trust_root: PathBuf,
    /// Envelope files to check.
    #[arg(required = true)]
    envelopes: Vec<PathBuf>,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// Exit 0 when every envelope is accepted, 1 when any is rejected.
pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let spec = fabric_schemas::keys::read_trust_root_manifest(&a.trust_root)?;
    let trust = TrustAnchor::from_spec(&spec).context("trust root")?;
    let now = now_unix();
    let mut rejected = 0;
    let mut rows = Vec::new();
    for path in &a.envelopes {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let row = match accept(&trust, &NothingHeld, &bytes, now) {
            Ok(acc) => serde_json::json!({
                "file": path, "accepted": true,
                "kind": acc.envelope.record.kind.as_str(), "name": acc.envelope.record.name,
                "generation": acc.envelope.record.generation,
                "signers": acc.signers, "digest": hex::encode(acc.digest),
            }),
            Err(r) => {
                rejected += 1;
                serde_json::json!({"file": path, "accepted": false, "reason": r.reason(), "message": r.to_string()})
            }
        };
        rows.push(row);
    }
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Text => {
            for r in &rows {
                if r["accepted"] == true {
                    println!(
                        "{}: accepted {} {} generation {} signed by {}",
                        r["file"].as_str().unwrap_or_default(),
                        r["kind"].as_str().unwrap_or_default(),
                        r["name"],
                        r["generation"],
                        r["signers"]
                    );
                } else {
                    println!(
                        "{}: rejected ({}): {}",
                        r["file"].as_str().unwrap_or_default(),
                        r["reason"].as_str().unwrap_or_default(),
                        r["message"].as_str().unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(if rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
