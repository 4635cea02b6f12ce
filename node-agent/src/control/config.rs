//! The node's control config file (`control.json` in its state directory).

use std::path::Path;

use fabric_proto::endpoint::ControlEndpoint;
use serde::{Deserialize, Serialize};

use super::decide::SessionConfig;

/// The node's control config file (`control.json` in the state directory),
/// as written by installers and by the legacy control-endpoint rewrite.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfigFile {
    /// Fallback endpoints (`fabric://...` or a legacy `http://...` URL).
    #[serde(default)]
    pub fallback_endpoints: Vec<String>,
    #[serde(default)]
    pub max_failures: Option<u32>,
    /// Bearer token for the legacy HTTP contract, if it requires one.
    #[serde(default)]
    pub compat_token: Option<String>,
}

/// Why the control config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("reading control config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("control config {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("control session to {endpoint}: {reason}")]
    Session { endpoint: String, reason: String },
}

impl ControlConfigFile {
    /// Loads the config; a missing file is the default config (no fallback
    /// endpoints), since a node on the fabric needs none.
    pub fn load(path: &Path) -> Result<ControlConfigFile, ControlError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ControlConfigFile::default())
            }
            Err(source) => {
                return Err(ControlError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        serde_json::from_str(&text).map_err(|e| ControlError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    pub fn session_config(&self, path: &Path) -> Result<SessionConfig, ControlError> {
        let fallback = self
            .fallback_endpoints
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<ControlEndpoint>, _>>()
            .map_err(|e| ControlError::Parse {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(SessionConfig {
            fallback,
            max_failures: self.max_failures.unwrap_or(DEFAULT_MAX_FAILURES),
        })
    }
}

pub const DEFAULT_MAX_FAILURES: u32 = 3;
