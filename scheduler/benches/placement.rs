//! Placement decisions per second of the pure algorithm: 10,000 replicas on 1,000 nodes.
//!
//! Criterion reports throughput in elements/s, and one element is one replica decided
//! (placed or left pending). `place` is single-threaded, so this is one core's rate.

use std::collections::BTreeSet;
use std::hint::black_box;

use arbor_scheduler::placement::{
    GpuDevice, LabelConstraint, NodeView, ReplicaRequest, Strategy, place,
};
use arbor_scheduler::resources::{Bytes, GpuAmount, Millicores, Resources};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const NODES: u64 = 1_000;
const REPLICAS: u32 = 10_000;

/// 1,000 nodes in 4 zones; one in ten has 8 GPUs; a few are down or draining; half already
/// carry some load.
fn cluster() -> Vec<NodeView> {
    (1..=NODES)
        .map(|id| {
            let gpus = if id.is_multiple_of(10) { 8 } else { 0 };
            let mut node = NodeView {
                id,
                capacity: Resources {
                    cpu: Millicores::cores(32),
                    memory: Bytes::gib(128),
                    gpu: GpuAmount::whole(gpus),
                    gpu_memory: Bytes::gib(80 * gpus),
                    ..Resources::default()
                },
                ready: !id.is_multiple_of(97),
                draining: id.is_multiple_of(101),
                gpus: (0..gpus as u32)
                    .map(|index| GpuDevice {
                        index,
                        free: GpuAmount::ONE,
                    })
                    .collect(),
                ..NodeView::default()
            };
            node.labels.insert("zone".into(), format!("z{}", id % 4));
            if id.is_multiple_of(2) {
                node.used.cpu = Millicores((id * 37) % 16_000);
                node.used.memory = Bytes::mib((id * 53) % 65_536);
            }
            node
        })
        .collect()
}

/// `deployments` deployments sharing 10,000 replicas, with a mix of shapes: spread and pack,
/// zone constraints, anti-affinity, whole and fractional GPUs.
fn requests(deployments: u32) -> Vec<ReplicaRequest> {
    let per = REPLICAS / deployments;
    let mut out = Vec::with_capacity(REPLICAS as usize);
    for d in 0..deployments {
        let mut resources = Resources {
            cpu: Millicores(100 + u64::from(d % 8) * 250),
            memory: Bytes::mib(64 << (d % 6)),
            ..Resources::default()
        };
        match d % 10 {
            3 => resources.gpu = GpuAmount::ONE,
            7 => resources.gpu = GpuAmount::from_hundredths(25),
            _ => {}
        }
        let constraints = match d % 5 {
            1 => vec![LabelConstraint::Equal {
                key: "zone".into(),
                value: format!("z{}", d % 4),
            }],
            2 => vec![LabelConstraint::In {
                key: "zone".into(),
                values: BTreeSet::from(["z0".into(), "z2".into()]),
            }],
            _ => Vec::new(),
        };
        for replica in 0..per {
            out.push(ReplicaRequest {
                deployment: format!("deploy-{d}"),
                replica,
                resources: resources.clone(),
                constraints: constraints.clone(),
                strategy: if d.is_multiple_of(2) {
                    Strategy::Spread
                } else {
                    Strategy::Pack
                },
                anti_affinity: d % 4 == 0,
                gang: (d % 25 == 5).then(|| format!("gang-{d}")),
            });
        }
    }
    out
}

fn bench_placement(c: &mut Criterion) {
    let nodes = cluster();
    let mut group = c.benchmark_group("place_1000_nodes");
    group.throughput(Throughput::Elements(u64::from(REPLICAS)));
    group.sample_size(20);
    for deployments in [100u32, 10_000] {
        let reqs = requests(deployments);
        let plan = place(&nodes, &reqs);
        eprintln!(
            "{deployments} deployments x {} replicas: {} placed, {} pending",
            REPLICAS / deployments,
            plan.placements.len(),
            plan.pending.len()
        );
        group.bench_function(format!("{deployments}_deployments"), |b| {
            b.iter(|| place(black_box(&nodes), black_box(&reqs)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_placement);
criterion_main!(benches);
