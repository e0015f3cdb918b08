//! Committed placements per second through Raft: the reconciler on the leader of a 3-node
//! in-process control plane (real TCP, redb with fsync) places a 10,000-replica deployment
//! on 1,000 registered nodes; the clock runs from the deployment's commit to the commit of
//! its last placement, on the leader.
//!
//! Run: `cargo bench -p arbor-scheduler --bench placements_raft`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arbor_scheduler::placement::Strategy;
use arbor_scheduler::resources::{Bytes, Millicores, Resources};
use arbor_scheduler::state::DeploymentSpec;
use arbor_scheduler::{Command, Reconciler, ReconcilerConfig, StateEvent};
use common::BenchCluster;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

const NODES: u64 = 1_000;
const REPLICAS: u32 = 10_000;

fn spec(name: &str) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        kind: "echo".into(),
        replicas: REPLICAS,
        resources: Resources {
            cpu: Millicores(100),
            memory: Bytes::mib(64),
            ..Default::default()
        },
        strategy: Strategy::Spread,
        constraints: vec![],
        anti_affinity: false,
        max_unavailable: 1,
        version: String::new(),
        config: String::new(),
        collection: None,
        idempotent: false,
        autoscaling: None,
    }
}

fn placements(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let cluster = rt.block_on(BenchCluster::start());
    let leader = rt.block_on(cluster.leader());
    let h = cluster.handle(leader);
    rt.block_on(async {
        for id in 1..=NODES {
            h.propose(Command::RegisterNode {
                id,
                address: format!("10.0.{}.{}:7000", id / 250, id % 250),
                capacity: Resources {
                    cpu: Millicores(64_000),
                    memory: Bytes::gib(256),
                    ..Default::default()
                },
                labels: BTreeMap::new(),
            })
            .await
            .unwrap();
        }
    });
    let reconcilers: Vec<Reconciler> = rt.block_on(async {
        cluster
            .nodes
            .values()
            .map(|n| {
                // No liveness changes during the bench: the virtual nodes never answer raft.
                let config = ReconcilerConfig {
                    node_timeout: Duration::from_secs(3600),
                    ..Default::default()
                };
                Reconciler::spawn(n.handle(), config)
            })
            .collect()
    });

    let mut round = 0u64;
    let mut g = c.benchmark_group("raft_placements");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(1));
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(u64::from(REPLICAS)));
    g.bench_function("10000_replicas_on_1000_nodes", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let name = format!("d{round}");
                total += rt.block_on(async {
                    let mut events = h.subscribe();
                    let start = Instant::now();
                    h.propose(Command::CreateDeployment(spec(&name)))
                        .await
                        .unwrap();
                    let mut placed = 0usize;
                    while placed < REPLICAS as usize {
                        match events.recv().await {
                            Ok(StateEvent::Applied {
                                command, result, ..
                            }) if result.is_ok() => {
                                if let Command::PlaceActors { decisions } = command.as_ref() {
                                    placed += decisions.len();
                                }
                            }
                            Ok(_) => {}
                            Err(_) => {
                                let name = name.clone();
                                placed = h
                                    .read_local(move |s| {
                                        s.placements
                                            .values()
                                            .filter(|p| p.deployment == name)
                                            .count()
                                    })
                                    .await
                                    .unwrap();
                            }
                        }
                    }
                    let took = start.elapsed();
                    h.propose(Command::DeleteDeployment { name }).await.unwrap();
                    took
                });
            }
            total
        })
    });
    g.finish();
    for r in reconcilers {
        r.stop();
    }
    rt.block_on(async move {
        for (_, n) in cluster.nodes {
            n.shutdown().await;
        }
    });
}

criterion_group!(benches, placements);
criterion_main!(benches);
