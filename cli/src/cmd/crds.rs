use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use fabric_schemas::crd;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Write one file per CRD into this folder instead of printing a multi-document stream.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let crds = crd::all();
    for (kind, c) in &crds {
        let bad = crd::structural_violations(c);
        anyhow::ensure!(
            bad.is_empty(),
            "generated CRD for {kind} is not structural: {bad:?}"
        );
    }
    match args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (_, c) in &crds {
                let path = dir.join(crd::file_name(c));
                let yaml = crd::to_yaml(c)?;
                fabric_schemas::keys::write_atomic(&path, yaml.as_bytes(), 0o644)?;
                println!("wrote {}", path.display());
            }
        }
        None => {
            for (i, (_, c)) in crds.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", crd::to_yaml(c)?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
