//! Who a node is: its ed25519 public key. Addresses are never identity.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A node's identity: its ed25519 public key. Addresses are never identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The raw public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// First eight hex digits, for log lines where the full key is noise.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

/// Why a string is not a NodeId.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid node id {input:?}: expected 64 hex digits (an ed25519 public key)")]
pub struct NodeIdParseError {
    /// The string that was offered.
    pub input: String,
}

impl FromStr for NodeId {
    type Err = NodeIdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| NodeIdParseError {
            input: s.to_owned(),
        })?;
        Ok(NodeId(out))
    }
}

impl TryFrom<String> for NodeId {
    type Error = NodeIdParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_round_trips_through_hex() {
        let id = NodeId([7u8; 32]);
        let parsed: NodeId = id.to_string().parse().expect("hex parses");
        assert_eq!(parsed, id);
    }

    #[test]
    fn node_id_rejects_short_and_non_hex() {
        assert!("abcd".parse::<NodeId>().is_err());
        assert!("zz".repeat(32).parse::<NodeId>().is_err());
    }
}
