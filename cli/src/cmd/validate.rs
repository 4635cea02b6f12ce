use std::path::PathBuf;
use std::process::ExitCode;

use fabric_schemas::manifest::load_path;

use super::Output;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// A manifest file or a folder of them (searched recursively).
    #[arg(short = 'f', long = "filename")]
    path: PathBuf,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// Exit 0 when everything is valid, 1 when any object is not.
pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let report = load_path(&args.path);
    match args.output {
        Output::Json => {
            let objects: Vec<_> = report
                .objects
                .iter()
                .map(|o| serde_json::json!({"kind": o.kind.as_str(), "name": o.name(), "file": o.source.file}))
                .collect();
            let doc = serde_json::json!({
                "valid": report.errors.is_empty(),
                "files": report.files,
                "objects": objects,
                "errors": report.errors,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text => {
            for e in &report.errors {
                println!("{e}");
            }
            let mut counts = std::collections::BTreeMap::new();
            for o in &report.objects {
                *counts.entry(o.kind.as_str()).or_insert(0) += 1;
            }
            let summary: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
            println!(
                "{}: {} file(s), {} valid object(s) ({}), {} error(s)",
                args.path.display(),
                report.files,
                report.objects.len(),
                if summary.is_empty() {
                    "none".to_owned()
                } else {
                    summary.join(", ")
                },
                report.errors.len()
            );
        }
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
