//! Transport benchmark (harness = false): prints a table.
//!
//! - channel throughput vs a raw quinn stream (same process, same loopback, same
//!   node identities/TLS; the raw pair is plain quinn endpoints with default
//!   transport settings, so the ratio is the cost of the fabric layers: virtual
//!   socket, stream header + status, channel wrapper, our transport config);
//! - relayed vs direct channel throughput;
//! - connection setup time direct and relayed (median, p99).
//!
//! Run: `cargo bench -p fabric --bench transport`. Bounded: a few seconds.

use std::net::SocketAddr;
use std::time::Instant;

use fabric::identity::NodeIdentity;
use fabric::path::{PathKind, PeerInfo};
use fabric::tls::{client_crypto, server_crypto, TlsIdentity, SERVER_NAME};
use fabric::topology::NodeId;
use fabric::transport::{Transport, TransportConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const CHUNK: usize = 64 * 1024;
const DIRECT_BYTES: usize = 96 << 20;
const RELAY_BYTES: usize = 48 << 20;
const RUNS: usize = 3;
const SETUP_ITERS: usize = 60;

fn config(relay: bool) -> TransportConfig {
    let mut c = TransportConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.relay = relay;
    c.path_upgrade_interval = None;
    c
}

fn public(addr: SocketAddr, is_relay: bool) -> PeerInfo {
    PeerInfo {
        is_relay,
        ..PeerInfo::public(addr)
    }
}

/// Sends `total` bytes, waits for the receiver's byte count; returns MiB/s.
async fn push<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, total: usize) -> f64 {
    let chunk = vec![0xa5u8; CHUNK];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        s.write_all(&chunk).await.expect("write");
        sent += CHUNK;
    }
    s.shutdown().await.expect("finish");
    let got = s.read_u64().await.expect("receiver count");
    assert_eq!(got as usize, sent, "receiver saw every byte");
    sent as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

/// Counts bytes to EOF and answers with the count.
async fn sink<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(_) => return,
        }
    }
    let _ = s.write_u64(n).await;
    let _ = s.shutdown().await;
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let idx = ((v.len() as f64) * 0.99).ceil() as usize;
    v[idx.saturating_sub(1).min(v.len() - 1)]
}

/// Plain quinn: one bidirectional stream between two default endpoints.
async fn raw_quinn_throughput(a: &NodeIdentity, b: &NodeIdentity, total: usize) -> f64 {
    let tls_a = TlsIdentity::new(a).expect("tls a");
    let tls_b = TlsIdentity::new(b).expect("tls b");
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(server_crypto(&tls_b).expect("server crypto")),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("server endpoint");
    let server_addr = server.local_addr().expect("addr");
    let srv = server.clone();
    tokio::spawn(async move {
        while let Some(inc) = srv.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(sink(tokio::io::join(recv, send)));
                }
            });
        }
    });
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    let (crypto, _) = client_crypto(&tls_a, b.node_id()).expect("client crypto");
    let conn = client
        .connect_with(quinn::ClientConfig::new(crypto), server_addr, SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake");
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        let (send, recv) = conn.open_bi().await.expect("open");
        let mut s = tokio::io::join(recv, send);
        rates.push(push(&mut s, total).await);
    }
    conn.close(0u32.into(), b"done");
    server.close(0u32.into(), b"done");
    median(rates)
}

async fn channel_throughput(t: &Transport, to: NodeId, total: usize) -> f64 {
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        let mut ch = t.open(to, "sink").await.expect("open sink");
        rates.push(push(&mut ch, total).await);
    }
    median(rates)
}

