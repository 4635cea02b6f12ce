//! The ingress edge in the binary: `fabric-node-agent --ingress
//! LISTEN=SERVICE@NODE_ID` accepts external TCP and maps each connection into
//! a fabric channel to the service on its provider, and declares the
//! listener as a `service-ingress` edge in its status.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fabric_compose::fleet::{synthetic_nodes, FleetOptions, LocalFleet};
use fabric_node_agent::status;
use fabric_proto::edge::{EdgeTarget, ReportedRole};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Reap(Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_tcp_reaches_a_fabric_service_through_the_ingress_edge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = LocalFleet::start(
        &synthetic_nodes(3),
        FleetOptions::new(dir.path().join("fleet")),
    )
    .await
    .expect("fleet");
    // The provider serves `echo` on its fabric transport.
    let provider = &fleet.members[1];
    let mut echo = provider
        .handle
        .as_ref()
        .expect("up")
        .transport()
        .listen("echo")
        .expect("listen");
    tokio::spawn(async move {
        while let Some(mut ch) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1024];
                while let Ok(n) = ch.read(&mut buf).await {
                    if n == 0 || ch.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = ch.shutdown().await;
            });
        }
    });

    let state = dir.path().join("edge-1");
    let admitted = fleet.admit("edge-1", &state).await.expect("admitted");
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free tcp port");
    let _node = Reap(
        Command::new(env!("CARGO_BIN_EXE_fabric-node-agent"))
            .args(admitted.node_agent_args("edge-1", &state))
            .arg("--ingress")
            .arg(format!("{tcp}=echo@{}", provider.node_id))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node-agent starts"),
    );

    // The edge is declared before anything is sent through it.
    let start = Instant::now();
    let edge = loop {
        if let Ok(s) = status::read(&state) {
            if let Some(e) = s
                .edge_listeners
                .iter()
                .find(|e| e.role == ReportedRole::ServiceIngress)
            {
                break e.clone();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no ingress edge in status"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(edge.bind, tcp);
    assert_eq!(
        edge.target,
        EdgeTarget::FabricService {
            node: provider.node_id,
            service: "echo".into()
        }
    );

    // A client's bytes come back through the fabric, once the node has
    // learned the provider's address from the directory.
    let answer = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = (|| -> std::io::Result<Vec<u8>> {
                let mut s = std::net::TcpStream::connect(tcp)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"hello through the fabric")?;
                s.shutdown(std::net::Shutdown::Write)?;
                let mut out = Vec::new();
                s.read_to_end(&mut out)?;
                Ok(out)
            })();
            match attempt {
                Ok(out) if !out.is_empty() => return out,
                other => {
                    assert!(Instant::now() < deadline, "no echo: {other:?}");
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
    })
    .await
    .expect("client");
    assert_eq!(answer, b"hello through the fabric");
}
