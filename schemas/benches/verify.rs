//! Single vs batch verification of 1,024 signed envelopes.
//!
//! Criterion measures both; afterwards a short side-by-side run prints
//! records/s and the batch/single ratio (goal: batch >= 1.8x single).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use fabric_schemas::accept::NothingHeld;
use fabric_schemas::keys::{generate_trust_root, TrustRootPlan};
use fabric_schemas::kinds::{ServiceRecordSpec, Spec};
use fabric_schemas::trust::Role;
use fabric_schemas::{accept, accept_batch, Envelope, Record, Scope, TrustAnchor};

const N: usize = 1024;
const NOW: i64 = 1_800_000_000;

fn fixture() -> (TrustAnchor, Vec<Vec<u8>>) {
    let (spec, keys) = generate_trust_root(&TrustRootPlan::single_keys(NOW + 86_400));
    let trust = TrustAnchor::from_spec(&spec).expect("trust root");
    let control = &keys
        .iter()
        .find(|k| k.role == Role::Control)
        .expect("control key")
        .key;
    let envelopes = (0..N)
        .map(|i| {
            let spec = Spec::ServiceRecord(ServiceRecordSpec {
                service: format!("svc-{i}"),
                providers: vec![format!("node-{i}"), format!("node-{}", i + 1)],
            });
            let rec = Record::new(&spec, &format!("svc-{i}"), 1, NOW, NOW + 3600, Scope::any())
                .expect("record");
            Envelope::sign(rec, &[control]).encode()
        })
        .collect();
    (trust, envelopes)
}

fn single(trust: &TrustAnchor, envs: &[Vec<u8>]) -> usize {
    envs.iter()
        .filter(|e| accept(trust, &NothingHeld, e, NOW).is_ok())
        .count()
}

fn batch(trust: &TrustAnchor, refs: &[&[u8]]) -> usize {
    accept_batch(trust, &NothingHeld, refs, NOW)
        .iter()
        .filter(|r| r.is_ok())
        .count()
}

fn bench(c: &mut Criterion) {
    let (trust, envs) = fixture();
    let refs: Vec<&[u8]> = envs.iter().map(Vec::as_slice).collect();
    let mut g = c.benchmark_group("verify_1024");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("single", |b| b.iter(|| black_box(single(&trust, &envs))));
    g.bench_function("batch", |b| b.iter(|| black_box(batch(&trust, &refs))));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = bench
}

fn best_of(rounds: usize, mut f: impl FnMut() -> usize) -> Duration {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(f(), N, "every envelope must verify");
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let (trust, envs) = fixture();
    let refs: Vec<&[u8]> = envs.iter().map(Vec::as_slice).collect();
    // Interleave the two so machine noise hits both alike.
    let mut s = Duration::MAX;
    let mut b = Duration::MAX;
    for _ in 0..5 {
        s = s.min(best_of(1, || single(&trust, &envs)));
        b = b.min(best_of(1, || batch(&trust, &refs)));
    }
    let rate = |d: Duration| N as f64 / d.as_secs_f64();
    println!();
    println!("| path   | 1,024 envelopes | records/s |");
    println!("|--------|-----------------|-----------|");
    println!("| single | {:>12.2?}    | {:>9.0} |", s, rate(s));
    println!("| batch  | {:>12.2?}    | {:>9.0} |", b, rate(b));
    println!();
    println!(
        "batch/single ratio: {:.2}x (goal >= 1.80x)",
        rate(b) / rate(s)
    );
}
