//! `fabricctl artifact`: put builds into an update store and print what an
//! `UpdateIntent` must name to pin them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use fabric_node_agent::update::artifact::{digests_of_file, hash_file, piece_root, ArtifactStore};
use fabric_schemas::kinds::{PieceSpec, Spec};

use super::Output;

/// What `artifact` can do.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Put a build into an update store (the `artifacts/` folder of an
    /// `update-store` node) and print the `artifact:` block an UpdateIntent
    /// names. With --manifests and --intent, refuses a file whose hash, size
    /// or piece root disagrees with that intent.
    Push(PushArgs),
    /// Print a file's sha256, size and piece root without storing it.
    Hash(HashArgs),
}

#[derive(clap::Args)]
pub(crate) struct HashArgs {
    /// The build.
    file: PathBuf,
    /// Bytes per piece: a power of two from 16 KiB to 16 MiB.
    #[arg(long, default_value_t = 1024 * 1024)]
    piece_size: u64,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(clap::Args)]
pub(crate) struct PushArgs {
    /// The build.
    file: PathBuf,
    /// The store folder (for `fabricctl up`: `<state>/nodes/<store node>/artifacts`).
    #[arg(long)]
    store: PathBuf,
    /// Bytes per piece (an intent that pins pieces sets it instead).
    #[arg(long, default_value_t = 1024 * 1024)]
    piece_size: u64,
    /// Manifests holding the UpdateIntent the build is pushed for.
    #[arg(long, requires = "intent")]
    manifests: Option<PathBuf>,
    /// The UpdateIntent (metadata.name) the build must match.
    #[arg(long, requires = "manifests")]
    intent: Option<String>,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// Exit 0 when stored (or hashed), 1 when refused.
pub(crate) fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Hash(a) => {
            let pinned = pin(&a.file, a.piece_size)?;
            print(&pinned, a.output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Push(a) => push(a),
    }
}

/// What an intent names of a build.
pub(crate) struct Pinned {
    pub(crate) sha256: String,
    pub(crate) size: u64,
    pub(crate) pieces: PieceSpec,
}

fn check_piece_size(piece_size: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        piece_size.is_power_of_two()
            && (PieceSpec::MIN_PIECE_SIZE..=PieceSpec::MAX_PIECE_SIZE).contains(&piece_size),
        "--piece-size {piece_size}: must be a power of two from {} to {}",
        PieceSpec::MIN_PIECE_SIZE,
        PieceSpec::MAX_PIECE_SIZE
    );
    Ok(())
}

pub(crate) fn pin(file: &Path, piece_size: u64) -> anyhow::Result<Pinned> {
    check_piece_size(piece_size)?;
    let (size, sha256) = hash_file(file).with_context(|| format!("reading {}", file.display()))?;
    anyhow::ensure!(size > 0, "{}: the file is empty", file.display());
    let digests =
        digests_of_file(file, piece_size).with_context(|| format!("reading {}", file.display()))?;
    Ok(Pinned {
        sha256,
        size,
        pieces: PieceSpec {
            piece_size,
            root: hex::encode(piece_root(&digests)),
        },
    })
}

fn print(p: &Pinned, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "sha256": p.sha256,
                "size": p.size,
                "pieces": {"pieceSize": p.pieces.piece_size, "root": p.pieces.root},
            }))?
        ),
        Output::Text => {
            println!("artifact:");
            println!("  sha256: {}", p.sha256);
            println!("  size: {}", p.size);
            println!("  pieces:");
            println!("    pieceSize: {}", p.pieces.piece_size);
            println!("    root: {}", p.pieces.root);
        }
    }
    Ok(())
}

fn push(a: PushArgs) -> anyhow::Result<ExitCode> {
    let mut piece_size = a.piece_size;
    let mut expect = None;
    if let (Some(manifests), Some(name)) = (&a.manifests, &a.intent) {
        let report = fabric_schemas::manifest::load_path(manifests);
        for e in &report.errors {
            eprintln!("{e}");
        }
        let intent = report
            .objects
            .iter()
            .find_map(|o| match &o.spec {
                Spec::UpdateIntent(i) if o.name() == name => Some(i.clone()),
                _ => None,
            })
            .with_context(|| {
                format!(
                    "no valid UpdateIntent {name:?} under {}",
                    manifests.display()
                )
            })?;
        if let Some(p) = &intent.artifact.pieces {
            piece_size = p.piece_size;
        }
        expect = Some(intent);
    }
    let pinned = pin(&a.file, piece_size)?;
    if let (Some(intent), Some(name)) = (&expect, &a.intent) {
        let want = &intent.artifact;
        let mut wrong = Vec::new();
        if want.sha256 != pinned.sha256 {
            wrong.push(format!(
                "sha256 is {}, the intent names {}",
                pinned.sha256, want.sha256
            ));
        }
        if want.size != pinned.size {
            wrong.push(format!(
                "size is {} bytes, the intent names {}",
                pinned.size, want.size
            ));
        }
        if let Some(p) = &want.pieces {
            if p.root != pinned.pieces.root {
                wrong.push(format!(
                    "piece root is {}, the intent pins {}",
                    pinned.pieces.root, p.root
                ));
            }
        }
        if !wrong.is_empty() {
            eprintln!(
                "refused: {} does not match UpdateIntent {name:?}: {}",
                a.file.display(),
                wrong.join("; ")
            );
            return Ok(ExitCode::from(1));
        }
    }
    let store = ArtifactStore::new(&a.store);
    store
        .import(&a.file, Some((&pinned.sha256, pinned.size)))
        .with_context(|| format!("storing {} in {}", a.file.display(), a.store.display()))?;
    eprintln!(
        "stored {} as {}",
        a.file.display(),
        store.staged_path(&pinned.sha256).display()
    );
    print(&pinned, a.output)?;
    Ok(ExitCode::SUCCESS)
}
