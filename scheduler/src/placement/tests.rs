use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::{
    Just, ProptestConfig, any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest,
};
use proptest::strategy::Strategy as Gen;
use proptest::test_runner::TestCaseError;

use super::*;
use crate::resources::{Bytes, Millicores};

fn node(id: NodeId, cpu_cores: u64, mem_gib: u64) -> NodeView {
    NodeView {
        id,
        capacity: Resources {
            cpu: Millicores::cores(cpu_cores),
            memory: Bytes::gib(mem_gib),
            ..Resources::default()
        },
        ready: true,
        ..NodeView::default()
    }
}

fn gpu_node(id: NodeId, devices: u32) -> NodeView {
    let mut n = node(id, 16, 64);
    n.capacity.gpu = GpuAmount::whole(u64::from(devices));
    n.gpus = (0..devices)
        .map(|index| GpuDevice {
            index,
            free: GpuAmount::ONE,
        })
        .collect();
    n
}

fn request(deployment: &str, replica: u32, cpu_m: u64, mem_mib: u64) -> ReplicaRequest {
    ReplicaRequest {
        deployment: deployment.to_owned(),
        replica,
        resources: Resources {
            cpu: Millicores(cpu_m),
            memory: Bytes::mib(mem_mib),
            ..Resources::default()
        },
        constraints: Vec::new(),
        strategy: Strategy::Spread,
        anti_affinity: false,
        gang: None,
    }
}

fn replicas(deployment: &str, n: u32, cpu_m: u64, mem_mib: u64) -> Vec<ReplicaRequest> {
    (0..n)
        .map(|i| request(deployment, i, cpu_m, mem_mib))
        .collect()
}

fn per_node(plan: &PlacementPlan) -> BTreeMap<NodeId, usize> {
    let mut counts = BTreeMap::new();
    for p in &plan.placements {
        *counts.entry(p.node).or_default() += 1;
    }
    counts
}