async fn setup_times(t: &Transport, to: NodeId, expect_relayed: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(SETUP_ITERS);
    for _ in 0..SETUP_ITERS {
        t.disconnect(to);
        let start = Instant::now();
        let path = t.connect(to).await.expect("connect");
        out.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(
            matches!(path, PathKind::Relayed { .. }),
            expect_relayed,
            "path {path}"
        );
    }
    t.disconnect(to);
    out
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ida = NodeIdentity::generate();
        let idb = NodeIdentity::generate();
        let idc = NodeIdentity::generate();
        let idr = NodeIdentity::generate();
        let a = Transport::bind(&ida, config(false)).await.expect("a");
        let b = Transport::bind(&idb, config(false)).await.expect("b");
        let c = Transport::bind(&idc, config(false)).await.expect("c");
        let r = Transport::bind(&idr, config(true)).await.expect("r");
        let b_addr = b.local_addr().expect("addr");
        a.set_peer(idb.node_id(), public(b_addr, false));
        // C has no usable direct candidate for B: only the relay.
        c.set_peer(idb.node_id(), PeerInfo::default());
        c.set_peer(idr.node_id(), public(r.local_addr().expect("addr"), true));
        r.set_peer(idb.node_id(), public(b_addr, false));
        // B takes tunnel offers only from relays its address book knows.
        b.set_peer(idr.node_id(), public(r.local_addr().expect("addr"), true));
        let mut listener = b.listen("sink").expect("listen");
        tokio::spawn(async move {
            while let Some(ch) = listener.accept().await {
                tokio::spawn(sink(ch));
            }
        });

        let bench_start = Instant::now();
        let raw = raw_quinn_throughput(&ida, &idb, DIRECT_BYTES).await;
        let direct = channel_throughput(&a, idb.node_id(), DIRECT_BYTES).await;
        let relayed = channel_throughput(&c, idb.node_id(), RELAY_BYTES).await;
        assert!(matches!(
            c.path_to(idb.node_id()),
            Some(PathKind::Relayed { .. })
        ));
        if std::env::var_os("FABRIC_BENCH_STATS").is_some() {
            eprintln!(
                "inner C->B: {:#?}",
                c.connection_stats(idb.node_id()).map(|s| s.path)
            );
            eprintln!("relay R data path: {:#?}", r.relay_stats());
            eprintln!(
                "direct A->B: {:#?}",
                a.connection_stats(idb.node_id()).map(|s| s.path)
            );
        }
        let setup_direct = setup_times(&a, idb.node_id(), false).await;
        let setup_relayed = setup_times(&c, idb.node_id(), true).await;

        println!();
        println!("fabric transport benchmark (loopback, 2 worker threads, {RUNS} runs, median)");
        println!("{:-<78}", "");
        println!("{:<44} {:>14} {:>16}", "measure", "value", "goal");
        println!("{:-<78}", "");
        println!(
            "{:<44} {:>10.0} MiB/s {:>16}",
            "raw quinn stream throughput", raw, ""
        );
        println!(
            "{:<44} {:>10.0} MiB/s {:>16}",
            "fabric channel throughput (direct)", direct, ""
        );
        println!(
            "{:<44} {:>14.2} {:>16}",
            "channel / raw quinn",
            direct / raw,
            ">= 0.95"
        );
        println!(
            "{:<44} {:>10.0} MiB/s {:>16}",
            "fabric channel throughput (relayed)", relayed, ""
        );
        println!(
            "{:<44} {:>14.2} {:>16}",
            "relayed / direct",
            relayed / direct,
            ">= 0.60"
        );
        println!(
            "{:<44} {:>11.2} ms {:>16}",
            "connection setup direct, median",
            median(setup_direct.clone()),
            ""
        );
        println!(
            "{:<44} {:>11.2} ms {:>16}",
            "connection setup direct, p99",
            p99(setup_direct),
            ""
        );
        println!(
            "{:<44} {:>11.2} ms {:>16}",
            "connection setup relayed, median",
            median(setup_relayed.clone()),
            ""
        );
        println!(
            "{:<44} {:>11.2} ms {:>16}",
            "connection setup relayed, p99",
            p99(setup_relayed),
            ""
        );
        println!("{:-<78}", "");
        println!(
            "total bench time {:.1} s",
            bench_start.elapsed().as_secs_f64()
        );

        for t in [&a, &b, &c, &r] {
            t.shutdown().await;
        }
    });
}
