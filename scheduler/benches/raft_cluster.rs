//! Control-plane benchmarks on a 3-node in-process cluster (real TCP on 127.0.0.1, real redb
//! files with fsync): committed commands/s with 1 and 64 concurrent proposers, commit latency
//! percentiles, and failover time (kill the leader → first commit under the new leader).
//!
//! Run: `cargo bench -p arbor-scheduler --bench raft_cluster`. Percentiles and the failover
//! median are printed to stderr next to criterion's report.

use arbor_latency::Latencies;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use arbor_scheduler::{Command, RaftHandle};
use common::BenchCluster;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

static SEQ: AtomicU64 = AtomicU64::new(0);

fn cmd() -> Command {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    Command::KvPut {
        key: format!("k{}", n % 1024),
        value: n.to_string(),
    }
}

/// Runs `total` proposals from `proposers` concurrent tasks on the leader; returns the
/// elapsed time and every commit latency.
async fn run(h: &RaftHandle, proposers: u64, total: u64) -> (Duration, Vec<Duration>) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..proposers {
        let h = h.clone();
        let n = total / proposers + u64::from(p < total % proposers);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let t = Instant::now();
                h.propose(cmd()).await.expect("commit");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (start.elapsed(), all)
}

fn throughput(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let cluster = rt.block_on(BenchCluster::start());
    let leader = rt.block_on(cluster.leader());
    let h = cluster.handle(leader);
    for proposers in [1u64, 64] {
        // Latency percentiles over a fixed run, reported beside criterion's throughput.
        let total = if proposers == 1 { 1_000 } else { 20_000 };
        let (elapsed, lat) = rt.block_on(run(&h, proposers, total));
        let lat: Latencies = lat.into_iter().collect();
        eprintln!(
            "raft_cluster/{proposers} proposers: {total} commits in {elapsed:.2?} = {:.0} commits/s; latency p50 {:.2?} p99 {:.2?} max {:.2?}",
            total as f64 / elapsed.as_secs_f64(),
            lat.quantile(0.50),
            lat.quantile(0.99),
            lat.max()
        );
        let mut g = c.benchmark_group("raft_commit");
        g.throughput(Throughput::Elements(1));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(5));
        g.bench_function(format!("{proposers}_proposers"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let h = h.clone();
                async move { run(&h, proposers.min(iters), iters).await.0 }
            })
        });
        g.finish();
    }
    rt.block_on(async move {
        for (_, n) in cluster.nodes {
            n.shutdown().await;
        }
    });
}

fn failover(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let mut cluster = rt.block_on(BenchCluster::start());
    let trials = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let mut g = c.benchmark_group("raft_failover");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(20);
    g.warm_up_time(Duration::from_millis(1));
    g.measurement_time(Duration::from_secs(1));
    let t2 = trials.clone();
    g.bench_function("kill_leader_to_first_commit", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let d = rt.block_on(async {
                    let leader = cluster.leader().await;
                    cluster.handle(leader).propose(cmd()).await.unwrap();
                    let other = (1..=3).find(|i| *i != leader).unwrap();
                    let h = cluster.handle(other);
                    let node = cluster.nodes.remove(&leader).unwrap();
                    let t = Instant::now();
                    node.kill().await;
                    loop {
                        if h.propose(cmd()).await.is_ok() {
                            break;
                        }
                    }
                    let d = t.elapsed();
                    cluster.restart(leader).await;
                    // Let the restarted node catch up before the next trial.
                    let commit = h.status().await.unwrap().commit;
                    while cluster.handle(leader).status().await.unwrap().applied < commit {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    d
                });
                t2.lock().unwrap().push(d);
                total += d;
            }
            total
        })
    });
    g.finish();
    let t: Latencies = trials.lock().unwrap().iter().collect();
    eprintln!(
        "raft_failover: {} trials, median {:.0?}, p90 {:.0?}, min {:.0?}, max {:.0?}",
        t.len(),
        t.quantile(0.5),
        t.quantile(0.9),
        t.min(),
        t.max()
    );
    rt.block_on(async move {
        for (_, n) in cluster.nodes {
            n.shutdown().await;
        }
    });
}

criterion_group!(benches, throughput, failover);
criterion_main!(benches);
