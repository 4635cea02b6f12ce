//! A fabric node for the live NAT test: the real transport with the peer
//! planner as its path ranker, plus an `echo` service, driven over stdin /
//! stdout with one JSON object per line (see [`fabric_integration_tests::natnode`]).
//!
//! ```text
//! fabric-nat-node --bind 10.1.0.11:7443 --area a --locality lan-a --nat nat-a [--relay]
//! ```
//!
//! It prints `{"event":"ready",...}` once bound, then answers each request line
//! with exactly one response line. Logs go to stderr (`RUST_LOG`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fabric::identity::NodeIdentity;
use fabric::path::PeerInfo;
use fabric::peer_select::{candidate_from_info, rank_endpoints, ObserverReport, PlannerRanker};
use fabric::topology::{NodeId, TopologyLabels};
use fabric::transport::{Transport, TransportConfig};
use fabric_integration_tests::natnode::{Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Longest any one request may take; the harness waits a little longer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
enum NodeError {
    #[error(
        "usage: fabric-nat-node --bind ADDR [--area A] [--locality L] [--nat N] [--relay]: {0}"
    )]
    Usage(String),
    #[error(transparent)]
    Transport(#[from] fabric::transport::TransportError),
    #[error("stdout/stdin: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding a response: {0}")]
    Json(#[from] serde_json::Error),
}

fn parse_args() -> Result<TransportConfig, NodeError> {
    let mut bind: Option<SocketAddr> = None;
    let mut labels = TopologyLabels::default();
    let mut relay = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| NodeError::Usage(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--bind" => {
                let v = value()?;
                bind = Some(
                    v.parse()
                        .map_err(|e| NodeError::Usage(format!("--bind {v}: {e}")))?,
                );
            }
            "--area" => labels.area = value()?,
            "--locality" => labels.locality_group = value()?,
            "--nat" => labels.nat_group = value()?,
            "--relay" => relay = true,
            other => return Err(NodeError::Usage(format!("unknown argument {other}"))),
        }
    }
    let bind = bind.ok_or_else(|| NodeError::Usage("--bind is required".into()))?;
    let mut config = TransportConfig::new(bind);
    config.labels = labels;
    config.relay = relay;
    // Short timers: a failed hairpin dial should cost seconds, not minutes,
    // and keep-alives hold the routers' NAT bindings open.
    config.connect_timeout = Duration::from_millis(1500);
    config.header_timeout = Duration::from_secs(3);
    config.idle_timeout = Duration::from_secs(10);
    config.keep_alive = Duration::from_secs(1);
    // No background upgrades: the test reads probe counters and must see only
    // the dials its own requests caused.
    config.path_upgrade_interval = None;
    Ok(config)
}

async fn serve_echo(transport: &Transport) -> Result<(), NodeError> {
    let mut listener = transport.listen("echo")?;
    tokio::spawn(async move {
        while let Some(ch) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(ch);
                // Errors end only this channel; the peer sees a short reply.
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(())
}

async fn echo(transport: &Transport, node: NodeId, text: &str) -> Response {
    let mut ch = match transport.open(node, "echo").await {
        Ok(ch) => ch,
        Err(e) => return Response::error(e),
    };
    let mut reply = Vec::new();
    let exchange = async {
        ch.write_all(text.as_bytes()).await?;
        ch.shutdown().await?;
        ch.read_to_end(&mut reply).await
    };
    match exchange.await {
        Ok(_) => Response {
            reply: Some(String::from_utf8_lossy(&reply).into_owned()),
            path: transport.path_to(node),
            ..Response::ok()
        },
        Err(e) => Response::error(e),
    }
}

/// What the request handler works on.
struct Node {
    transport: Transport,
    ranker: Arc<PlannerRanker>,
    /// The transport's own labels (it does not hand them back).
    labels: TopologyLabels,
    /// What we told the transport about each peer, to classify its endpoints.
    book: HashMap<NodeId, PeerInfo>,
}

async fn handle(node_state: &mut Node, req: Request) -> Response {
    let Node {
        transport,
        ranker,
        labels,
        book,
    } = node_state;
    let transport = &*transport;
    match req {
        Request::SetPeer { node, info } => {
            book.insert(node, info.clone());
            transport.set_peer(node, info);
            Response::ok()
        }
        Request::Connect { node } => match transport.connect(node).await {
            Ok(path) => Response {
                path: Some(path),
                ..Response::ok()
            },
            Err(e) => Response::error(e),
        },
        Request::Echo { node, text } => echo(transport, node, &text).await,
        Request::Probe { node, addr } => match transport.probe(node, addr).await {
            Ok(rtt) => Response {
                rtt_us: Some(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX)),
                ..Response::ok()
            },
            Err(e) => Response::error(e),
        },
        Request::Report {
            node,
            addr,
            area,
            nat_group,
            reached,
        } => {
            ranker.record_report(
                node,
                addr,
                ObserverReport {
                    area,
                    nat_group,
                    reached,
                },
            );
            Response::ok()
        }
        Request::Classify { node } => {
            let Some(info) = book.get(&node) else {
                return Response::error(format!("node {node} is not in the address book"));
            };
            let obs = ranker.observations();
            Response {
                endpoints: Some(ranker.classify(labels, node, info)),
                probe_order: Some(
                    rank_endpoints(labels, &candidate_from_info(node, info), &obs)
                        .into_iter()
                        .map(|c| c.addr)
                        .collect(),
                ),
                ..Response::ok()
            }
        }
        Request::ProbeCount { node, addr } => Response {
            count: Some(transport.probe_count(node, addr)),
            ..Response::ok()
        },
        Request::Path { node } => Response {
            path: transport.path_to(node),
            ..Response::ok()
        },
        Request::Quit => Response::ok(),
    }
}

async fn run() -> Result<(), NodeError> {
    let config = parse_args()?;
    let labels = config.labels.clone();
    let identity = NodeIdentity::generate();
    let transport = Transport::bind(&identity, config).await?;
    let ranker = Arc::new(PlannerRanker::new());
    transport.set_path_ranker(ranker.clone());
    serve_echo(&transport).await?;

    let mut stdout = tokio::io::stdout();
    let ready = Response {
        event: Some("ready".into()),
        node_id: Some(transport.node_id()),
        addr: Some(transport.local_addr()?),
        ..Response::ok()
    };
    write_line(&mut stdout, &ready).await?;

    let mut node = Node {
        transport: transport.clone(),
        ranker,
        labels,
        book: HashMap::new(),
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                write_line(&mut stdout, &Response::error(format!("bad request: {e}"))).await?;
                continue;
            }
        };
        let quit = matches!(req, Request::Quit);
        let resp = match tokio::time::timeout(REQUEST_TIMEOUT, handle(&mut node, req)).await {
            Ok(r) => r,
            Err(_) => Response::error(format!("request timed out after {REQUEST_TIMEOUT:?}")),
        };
        write_line(&mut stdout, &resp).await?;
        if quit {
            break;
        }
    }
    // stdin closed (the harness went away) or quit: stop cleanly.
    transport.shutdown().await;
    Ok(())
}

async fn write_line(out: &mut tokio::io::Stdout, resp: &Response) -> Result<(), NodeError> {
    let mut line = serde_json::to_vec(resp)?;
    line.push(b'\n');
    out.write_all(&line).await?;
    out.flush().await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fabric-nat-node: {e}");
            ExitCode::FAILURE
        }
    }
}
