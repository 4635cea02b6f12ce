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
    /// Consecutive failed heartbeats after which the session is replaced;
    /// `None` means [`DEFAULT_MAX_FAILURES`].
    #[serde(default)]
    pub max_failures: Option<u32>,
    /// Bearer token for the legacy HTTP contract, if it requires one.
    #[serde(default)]
    pub compat_token: Option<String>,
}

/// Why the control config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The config file exists but could not be read.
    #[error("reading control config {path}: {source}")]
    Read {
        /// The config file.
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid JSON for [`ControlConfigFile`], or one of
    /// its fallback endpoints does not parse.
    #[error("control config {path}: {reason}")]
    Parse {
        /// The config file.
        path: String,
        /// The parser's message.
        reason: String,
    },
    /// A control session to an endpoint could not be opened (connect failed
    /// or timed out, or this node's own Control API is not up yet).
    #[error("control session to {endpoint}: {reason}")]
    Session {
        /// The endpoint the session was to.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
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

    /// The session part of the config: the fallback endpoints parsed (any
    /// that does not parse is a [`ControlError::Parse`] naming `path`) and
    /// `max_failures` with its default filled in.
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

/// Consecutive failed heartbeats that replace a session when the config
/// file does not say.
pub const DEFAULT_MAX_FAILURES: u32 = 3;
