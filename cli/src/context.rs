//! The context file: where a running fleet's Control API is and how to
//! authenticate, so operator commands need no flags (the way `kubectl`
//! finds a kubeconfig).
//!
//! Lookup order: `--context FILE`, then the `FABRIC_CONTEXT` environment
//! variable, then `$XDG_CONFIG_HOME/fabric/context.json` (or
//! `~/.config/fabric/context.json`). `fabricctl up` writes one into its state
//! folder and to the first of the last two, and removes the shared one when
//! it stops (if it still names that fleet).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// The environment variable naming the context file.
pub(crate) const ENV: &str = "FABRIC_CONTEXT";

/// One fleet's connection details.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct FleetContext {
    /// The Control API base URL commands use.
    pub server: String,
    /// Every Control API replica, the first being `server`.
    #[serde(default)]
    pub servers: Vec<String>,
    /// The operator bearer token file (absolute).
    pub token_file: PathBuf,
    /// The fleet's trust-root manifest (absolute): what `verify` checks against.
    pub trust_root: PathBuf,
    /// The control plane's store, as `rollout --store` takes it.
    pub store: String,
    /// The fleet's state folder (absolute).
    pub state_dir: PathBuf,
    /// The process serving it (`fabricctl up`).
    pub pid: u32,
}

/// The shared default path: `$FABRIC_CONTEXT`, else the user's config folder.
pub(crate) fn default_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("fabric").join("context.json"))
}

/// Reads the context at `explicit`, or at [`default_path`].
pub(crate) fn load(explicit: Option<&Path>) -> anyhow::Result<FleetContext> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => match default_path() {
            Some(p) => p,
            None => bail!(
                "no --server given and no context file: set {ENV} or HOME, or pass --server and --token-file"
            ),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no --server given and no context file at {} (start a fleet with `fabricctl up`, point {ENV} at its context.json, or pass --server)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading context {}", path.display())),
    };
    serde_json::from_str(&text)
        .with_context(|| format!("context file {} is not valid", path.display()))
}

/// Writes `ctx` to `path` atomically (0600: it names the token file).
pub(crate) fn write(path: &Path, ctx: &FleetContext) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let bytes = serde_json::to_vec_pretty(ctx).context("encoding the context")?;
    fabric_schemas::keys::write_atomic(path, &bytes, 0o600)
        .with_context(|| format!("writing context {}", path.display()))
}

/// Removes the shared context at `path` if it still names the fleet whose
/// state folder is `state_dir` (another `up` may have replaced it).
pub(crate) fn remove_if_ours(path: &Path, state_dir: &Path) {
    let ours = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<FleetContext>(&t).ok())
        .is_some_and(|c| c.state_dir == state_dir);
    if ours {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the context file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(dir: &Path) -> FleetContext {
        FleetContext {
            server: "http://127.0.0.1:1".into(),
            servers: vec!["http://127.0.0.1:1".into()],
            token_file: dir.join("operator.token"),
            trust_root: dir.join("trust/trust-root.yaml"),
            store: format!("embedded:{}", dir.join("store.redb").display()),
            state_dir: dir.to_path_buf(),
            pid: 1,
        }
    }

    #[test]
    fn a_written_context_reads_back_and_is_removed_only_by_its_fleet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ctx/context.json");
        let c = ctx(dir.path());
        write(&path, &c).expect("write");
        assert_eq!(load(Some(&path)).expect("load"), c);
        remove_if_ours(&path, Path::new("/elsewhere"));
        assert!(path.exists(), "another fleet's context must stay");
        remove_if_ours(&path, dir.path());
        assert!(!path.exists());
    }

    #[test]
    fn a_missing_or_malformed_context_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("context.json");
        let e = load(Some(&path)).expect_err("missing").to_string();
        assert!(
            e.contains("fabricctl up") && e.contains("context.json"),
            "{e}"
        );
        std::fs::write(&path, br#"{"server": 1}"#).expect("write");
        let e = format!("{:#}", load(Some(&path)).expect_err("malformed"));
        assert!(e.contains("not valid"), "{e}");
    }
}
