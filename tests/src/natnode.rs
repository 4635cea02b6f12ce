//! The line protocol of the `fabric-nat-node` test binary, and a handle that
//! runs one inside a network namespace and talks to it with bounded waits.
//!
//! One JSON object per line: the node prints `{"event":"ready",...}` once its
//! transport is bound, then answers every [`Request`] with one [`Response`].

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fabric::path::{PathKind, PeerInfo};
use fabric::peer_select::ClassifiedEndpoint;
use fabric::topology::NodeId;
use serde::{Deserialize, Serialize};

/// A command for the node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Put a peer in the transport's address book (its signed node record).
    SetPeer {
        node: NodeId,
        info: PeerInfo,
    },
    /// Walk the path ladder (planner order, then relays); answer the path.
    Connect {
        node: NodeId,
    },
    /// Open the peer's `echo` service, send `text`, answer the reply and path.
    Echo {
        node: NodeId,
        text: String,
    },
    /// Dial exactly `addr` expecting `node` (validation of one endpoint).
    Probe {
        node: NodeId,
        addr: SocketAddr,
    },
    /// Another observer's report about `(node, addr)`, for the planner.
    Report {
        node: NodeId,
        addr: SocketAddr,
        area: String,
        nat_group: String,
        reached: bool,
    },
    /// The planner's classification and probe order of the peer's endpoints.
    Classify {
        node: NodeId,
    },
    /// How many times the transport dialled `(node, addr)`.
    ProbeCount {
        node: NodeId,
        addr: SocketAddr,
    },
    /// The live path to `node`, if any.
    Path {
        node: NodeId,
    },
    Quit,
}

/// The node's answer; only the fields the request asks for are set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<ClassifiedEndpoint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_order: Option<Vec<SocketAddr>>,
}

impl Response {
    pub fn ok() -> Self {
        Response {
            ok: true,
            ..Default::default()
        }
    }

    pub fn error(e: impl std::fmt::Display) -> Self {
        Response {
            ok: false,
            error: Some(e.to_string()),
            ..Default::default()
        }
    }
}

/// Why talking to a node process failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeProcError {
    #[error("starting {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("node {name}: no answer within {after:?} to {what}; its log:\n{log}")]
    Timeout {
        name: String,
        what: String,
        after: Duration,
        log: String,
    },
    #[error("node {name} exited or closed stdout during {what}; its log:\n{log}")]
    Gone {
        name: String,
        what: String,
        log: String,
    },
    #[error("node {name}: writing a request: {source}")]
    Write {
        name: String,
        source: std::io::Error,
    },
    #[error("node {name}: undecodable line {line:?}: {source}")]
    Decode {
        name: String,
        line: String,
        source: serde_json::Error,
    },
    #[error("encoding a request: {0}")]
    Encode(String),
}

/// One running `fabric-nat-node`, killed on drop.
pub struct NatNode {
    pub name: String,
    pub node_id: NodeId,
    pub addr: SocketAddr,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl NatNode {
    /// Starts `bin args…` inside network namespace `netns` and waits (at most
    /// `ready_within`) for its ready line. stderr goes to `log`.
    pub fn spawn(
        name: &str,
        netns: &str,
        bin: &str,
        args: &[String],
        log: PathBuf,
        ready_within: Duration,
    ) -> Result<NatNode, NodeProcError> {
        let what = format!("{name} in netns {netns}");
        let spawn_err = |source| NodeProcError::Spawn {
            what: what.clone(),
            source,
        };
        let stderr = std::fs::File::create(&log).map_err(spawn_err)?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, bin])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(spawn_err)?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(spawn_err(std::io::Error::other("no stdio pipes")));
        };
        // A reader thread turns stdout into a channel so every wait can be
        // bounded with recv_timeout.
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut node = NatNode {
            name: name.to_owned(),
            node_id: NodeId([0; 32]),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            child,
            stdin,
            lines,
            log,
        };
        let ready = node.read_response("start-up", ready_within)?;
        match (ready.event.as_deref(), ready.node_id, ready.addr) {
            (Some("ready"), Some(id), Some(addr)) => {
                node.node_id = id;
                node.addr = addr;
                Ok(node)
            }
            _ => Err(NodeProcError::Gone {
                name: name.to_owned(),
                what: format!("start-up (first line was {ready:?})"),
                log: node.log_text(),
            }),
        }
    }

    /// The node's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn read_response(&mut self, what: &str, within: Duration) -> Result<Response, NodeProcError> {
        let line = match self.lines.recv_timeout(within) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(NodeProcError::Timeout {
                    name: self.name.clone(),
                    what: what.to_owned(),
                    after: within,
                    log: self.log_text(),
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(NodeProcError::Gone {
                    name: self.name.clone(),
                    what: what.to_owned(),
                    log: self.log_text(),
                })
            }
        };
        serde_json::from_str(&line).map_err(|source| NodeProcError::Decode {
            name: self.name.clone(),
            line,
            source,
        })
    }

    /// Sends one request and waits at most `within` for its response.
    pub fn request(&mut self, req: &Request, within: Duration) -> Result<Response, NodeProcError> {
        let mut line =
            serde_json::to_vec(req).map_err(|e| NodeProcError::Encode(format!("{e}")))?;
        line.push(b'\n');
        let write_err = |source| NodeProcError::Write {
            name: self.name.clone(),
            source,
        };
        self.stdin.write_all(&line).map_err(write_err)?;
        self.stdin.flush().map_err(write_err)?;
        self.read_response(&format!("{req:?}"), within)
    }
}

impl Drop for NatNode {
    fn drop(&mut self) {
        // Killing `ip netns exec` kills the node (exec replaces the process).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