#[test]
fn spread_puts_six_echo_replicas_two_per_node_on_three_nodes() {
    let nodes = vec![node(1, 4, 8), node(2, 4, 8), node(3, 4, 8)];
    let plan = place(&nodes, &replicas("echo", 6, 100, 64));
    assert!(plan.pending.is_empty());
    assert_eq!(per_node(&plan), BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
    let order: Vec<NodeId> = plan.placements.iter().map(|p| p.node).collect();
    assert_eq!(order, [1, 2, 3, 1, 2, 3], "ties go to the lowest node id");
}

#[test]
fn spread_prefers_the_least_loaded_node() {
    let mut nodes = vec![node(1, 4, 8), node(2, 4, 8), node(3, 4, 8)];
    nodes[0].used.cpu = Millicores::cores(3);
    nodes[2].used.cpu = Millicores::cores(1);
    let plan = place(&nodes, &replicas("web", 1, 100, 64));
    assert_eq!(plan.placements[0].node, 2);
}

#[test]
fn pack_fills_the_most_loaded_node_that_fits_first() {
    let mut nodes = vec![node(1, 4, 8), node(2, 4, 8), node(3, 4, 8)];
    nodes[1].used.cpu = Millicores(1000);
    let mut reqs = replicas("batch", 5, 1000, 64);
    for r in &mut reqs {
        r.strategy = Strategy::Pack;
    }
    let plan = place(&nodes, &reqs);
    assert!(plan.pending.is_empty());
    let order: Vec<NodeId> = plan.placements.iter().map(|p| p.node).collect();
    // Node 2 is fullest: it takes 3 more cores, then the lowest id among the empty ones.
    assert_eq!(order, [2, 2, 2, 1, 1]);
}

#[test]
fn pack_skips_a_full_node_for_the_next_fullest() {
    let mut nodes = vec![node(1, 4, 8), node(2, 4, 8), node(3, 4, 8)];
    nodes[0].used.cpu = Millicores(3900); // fullest, but 100m left is too little
    nodes[2].used.cpu = Millicores(2000);
    let mut reqs = replicas("batch", 2, 1000, 64);
    for r in &mut reqs {
        r.strategy = Strategy::Pack;
    }
    let plan = place(&nodes, &reqs);
    let order: Vec<NodeId> = plan.placements.iter().map(|p| p.node).collect();
    assert_eq!(order, [3, 3]);
}

#[test]
fn never_places_on_unready_or_draining_nodes() {
    let mut nodes = vec![node(1, 4, 8), node(2, 4, 8), node(3, 4, 8)];
    nodes[0].ready = false;
    nodes[1].draining = true;
    let plan = place(&nodes, &replicas("echo", 3, 100, 64));
    assert_eq!(per_node(&plan), BTreeMap::from([(3, 3)]));
}

#[test]
fn label_constraints_select_nodes() {
    let mut nodes: Vec<NodeView> = (1..=4).map(|id| node(id, 4, 8)).collect();
    nodes[0].labels.insert("zone".into(), "eu".into());
    nodes[1].labels.insert("zone".into(), "us".into());
    nodes[2].labels.insert("zone".into(), "ap".into());
    nodes[2].labels.insert("ssd".into(), "yes".into());
    let with = |c: LabelConstraint| {
        let mut r = request("x", 0, 100, 64);
        r.constraints = vec![c];
        let plan = place(&nodes, &[r]);
        plan.placements.first().map(|p| p.node)
    };
    let key = || "zone".to_owned();
    assert_eq!(
        with(LabelConstraint::Equal {
            key: key(),
            value: "us".into()
        }),
        Some(2)
    );
    assert_eq!(
        with(LabelConstraint::NotEqual {
            key: key(),
            value: "eu".into()
        }),
        Some(2),
        "node 4 has no zone and also qualifies, but 2 has the lower id"
    );
    assert_eq!(
        with(LabelConstraint::In {
            key: key(),
            values: BTreeSet::from(["ap".into(), "mars".into()])
        }),
        Some(3)
    );
    assert_eq!(with(LabelConstraint::Exists { key: "ssd".into() }), Some(3));
    assert_eq!(
        with(LabelConstraint::Equal {
            key: key(),
            value: "mars".into()
        }),
        None
    );
}

#[test]
fn anti_affinity_keeps_replicas_on_distinct_nodes() {
    let mut nodes = vec![node(1, 4, 8), node(2, 4, 8), node(3, 4, 8)];
    nodes[2].hosted.insert("db".into());
    let mut reqs = replicas("db", 3, 100, 64);
    for r in &mut reqs {
        r.anti_affinity = true;
        r.strategy = Strategy::Pack;
    }
    let plan = place(&nodes, &reqs);
    assert_eq!(per_node(&plan), BTreeMap::from([(1, 1), (2, 1)]));
    assert_eq!(plan.pending.len(), 1);
    assert_eq!(
        plan.pending[0].reason.to_string(),
        "needs a node without a replica of db (anti-affinity); every ready node that matches \
         already runs one (3 nodes: 3 already run a replica)"
    );
}

#[test]
fn whole_gpus_get_devices_nobody_else_holds() {
    let nodes = vec![gpu_node(1, 2), gpu_node(2, 2)];
    let mut reqs = replicas("train", 5, 100, 64);
    for r in &mut reqs {
        r.resources.gpu = GpuAmount::ONE;
        r.strategy = Strategy::Pack;
    }
    let plan = place(&nodes, &reqs);
    let held: Vec<(NodeId, u32)> = plan
        .placements
        .iter()
        .map(|p| {
            assert_eq!(p.gpus.len(), 1);
            assert_eq!(p.gpus[0].amount, GpuAmount::ONE);
            (p.node, p.gpus[0].index)
        })
        .collect();
    assert_eq!(held, [(1, 0), (1, 1), (2, 0), (2, 1)]);
    assert_eq!(plan.pending.len(), 1);
    assert_eq!(
        plan.pending[0].reason.to_string(),
        "needs gpu=1; no ready node has a free GPU (2 nodes: 2 lack gpu)"
    );
}

#[test]
fn fractional_gpus_share_a_device_up_to_one() {
    let nodes = vec![gpu_node(1, 2)];
    let mut reqs = replicas("embed", 5, 100, 64);
    for r in &mut reqs {
        r.resources.gpu = GpuAmount::from_hundredths(40);
    }
    let plan = place(&nodes, &reqs);
    let devices: Vec<u32> = plan.placements.iter().map(|p| p.gpus[0].index).collect();
    // Best fit: the partly used device fills before the fresh one is broken into.
    assert_eq!(devices, [0, 0, 1, 1]);
    assert_eq!(plan.pending.len(), 1);
    assert!(
        plan.pending[0]
            .reason
            .to_string()
            .starts_with("needs gpu=0.4; no ready node has a free GPU (1 node: 1 have GPU room only in fragments)"),
        "{}",
        plan.pending[0].reason
    );
}

#[test]
fn one_and_a_half_gpus_take_a_whole_device_and_half_of_another() {
    let mut nodes = vec![gpu_node(1, 3)];
    nodes[0].gpus[0].free = GpuAmount::from_hundredths(50);
    nodes[0].used.gpu = GpuAmount::from_hundredths(50);
    let mut r = request("big", 0, 100, 64);
    r.resources.gpu = GpuAmount::from_hundredths(150);
    let plan = place(&nodes, &[r]);
    assert_eq!(
        plan.placements[0].gpus,
        [
            GpuShare {
                index: 1,
                amount: GpuAmount::ONE
            },
            GpuShare {
                index: 0,
                amount: GpuAmount::from_hundredths(50)
            }
        ]
    );
}

#[test]
fn gpu_pending_reason_reads_like_the_issue() {
    let mut nodes = vec![node(1, 4, 8), node(2, 4, 8), node(3, 4, 8)];
    nodes[2].ready = false;
    let mut r = request("llm", 0, 100, 64);
    r.resources.gpu = GpuAmount::ONE;
    let plan = place(&nodes, &[r]);
    assert!(plan.placements.is_empty());
    assert_eq!(
        plan.pending[0].reason.to_string(),
        "needs gpu=1; no ready node has a free GPU (3 nodes: 2 lack gpu, 1 not ready)"
    );
}

#[test]
fn pending_reasons_for_other_filters() {
    let mut nodes = vec![node(1, 1, 8), node(2, 1, 8)];
    nodes[0].labels.insert("zone".into(), "eu".into());
    let reason =
        |r: ReplicaRequest, nodes: &[NodeView]| place(nodes, &[r]).pending[0].reason.to_string();

    assert_eq!(
        reason(request("w", 0, 2000, 64), &nodes),
        "needs cpu=2; no ready node has that much free cpu (2 nodes: 2 lack cpu)"
    );
    let mut r = request("w", 0, 2000, 64);
    r.constraints = vec![LabelConstraint::Equal {
        key: "zone".into(),
        value: "eu".into(),
    }];
    assert_eq!(
        reason(r.clone(), &nodes),
        "needs cpu=2; no ready node matching the constraints has that much free cpu \
         (2 nodes: 1 fail zone=eu, 1 lack cpu)"
    );
    r.resources.cpu = Millicores(100);
    r.constraints[0] = LabelConstraint::Exists { key: "gpu".into() };
    assert_eq!(
        reason(r, &nodes),
        "needs label gpu; no ready node matches (2 nodes: 2 fail label gpu)"
    );
    // Each node counts under its first failing resource: cpu for one, memory for the other.
    assert_eq!(
        reason(
            request("w", 0, 2000, 16 * 1024),
            &[node(1, 1, 64), node(2, 4, 8)]
        ),
        "needs cpu=2 memory=16GiB; no ready node has room for it (2 nodes: 1 lack cpu, 1 lack \
         memory)"
    );
    let mut r = request("w", 0, 100, 64);
    r.resources.custom.insert("fpga".into(), 1);
    assert_eq!(
        reason(r, &nodes),
        "needs fpga=1; no ready node has that much free fpga (2 nodes: 2 lack fpga)"
    );
    let mut drained = nodes.clone();
    drained[0].draining = true;
    drained[1].ready = false;
    assert_eq!(
        reason(request("w", 0, 100, 64), &drained),
        "needs cpu=100m memory=64MiB; no node is ready and undrained (2 nodes: 1 not ready, 1 \
         draining)"
    );
    assert_eq!(
        reason(request("w", 0, 100, 64), &[]),
        "needs cpu=100m memory=64MiB; no node has registered"
    );
}

#[test]
fn more_distinct_constraints_than_indexes_still_match_labels() {
    let zones = MAX_INDEXES as u64 + 10;
    let nodes: Vec<NodeView> = (0..zones)
        .map(|z| {
            let mut n = node(z + 1, 4, 8);
            n.labels.insert("zone".into(), format!("z{z}"));
            n
        })
        .collect();
    // Reverse order, so the unconstrained index (by id) would put most of them wrong.
    let requests: Vec<ReplicaRequest> = (0..zones)
        .rev()
        .map(|z| {
            let mut r = request(&format!("d{z}"), 0, 100, 64);
            r.constraints = vec![LabelConstraint::Equal {
                key: "zone".into(),
                value: format!("z{z}"),
            }];
            r
        })
        .collect();
    let plan = place(&nodes, &requests);
    assert!(plan.pending.is_empty());
    for p in &plan.placements {
        assert_eq!(format!("d{}", p.node - 1), p.deployment);
    }
}

#[test]
fn custom_resources_are_never_overcommitted() {
    let mut nodes = vec![node(1, 4, 8), node(2, 4, 8)];
    nodes[1].capacity.custom.insert("fpga".into(), 2);
    nodes[1].used.custom.insert("fpga".into(), 1);
    let mut reqs = replicas("f", 2, 100, 64);
    for r in &mut reqs {
        r.resources.custom.insert("fpga".into(), 1);
    }
    let plan = place(&nodes, &reqs);
    assert_eq!(per_node(&plan), BTreeMap::from([(2, 1)]));
    assert_eq!(plan.pending.len(), 1);
}

#[test]
fn a_gang_that_fits_is_placed_whole() {
    let nodes = vec![gpu_node(1, 2), gpu_node(2, 2)];
    let mut reqs = replicas("trainer", 4, 100, 64);
    for r in &mut reqs {
        r.resources.gpu = GpuAmount::ONE;
        r.gang = Some("run-7".into());
    }
    let plan = place(&nodes, &reqs);
    assert_eq!(plan.placements.len(), 4);
    assert!(plan.pending.is_empty());
}

#[test]
fn a_gang_that_does_not_fit_places_nothing_and_frees_what_it_tried() {
    let nodes = vec![gpu_node(1, 2), gpu_node(2, 2)];
    let mut reqs = replicas("trainer", 5, 100, 64);
    for r in &mut reqs {
        r.resources.gpu = GpuAmount::ONE;
        r.gang = Some("run-8".into());
    }
    // After the failed gang, four single-GPU replicas still find all four devices free.
    let mut after = replicas("infer", 4, 100, 64);
    for r in &mut after {
        r.resources.gpu = GpuAmount::ONE;
    }
    reqs.extend(after);
    let plan = place(&nodes, &reqs);
    assert_eq!(plan.pending.len(), 5);
    assert!(plan.pending.iter().all(|p| p.deployment == "trainer"));
    assert_eq!(
        plan.pending[0].reason.to_string(),
        "gang run-8 placed nothing: replica 4 of trainer needs gpu=1; no ready node has a free \
         GPU (2 nodes: 2 lack gpu)"
    );
    assert_eq!(plan.placements.len(), 4);
    assert!(plan.placements.iter().all(|p| p.deployment == "infer"));
}

#[test]
fn gang_members_need_not_be_contiguous() {
    let nodes = vec![node(1, 2, 8)];
    let mut reqs = vec![
        request("a", 0, 1000, 64),
        request("b", 0, 500, 64),
        request("a", 1, 1000, 64),
    ];
    reqs[0].gang = Some("g".into());
    reqs[2].gang = Some("g".into());
    let plan = place(&nodes, &reqs);
    // The gang goes first (at its first member's position) and takes both cores.
    assert_eq!(plan.placements.len(), 2);
    assert!(plan.placements.iter().all(|p| p.deployment == "a"));
    assert_eq!(plan.pending.len(), 1);
    assert_eq!(plan.pending[0].deployment, "b");
}

#[test]
fn admit_rejects_stale_decisions_and_leaves_the_node_unchanged() {
    let mut n = gpu_node(1, 2);
    n.capacity.cpu = Millicores::cores(1);
    let mut r = request("train", 0, 800, 64);
    r.resources.gpu = GpuAmount::ONE;
    let one = |index| GpuShare {
        index,
        amount: GpuAmount::ONE,
    };
    n.admit(&r, &[one(0)]).unwrap();
    assert_eq!(n.used.cpu, Millicores(800));
    assert_eq!(n.gpus[0].free, GpuAmount::ZERO);
    assert!(n.hosted.contains("train"));

    let before = n.clone();
    // A second decision made from the same old snapshot no longer fits.
    assert_eq!(
        n.admit(&r, &[one(1)]),
        Err(Rejection::Insufficient(ResourceKind::Cpu))
    );
    r.resources.cpu = Millicores(100);
    // Device 0 is held whole by the first replica.
    assert_eq!(
        n.admit(&r, &[one(0)]),
        Err(Rejection::GpuAssignment { index: Some(0) })
    );
    assert_eq!(
        n.admit(&r, &[one(7)]),
        Err(Rejection::GpuAssignment { index: Some(7) })
    );
    // One GPU split in halves over two devices is not the shape placement gives.
    let half = |index| GpuShare {
        index,
        amount: GpuAmount::from_hundredths(50),
    };
    assert_eq!(
        n.admit(&r, &[half(0), half(1)]),
        Err(Rejection::GpuAssignment { index: None })
    );
    assert_eq!(n, before);
    assert_eq!(
        Rejection::GpuAssignment { index: Some(0) }.to_string(),
        "lacks the share of GPU device 0 assigned"
    );
    n.draining = true;
    assert_eq!(n.admit(&r, &[one(1)]), Err(Rejection::Draining));
    n.draining = false;
    r.anti_affinity = true;
    assert_eq!(n.admit(&r, &[one(1)]), Err(Rejection::AntiAffinity));
    r.anti_affinity = false;
    n.admit(&r, &[one(1)]).unwrap();
}

#[test]
fn label_constraint_and_strategy_serde_forms() {
    let c: LabelConstraint =
        serde_json::from_str(r#"{"op":"in","key":"zone","values":["a","b"]}"#).unwrap();
    assert_eq!(c.to_string(), "zone in (a, b)");
    let c: LabelConstraint =
        toml::from_str("op = \"not_equal\"\nkey = \"k\"\nvalue = \"v\"").unwrap();
    assert_eq!(c.to_string(), "k!=v");
    assert!(serde_json::from_str::<LabelConstraint>(r#"{"op":"near","key":"z"}"#).is_err());
    let s: Strategy = serde_json::from_str("\"pack\"").unwrap();
    assert_eq!(s, Strategy::Pack);
}

// ---------------------------------------------------------------- properties

fn arb_node(id: NodeId) -> impl Gen<Value = NodeView> {
    (
        0u64..4000,
        0u64..8,
        proptest::collection::vec(0u64..=100, 0..4),
        0u64..3,
        prop::option::of(0usize..3),
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.1),
        proptest::collection::btree_set(0usize..3, 0..2),
        0u64..3000,
    )
        .prop_map(
            move |(cpu, mem, gpu_free, fpga, zone, ready, draining, hosted, used_cpu)| {
                let gpus: Vec<GpuDevice> = gpu_free
                    .iter()
                    .enumerate()
                    .map(|(i, &f)| GpuDevice {
                        index: i as u32,
                        free: GpuAmount::from_hundredths(f),
                    })
                    .collect();
                let gpu_total: u64 = gpu_free.len() as u64 * 100;
                let gpu_free_sum: u64 = gpu_free.iter().sum();
                let mut view = NodeView {
                    id,
                    capacity: Resources {
                        cpu: Millicores(cpu),
                        memory: Bytes::gib(mem),
                        gpu: GpuAmount::from_hundredths(gpu_total),
                        ..Resources::default()
                    },
                    used: Resources {
                        cpu: Millicores(used_cpu),
                        gpu: GpuAmount::from_hundredths(gpu_total - gpu_free_sum),
                        ..Resources::default()
                    },
                    ready,
                    draining,
                    gpus,
                    hosted: hosted.iter().map(|d| format!("d{d}")).collect(),
                    ..NodeView::default()
                };
                if fpga > 0 {
                    view.capacity.custom.insert("fpga".into(), fpga);
                }
                if let Some(z) = zone {
                    view.labels.insert("zone".into(), format!("z{z}"));
                }
                view
            },
        )
}

fn arb_constraint() -> impl Gen<Value = LabelConstraint> {
    prop_oneof![
        (0u8..3).prop_map(|z| LabelConstraint::Equal {
            key: "zone".into(),
            value: format!("z{z}")
        }),
        (0u8..3).prop_map(|z| LabelConstraint::NotEqual {
            key: "zone".into(),
            value: format!("z{z}")
        }),
        proptest::collection::btree_set(0u8..3, 1..3).prop_map(|zs| LabelConstraint::In {
            key: "zone".into(),
            values: zs.iter().map(|z| format!("z{z}")).collect()
        }),
        Just(LabelConstraint::Exists { key: "zone".into() }),
    ]
}

/// Per deployment: resources, constraints, strategy, anti-affinity, gang.
fn arb_deployment() -> impl Gen<Value = (Resources, Vec<LabelConstraint>, Strategy, bool, bool)> {
    (
        0u64..1500,
        0u64..3,
        prop_oneof![Just(0u64), Just(100), Just(200), 1u64..100, 101u64..250],
        0u64..2,
        proptest::collection::vec(arb_constraint(), 0..2),
        prop_oneof![Just(Strategy::Spread), Just(Strategy::Pack)],
        any::<bool>(),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(cpu, mem, gpu, fpga, constraints, strategy, anti, gang)| {
            let mut resources = Resources {
                cpu: Millicores(cpu),
                memory: Bytes::gib(mem),
                gpu: GpuAmount::from_hundredths(gpu),
                ..Resources::default()
            };
            if fpga > 0 {
                resources.custom.insert("fpga".into(), fpga);
            }
            (resources, constraints, strategy, anti, gang)
        })
}

fn arb_input() -> impl Gen<Value = (Vec<NodeView>, Vec<ReplicaRequest>)> {
    arb_sized_input(7, 4, 25)
}

/// Up to `max_nodes - 1` nodes (ids scattered, not in input order), `max_deployments - 1`
/// deployment specs and `max_requests - 1` requests drawn from them.
fn arb_sized_input(
    max_nodes: usize,
    max_deployments: usize,
    max_requests: usize,
) -> impl Gen<Value = (Vec<NodeView>, Vec<ReplicaRequest>)> {
    let nodes = (1usize..max_nodes).prop_flat_map(|n| {
        (0..n)
            .map(|i| arb_node(i as NodeId * 7 % 101 + 1))
            .collect::<Vec<_>>()
    });
    let deployments = proptest::collection::vec(arb_deployment(), 1..max_deployments);
    (nodes, deployments)
        .prop_flat_map(move |(nodes, deployments)| {
            let d = deployments.len();
            let order = proptest::collection::vec(0..d, 1..max_requests);
            (Just(nodes), Just(deployments), order)
        })
        .prop_map(|(nodes, deployments, order)| {
            let mut next_replica = vec![0u32; deployments.len()];
            let requests = order
                .into_iter()
                .map(|d| {
                    let (resources, constraints, strategy, anti, gang) = &deployments[d];
                    next_replica[d] += 1;
                    ReplicaRequest {
                        deployment: format!("d{d}"),
                        replica: next_replica[d] - 1,
                        resources: resources.clone(),
                        constraints: constraints.clone(),
                        strategy: *strategy,
                        anti_affinity: *anti,
                        gang: gang.then(|| format!("g{d}")),
                    }
                })
                .collect();
            (nodes, requests)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn placement_keeps_every_promise((nodes, requests) in arb_input()) {
        let plan = place(&nodes, &requests);
        prop_assert_eq!(&plan, &place(&nodes, &requests), "deterministic");

        // Every request placed or pending exactly once.
        let mut seen: HashMap<(String, u32), usize> = HashMap::new();
        for p in &plan.placements {
            *seen.entry((p.deployment.clone(), p.replica)).or_default() += 1;
        }
        for p in &plan.pending {
            *seen.entry((p.deployment.clone(), p.replica)).or_default() += 1;
        }
        prop_assert_eq!(seen.len(), requests.len());
        prop_assert!(seen.values().all(|&n| n == 1));

        let by_key: HashMap<(String, u32), &ReplicaRequest> = requests
            .iter()
            .map(|r| ((r.deployment.clone(), r.replica), r))
            .collect();
        let by_id: HashMap<NodeId, &NodeView> = nodes.iter().map(|n| (n.id, n)).collect();

        // Sum what each node and each device received.
        let mut taken: HashMap<NodeId, Resources> = HashMap::new();
        let mut device_taken: HashMap<(NodeId, u32), u64> = HashMap::new();
        let mut dep_nodes: HashMap<(String, NodeId), usize> = HashMap::new();
        for p in &plan.placements {
            let r = by_key[&(p.deployment.clone(), p.replica)];
            let n = by_id[&p.node];
            prop_assert!(n.ready && !n.draining, "placed on unavailable node {}", n.id);
            for c in &r.constraints {
                prop_assert!(c.matches(&n.labels), "{} violates {}", n.id, c);
            }
            let t = taken.entry(p.node).or_default();
            *t = t.checked_add(&r.resources).unwrap();

            // GPU shares add up to the request, on distinct devices of this node.
            let sum: u64 = p.gpus.iter().map(|s| s.amount.hundredths()).sum();
            prop_assert_eq!(sum, r.resources.gpu.hundredths());
            let distinct: BTreeSet<u32> = p.gpus.iter().map(|s| s.index).collect();
            prop_assert_eq!(distinct.len(), p.gpus.len());
            let whole = p.gpus.iter().filter(|s| s.amount == GpuAmount::ONE).count() as u64;
            prop_assert_eq!(whole, r.resources.gpu.hundredths() / 100);
            for s in &p.gpus {
                prop_assert!(n.gpus.iter().any(|g| g.index == s.index));
                *device_taken.entry((p.node, s.index)).or_default() += s.amount.hundredths();
            }
            *dep_nodes.entry((p.deployment.clone(), p.node)).or_default() += 1;
        }

        // Never overcommits: what was taken fits in what was free.
        for (id, t) in &taken {
            let n = by_id[id];
            let free = n.capacity.saturating_sub(&n.used);
            prop_assert!(free.fits(t), "node {} overcommitted: free {} took {}", id, free, t);
        }
        // Device shares never exceed the device's free part, so a whole GPU is held alone.
        for ((id, index), amount) in &device_taken {
            let free = by_id[id].gpus.iter().find(|g| g.index == *index).unwrap().free;
            prop_assert!(*amount <= free.hundredths(), "device {}:{} over", id, index);
        }

        // Anti-affinity: one replica per node, none beside an existing one.
        for ((dep, id), count) in &dep_nodes {
            let anti = requests.iter().any(|r| &r.deployment == dep && r.anti_affinity);
            if anti {
                prop_assert_eq!(*count, 1, "{} twice on node {}", dep, id);
                prop_assert!(!by_id[id].hosted.contains(dep));
            }
        }

        // Gangs: all or nothing.
        let mut gang_placed: HashMap<&str, (usize, usize)> = HashMap::new();
        for r in &requests {
            if let Some(g) = &r.gang {
                let e = gang_placed.entry(g.as_str()).or_default();
                e.0 += 1;
                if plan.placements.iter().any(|p| p.deployment == r.deployment && p.replica == r.replica) {
                    e.1 += 1;
                }
            }
        }
        for (g, (members, placed)) in gang_placed {
            prop_assert!(placed == 0 || placed == members, "gang {} placed {}/{}", g, placed, members);
        }

        // Replayed in order through the state machine's re-check, every decision holds.
        let mut replay: HashMap<NodeId, NodeView> = nodes.iter().map(|n| (n.id, n.clone())).collect();
        for p in &plan.placements {
            let r = by_key[&(p.deployment.clone(), p.replica)];
            let admitted = replay.get_mut(&p.node).unwrap().admit(r, &p.gpus);
            prop_assert_eq!(admitted, Ok(()), "{}/{} on {}", &p.deployment, p.replica, p.node);
        }

        // Pending reasons account for every node.
        for p in &plan.pending {
            let cause = match &p.reason {
                PendingReason::NoFit(c) => c,
                PendingReason::Gang { cause, .. } => cause,
            };
            prop_assert_eq!(cause.nodes, nodes.len());
            prop_assert_eq!(cause.rejections.iter().map(|(_, n)| n).sum::<usize>(), nodes.len());
            prop_assert!(!p.reason.to_string().is_empty());
        }
    }

    /// A single non-gang request is pending only when no node could take it.
    #[test]
    fn a_lone_request_is_pending_only_when_nothing_fits((nodes, requests) in arb_input()) {
        let mut r = requests[0].clone();
        r.gang = None;
        let plan = place(&nodes, std::slice::from_ref(&r));
        let fits_somewhere = nodes.iter().any(|n| {
            n.ready
                && !n.draining
                && r.constraints.iter().all(|c| c.matches(&n.labels))
                && !(r.anti_affinity && n.hosted.contains(&r.deployment))
                && n.capacity.saturating_sub(&n.used).fits(&r.resources)
                && {
                    let devices: Vec<(u32, u64)> =
                        n.gpus.iter().map(|g| (g.index, g.free.hundredths())).collect();
                    r.resources.gpu.is_zero() || choose_gpus(&devices, r.resources.gpu.hundredths()).is_some()
                }
        });
        prop_assert_eq!(plan.placements.len() == 1, fits_somewhere);
    }
}

/// The same decisions made the slow, obvious way: every request scans every node and takes
/// the best slot. The cursor, the per-run rejection stamps and the unplaceable-shape memo of
/// `place` must never change a decision.
fn place_by_full_scan(nodes: &[NodeView], requests: &[ReplicaRequest]) -> PlacementPlan {
    let mut placer = Placer::new(nodes);
    let mut plan = PlacementPlan::default();
    for request in requests {
        let deployment = placer.deployment_id(&request.deployment);
        let best = (0..nodes.len())
            .filter(|&pos| check(&placer.nodes, &placer.hosted, pos, request, deployment).is_none())
            .min_by_key(|&pos| placer.slot(pos, request.strategy));
        match best {
            Some(pos) => {
                let placement = placer.assign(pos, request, deployment, None);
                plan.placements.push(placement);
            }
            None => plan.pending.push(pending(
                request,
                PendingReason::NoFit(placer.diagnose(request, deployment)),
            )),
        }
    }
    plan
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn fast_placement_matches_a_full_scan((nodes, mut requests) in arb_input()) {
        same_decisions(&nodes, &mut requests)?;
    }
}

fn same_decisions(
    nodes: &[NodeView],
    requests: &mut [ReplicaRequest],
) -> Result<(), TestCaseError> {
    for r in requests.iter_mut() {
        r.gang = None;
    }
    let (fast, slow) = (place(nodes, requests), place_by_full_scan(nodes, requests));
    prop_assert_eq!(&fast.placements, &slow.placements);
    // Reasons may differ in wording: a memoized one describes the state when its shape
    // first failed, and what it says stays true since free capacity only shrinks.
    let who = |plan: &PlacementPlan| -> Vec<(String, u32)> {
        plan.pending
            .iter()
            .map(|p| (p.deployment.clone(), p.replica))
            .collect()
    };
    prop_assert_eq!(who(&fast), who(&slow));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Longer runs on more nodes, where the cursor and the indexes have more to get wrong.
    #[test]
    fn fast_placement_matches_a_full_scan_at_scale(
        (nodes, mut requests) in arb_sized_input(60, 8, 300)
    ) {
        same_decisions(&nodes, &mut requests)?;
    }
}
