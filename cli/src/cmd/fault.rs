//! `fabricctl fault kill-node NAME | stop-control | heal`: faults on demand
//! against a running `fabricctl up`, for demos and tests.
//!
//! The command finds the fleet through the context file and drops a request
//! into `<state-dir>/faults/requests/` (written atomically); `up` acts on it
//! at its next tick (200 ms), answers in `<state-dir>/faults/done/<id>.json`
//! and prints what it did in its view. The command waits for the answer and
//! exits 0 when the fault was applied, 1 when `up` refused it (an unknown
//! node, a node that runs beside a replica), 2 when no `up` answered.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Where requests go and answers come from, under the state folder.
pub(crate) const REQUESTS: &str = "faults/requests";
/// Answers.
pub(crate) const DONE: &str = "faults/done";

#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Kill a node as a crash of its machine would: its host agent and
    /// node-agent get SIGKILL. The rest of the fleet rides through.
    KillNode(KillArgs),
    /// Stop every reconciler replica (and the control-api nodes they run
    /// beside): the control edge disappears; every other node keeps working
    /// from its signed directory and peer cache.
    StopControl(Where),
    /// Bring back what faults stopped: killed nodes restart from their
    /// state folders, the control plane starts again.
    Heal(Where),
}

#[derive(clap::Args)]
pub(crate) struct KillArgs {
    /// The node (its FabricNode name).
    name: String,
    #[command(flatten)]
    at: Where,
}

#[derive(clap::Args)]
pub(crate) struct Where {
    /// The context file of the running `up` (default: $FABRIC_CONTEXT, else
    /// ~/.config/fabric/context.json).
    #[arg(long)]
    context: Option<PathBuf>,
    /// How long to wait for `up` to act.
    #[arg(long, default_value = "30s")]
    wait: String,
}

/// A fault request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub(crate) enum Fault {
    /// See [`Command::KillNode`].
    KillNode {
        /// The node.
        node: String,
    },
    /// See [`Command::StopControl`].
    StopControl,
    /// See [`Command::Heal`].
    Heal,
}

/// `up`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Answer {
    /// Whether the fault was applied.
    pub ok: bool,
    /// What was done, or why not.
    pub message: String,
}

pub(crate) fn run(c: Command) -> anyhow::Result<ExitCode> {
    let (fault, at) = match c {
        Command::KillNode(a) => (Fault::KillNode { node: a.name }, a.at),
        Command::StopControl(w) => (Fault::StopControl, w),
        Command::Heal(w) => (Fault::Heal, w),
    };
    let wait = Duration::from_secs(
        fabric_schemas::time::parse_duration(&at.wait).context("--wait")? as u64,
    );
    let ctx = crate::context::load(at.context.as_deref())?;
    if !Path::new(&format!("/proc/{}", ctx.pid)).exists() {
        bail!(
            "the fleet of {} is not running (its fabricctl up, pid {}, is gone)",
            ctx.state_dir.display(),
            ctx.pid
        );
    }
    let mut id = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
    let id = format!("{}-{}", fabric_schemas::time::now_unix(), hex::encode(id));
    let requests = ctx.state_dir.join(REQUESTS);
    std::fs::create_dir_all(&requests)
        .with_context(|| format!("creating {}", requests.display()))?;
    let file = requests.join(format!("{id}.json"));
    fabric_schemas::keys::write_atomic(&file, &serde_json::to_vec(&fault)?, 0o600)
        .with_context(|| format!("writing {}", file.display()))?;
    let answer = ctx.state_dir.join(DONE).join(format!("{id}.json"));
    let start = Instant::now();
    while start.elapsed() < wait {
        if let Ok(bytes) = std::fs::read(&answer) {
            let a: Answer = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", answer.display()))?;
            let _ = std::fs::remove_file(&answer);
            return Ok(if a.ok {
                println!("{}", a.message);
                ExitCode::SUCCESS
            } else {
                eprintln!("refused: {}", a.message);
                ExitCode::from(1)
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(&file);
    bail!(
        "fabricctl up (pid {}) did not act on the request within {}",
        ctx.pid,
        at.wait
    )
}

/// The requests waiting under `state_dir`, oldest first.
pub(crate) fn pending(state_dir: &Path) -> Vec<(String, Result<Fault, String>)> {
    let dir = state_dir.join(REQUESTS);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let id = p.file_stem()?.to_string_lossy().into_owned();
            let parsed = std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
            let _ = std::fs::remove_file(&p);
            Some((id, parsed))
        })
        .collect()
}

/// Writes `up`'s answer to request `id`.
pub(crate) fn answer(state_dir: &Path, id: &str, ok: bool, message: String) {
    let dir = state_dir.join(DONE);
    let a = Answer { ok, message };
    let write = std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            serde_json::to_vec(&a)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    fabric_schemas::keys::write_atomic(&dir.join(format!("{id}.json")), &b, 0o600)
                        .map_err(|e| e.to_string())
                })
        });
    if let Err(e) = write {
        tracing::warn!(error = %e, "cannot answer the fault request");
    }
}
