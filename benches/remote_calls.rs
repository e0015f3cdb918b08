//! Actor messages between two nodes over loopback: request/reply round trips (one caller and
//! 32 concurrent callers; p50, p99, calls/s) and one-way messages/s, through Arbor's link
//! layer and wire payloads over mutual TLS (the default) and in plain TCP (an insecure
//! loopback cluster), next to raw ractor_cluster: the cost of TLS, measured in one run.
//!
//! `cargo bench -p arbor-benches --bench remote_calls` prints a latency table first, then
//! criterion's figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor_actors::wire::Wire;
use arbor_benches::{EchoMsg, RawMsg, arbor_pair, raw_pair};
use arbor_latency::Latencies;
use criterion::{Criterion, Throughput};
use ractor::ActorRef;

const PAYLOAD: usize = 64;
const CALL_MS: u64 = 5_000;

async fn arbor_call(a: &ActorRef<EchoMsg>, payload: &[u8]) {
    let out = ractor::call_t!(a, EchoMsg::Echo, CALL_MS, Wire::new(payload.to_vec())).unwrap();
    assert_eq!(out.into_inner().unwrap().len(), payload.len());
}

async fn raw_call(a: &ActorRef<RawMsg>, payload: &[u8]) {
    let out = ractor::call_t!(a, RawMsg::Echo, CALL_MS, payload.to_vec()).unwrap();
    assert_eq!(out.len(), payload.len());
}

/// Latencies of `n` calls made by each of `callers` concurrent tasks; and calls/s overall.
async fn sample<F, Fut>(callers: usize, n: usize, call: F) -> (Latencies, f64)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = Instant::now();
                    call().await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Latencies::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    (all, rate)
}

fn report(name: &str, (lat, rate): (Latencies, f64)) {
    println!(
        "{name:<28} p50 {:>8.1} µs   p99 {:>8.1} µs   {:>9.0} calls/s",
        lat.quantile(0.5).as_secs_f64() * 1e6,
        lat.quantile(0.99).as_secs_f64() * 1e6,
        rate
    );
}

async fn one_way_arbor(a: &ActorRef<EchoMsg>, n: u64) -> f64 {
    let before = ractor::call_t!(a, EchoMsg::Seen, CALL_MS)
        .unwrap()
        .into_inner()
        .unwrap();
    let start = Instant::now();
    for i in 0..n {
        a.cast(EchoMsg::Count(Wire::new(i))).unwrap();
    }
    // The call travels behind the casts on the same link, so it returns once all arrived.
    let after = ractor::call_t!(a, EchoMsg::Seen, 60_000)
        .unwrap()
        .into_inner()
        .unwrap();
    assert_eq!(after - before, n);
    n as f64 / start.elapsed().as_secs_f64()
}

async fn one_way_raw(a: &ActorRef<RawMsg>, n: u64) -> f64 {
    let before = ractor::call_t!(a, RawMsg::Seen, CALL_MS).unwrap();
    let start = Instant::now();
    for i in 0..n {
        a.cast(RawMsg::Count(i)).unwrap();
    }
    let after = ractor::call_t!(a, RawMsg::Seen, 60_000).unwrap();
    assert_eq!(after - before, n);
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile_dir();
    let (_nodes, echo) = rt.block_on(arbor_pair(&dir, true));
    let (_plain_nodes, plain) = rt.block_on(arbor_pair(&dir, false));
    let (_servers, raw) = rt.block_on(raw_pair());
    let payload: Arc<[u8]> = vec![7u8; PAYLOAD].into();

    println!("remote round trips, {PAYLOAD}-byte payload, two nodes on loopback");
    for (callers, n) in [(1, 20_000), (32, 1_000)] {
        for (kind, target) in [("arbor tls  ", &echo), ("arbor plain", &plain)] {
            let (e, p) = (target.clone(), payload.clone());
            report(
                &format!("{kind} {callers:>2} caller(s)"),
                rt.block_on(sample(callers, n, move || {
                    let (e, p) = (e.clone(), p.clone());
                    async move { arbor_call(&e, &p).await }
                })),
            );
        }
        let (r, p) = (raw.clone(), payload.clone());
        report(
            &format!("raw         {callers:>2} caller(s)"),
            rt.block_on(sample(callers, n, move || {
                let (r, p) = (r.clone(), p.clone());
                async move { raw_call(&r, &p).await }
            })),
        );
    }
    let n = 200_000;
    println!(
        "arbor tls   one-way           {:>9.0} msgs/s",
        rt.block_on(one_way_arbor(&echo, n))
    );
    println!(
        "arbor plain one-way           {:>9.0} msgs/s",
        rt.block_on(one_way_arbor(&plain, n))
    );
    println!(
        "raw         one-way           {:>9.0} msgs/s",
        rt.block_on(one_way_raw(&raw, n))
    );

    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    let mut g = c.benchmark_group("remote_round_trip");
    g.throughput(Throughput::Elements(1));
    g.bench_function("arbor_tls", |b| {
        b.to_async(&rt).iter(|| arbor_call(&echo, &payload))
    });
    g.bench_function("arbor_plain", |b| {
        b.to_async(&rt).iter(|| arbor_call(&plain, &payload))
    });
    g.bench_function("raw_ractor_cluster", |b| {
        b.to_async(&rt).iter(|| raw_call(&raw, &payload))
    });
    g.finish();
    let mut g = c.benchmark_group("remote_one_way");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("arbor_tls", |b| {
        b.to_async(&rt).iter(|| one_way_arbor(&echo, 10_000))
    });
    g.bench_function("arbor_plain", |b| {
        b.to_async(&rt).iter(|| one_way_arbor(&plain, 10_000))
    });
    g.bench_function("raw_ractor_cluster", |b| {
        b.to_async(&rt).iter(|| one_way_raw(&raw, 10_000))
    });
    g.finish();
    c.final_summary();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("arbor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
