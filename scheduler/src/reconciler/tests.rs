//! The reconciler against a simulated cluster: commands applied through the real state
//! machine, node agents simulated by marking placements running.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::command::CommandOutcome;
use crate::placement::Strategy;
use crate::resources::{Bytes, GpuAmount, Millicores, Resources};
use crate::state::{DeploymentSpec, PlacementDecision, ReplicaSet, StatusUpdate};

fn cpu(millis: u64) -> Resources {
    Resources {
        cpu: Millicores(millis),
        memory: Bytes::mib(64),
        ..Default::default()
    }
}

fn cluster(nodes: u64, cores: u64) -> ClusterState {
    let mut s = ClusterState::default();
    for id in 1..=nodes {
        s.apply(&Command::RegisterNode {
            id,
            address: format!("10.0.0.{id}:7000"),
            capacity: Resources {
                cpu: Millicores(cores * 1000),
                memory: Bytes::gib(8),
                ..Default::default()
            },
            labels: BTreeMap::from([("zone".into(), format!("z{id}"))]),
        })
        .unwrap();
    }
    s
}

fn echo(name: &str, replicas: u32) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        kind: "echo".into(),
        replicas,
        resources: cpu(100),
        strategy: Strategy::Spread,
        constraints: vec![],
        anti_affinity: false,
        max_unavailable: 1,
        version: "1".into(),
        config: String::new(),
        collection: None,
        idempotent: false,
        autoscaling: None,
    }
}

/// The reconciler as these tests run it: small batches, and a partition replica on a down
/// node moves at once (the delay has a test of its own).
fn rules(max_batch: usize) -> ReconcilerConfig {
    ReconcilerConfig {
        max_batch,
        partition_move_delay: Duration::ZERO,
        ..Default::default()
    }
}

fn all_alive(s: &ClusterState) -> Observation {
    Observation {
        now_ms: 1,
        alive: s.nodes.keys().copied().collect(),
        silent: BTreeSet::new(),
    }
}

/// Node agents: every placement on a ready node that is not running yet starts.
fn agents_start_everything(s: &mut ClusterState) {
    let updates: Vec<StatusUpdate> = s
        .placements
        .values()
        .filter(|p| p.status == PlacementStatus::Pending)
        .filter(|p| s.nodes[&p.node].liveness == Liveness::Ready)
        .map(|p| StatusUpdate {
            actor_id: p.actor_id.clone(),
            generation: p.generation,
            status: PlacementStatus::Running,
        })
        .collect();
    if !updates.is_empty() {
        s.apply(&Command::SetPlacementStatuses { updates }).unwrap();
    }
}

fn running(s: &ClusterState, deployment: &str) -> usize {
    s.placements
        .values()
        .filter(|p| p.deployment == deployment && p.status == PlacementStatus::Running)
        .filter(|p| s.nodes[&p.node].liveness == Liveness::Ready)
        .count()
}

/// Rounds of reconcile → apply → agents, until nothing is left to do. `each` sees the state
/// after every applied command. Returns the number of rounds.
fn settle(s: &mut ClusterState, seen: &Observation, mut each: impl FnMut(&ClusterState)) -> usize {
    for round in 1..100 {
        let commands = reconcile(s, seen, &rules(4));
        if commands.is_empty() {
            return round;
        }
        for c in &commands {
            s.apply(c)
                .unwrap_or_else(|e| panic!("{c:?} was rejected: {e}"));
            each(s);
        }
        agents_start_everything(s);
        each(s);
    }
    panic!("the reconciler did not settle in 100 rounds");
}

fn settle_alive(s: &mut ClusterState, each: impl FnMut(&ClusterState)) -> usize {
    let seen = all_alive(s);
    settle(s, &seen, each)
}

fn per_node(s: &ClusterState, deployment: &str) -> BTreeMap<NodeId, usize> {
    let mut out = BTreeMap::new();
    for p in s.placements.values().filter(|p| p.deployment == deployment) {
        *out.entry(p.node).or_default() += 1;
    }
    out
}

fn no_node_overcommitted(s: &ClusterState) {
    for view in s.node_views().values() {
        assert!(
            view.capacity.fits(&view.used),
            "node {} holds {:?} of {:?}",
            view.id,
            view.used,
            view.capacity
        );
        assert!(view.gpus.iter().all(|g| g.free <= GpuAmount::ONE));
    }
}

#[test]
fn six_replicas_spread_two_per_node() {
    let mut s = cluster(3, 4);
    s.apply(&Command::CreateDeployment(echo("echo", 6)))
        .unwrap();
    let seen = all_alive(&s);
    settle(&mut s, &seen, no_node_overcommitted);
    assert_eq!(
        per_node(&s, "echo"),
        BTreeMap::from([(1, 2), (2, 2), (3, 2)])
    );
    assert_eq!(running(&s, "echo"), 6);
    assert_eq!(s.deployments["echo"].pending_reason, None);
}

#[test]
fn a_silent_node_is_marked_down_and_its_replicas_move_in_one_round() {
    let mut s = cluster(3, 4);
    s.apply(&Command::CreateDeployment(echo("echo", 6)))
        .unwrap();
    settle_alive(&mut s, |_| {});
    let gens: BTreeMap<_, _> = s
        .placements
        .values()
        .map(|p| (p.actor_id.clone(), (p.node, p.generation)))
        .collect();

    let mut seen = all_alive(&s);
    seen.alive.remove(&3);
    seen.silent.insert(3);
    let commands = reconcile(&s, &seen, &rules(100));
    assert!(matches!(
        commands[0],
        Command::SetNodeLiveness {
            id: 3,
            liveness: Liveness::Down,
            ..
        }
    ));
    assert!(
        commands
            .iter()
            .any(|c| matches!(c, Command::PlaceActors { decisions } if decisions.len() == 2)),
        "{commands:?}"
    );
    settle(&mut s, &seen, no_node_overcommitted);
    assert_eq!(per_node(&s, "echo"), BTreeMap::from([(1, 3), (2, 3)]));
    // The moved replicas have newer generations: node 3's old copies are fenced.
    for p in s.placements.values() {
        let (old_node, old_gen) = gens[&p.actor_id];
        if old_node == 3 {
            assert!(p.generation > old_gen);
        } else {
            assert_eq!(p.generation, old_gen, "{} moved needlessly", p.actor_id);
        }
    }

    // Node 3 comes back: marked ready, and nothing moves back by itself.
    let back = all_alive(&s);
    let commands = reconcile(&s, &back, &rules(100));
    assert_eq!(commands.len(), 1, "{commands:?}");
    settle(&mut s, &back, |_| {});
    assert_eq!(s.nodes[&3].liveness, Liveness::Ready);
    assert_eq!(per_node(&s, "echo"), BTreeMap::from([(1, 3), (2, 3)]));
}

#[test]
fn a_gpu_deployment_on_gpu_less_nodes_waits_with_its_reason() {
    let mut s = cluster(3, 4);
    let mut spec = echo("llm", 2);
    spec.resources.gpu = GpuAmount::whole(1);
    s.apply(&Command::CreateDeployment(spec)).unwrap();
    settle_alive(&mut s, |_| {});
    assert!(s.placements.is_empty());
    let reason = s.deployments["llm"].pending_reason.clone().unwrap();
    assert!(
        reason.contains("needs gpu=1") && reason.contains("no ready node has a free GPU"),
        "{reason}"
    );

    // A node with a GPU joins: the replicas are placed on its devices, one each.
    s.apply(&Command::RegisterNode {
        id: 4,
        address: "10.0.0.4:7000".into(),
        capacity: Resources {
            cpu: Millicores(8000),
            memory: Bytes::gib(8),
            gpu: GpuAmount::whole(2),
            ..Default::default()
        },
        labels: BTreeMap::new(),
    })
    .unwrap();
    settle_alive(&mut s, no_node_overcommitted);
    let devices: BTreeSet<Vec<u32>> = s.placements.values().map(|p| p.devices()).collect();
    assert_eq!(devices, BTreeSet::from([vec![0], vec![1]]));
    assert_eq!(s.deployments["llm"].pending_reason, None);
}

#[test]
fn replicas_of_a_dead_node_that_fit_nowhere_are_unplaced_and_pending() {
    let mut s = cluster(2, 1);
    let mut spec = echo("big", 2);
    spec.resources = cpu(1000);
    s.apply(&Command::CreateDeployment(spec)).unwrap();
    settle_alive(&mut s, |_| {});
    assert_eq!(per_node(&s, "big"), BTreeMap::from([(1, 1), (2, 1)]));
    let mut seen = all_alive(&s);
    seen.alive.remove(&2);
    seen.silent.insert(2);
    settle(&mut s, &seen, no_node_overcommitted);
    assert_eq!(per_node(&s, "big"), BTreeMap::from([(1, 1)]));
    let reason = s.deployments["big"].pending_reason.clone().unwrap();
    assert!(reason.contains("needs cpu=1"), "{reason}");
}

#[test]
fn rolling_update_keeps_desired_minus_max_unavailable_running() {
    for max_unavailable in [1, 2] {
        let mut s = cluster(3, 4);
        let mut spec = echo("echo", 6);
        spec.max_unavailable = max_unavailable;
        s.apply(&Command::CreateDeployment(spec.clone())).unwrap();
        settle_alive(&mut s, |_| {});
        spec.version = "2".into();
        spec.config = r#"{"greeting": "hi"}"#.into();
        assert_eq!(
            s.apply(&Command::UpdateDeployment {
                spec,
                expected_version: None
            }),
            Ok(CommandOutcome::DeploymentVersion(2))
        );
        let mut lowest = usize::MAX;
        let rounds = settle_alive(&mut s, |s| {
            lowest = lowest.min(running(s, "echo"));
        });
        assert_eq!(lowest, 6 - max_unavailable as usize);
        assert!(rounds >= 6 / max_unavailable as usize, "{rounds} rounds");
        assert!(s.placements.values().all(|p| p.revision == 2));
        assert_eq!(running(&s, "echo"), 6);
    }
}

#[test]
fn drain_moves_replicas_off_one_at_a_time_and_undrain_takes_new_ones() {
    let mut s = cluster(3, 4);
    s.apply(&Command::CreateDeployment(echo("echo", 6)))
        .unwrap();
    settle_alive(&mut s, |_| {});
    s.apply(&Command::SetNodeDrain {
        id: 2,
        draining: true,
    })
    .unwrap();
    let mut lowest = usize::MAX;
    settle_alive(&mut s, |s| {
        lowest = lowest.min(running(s, "echo"));
        no_node_overcommitted(s);
    });
    assert_eq!(lowest, 5);
    assert_eq!(per_node(&s, "echo"), BTreeMap::from([(1, 3), (3, 3)]));

    s.apply(&Command::SetNodeDrain {
        id: 2,
        draining: false,
    })
    .unwrap();
    s.apply(&Command::UpdateDeployment {
        spec: echo("echo", 9),
        expected_version: None,
    })
    .unwrap();
    settle_alive(&mut s, |_| {});
    assert_eq!(per_node(&s, "echo")[&2], 3);
}

#[test]
fn scaling_up_and_down_restarts_no_running_replica() {
    let mut s = cluster(3, 4);
    s.apply(&Command::CreateDeployment(echo("echo", 3)))
        .unwrap();
    settle_alive(&mut s, |_| {});
    let generations = |s: &ClusterState| -> BTreeMap<String, u64> {
        s.placements
            .values()
            .map(|p| (p.actor_id.clone(), p.generation))
            .collect()
    };
    let before = generations(&s);
    s.apply(&Command::UpdateDeployment {
        spec: echo("echo", 5),
        expected_version: None,
    })
    .unwrap();
    settle_alive(&mut s, |_| {});
    assert_eq!(running(&s, "echo"), 5);
    let after = generations(&s);
    for (id, generation) in &before {
        assert_eq!(after[id], *generation, "{id} was restarted");
    }
    s.apply(&Command::ScaleDeployment {
        name: "echo".into(),
        replicas: 2,
        by: crate::command::Scaler::Operator,
    })
    .unwrap();
    settle_alive(&mut s, |_| {});
    assert_eq!(
        generations(&s),
        before
            .into_iter()
            .filter(|(id, _)| id != "echo/2")
            .collect()
    );
}

#[test]
fn scaling_down_removes_the_highest_replicas() {
    let mut s = cluster(3, 4);
    s.apply(&Command::CreateDeployment(echo("echo", 6)))
        .unwrap();
    settle_alive(&mut s, |_| {});
    s.apply(&Command::UpdateDeployment {
        spec: echo("echo", 2),
        expected_version: None,
    })
    .unwrap();
    settle_alive(&mut s, |_| {});
    let ids: BTreeSet<&str> = s.placements.keys().map(String::as_str).collect();
    assert_eq!(ids, BTreeSet::from(["echo/0", "echo/1"]));
}

#[test]
fn anti_affinity_leaves_extra_replicas_pending() {
    let mut s = cluster(3, 4);
    let mut spec = echo("spread", 4);
    spec.anti_affinity = true;
    s.apply(&Command::CreateDeployment(spec)).unwrap();
    settle_alive(&mut s, |_| {});
    assert_eq!(
        per_node(&s, "spread"),
        BTreeMap::from([(1, 1), (2, 1), (3, 1)])
    );
    let reason = s.deployments["spread"].pending_reason.clone().unwrap();
    assert!(reason.contains("anti-affinity"), "{reason}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the deployments and node failures, the reconciler settles without a rejected
    /// command, never overcommits a node, never places on a down node, honors anti-affinity,
    /// and places every replica that can be placed.
    #[test]
    fn settles_without_overcommit(
        nodes in 1u64..6,
        cores in 1u64..5,
        deployments in prop::collection::vec((1u32..8, 1u64..1500, any::<bool>(), any::<bool>()), 1..5),
        down in prop::collection::btree_set(1u64..6, 0..3),
    ) {
        let mut s = cluster(nodes, cores);
        for (i, (replicas, millis, anti, pack)) in deployments.iter().enumerate() {
            let mut spec = echo(&format!("d{i}"), *replicas);
            spec.resources = cpu(*millis);
            spec.anti_affinity = *anti;
            spec.strategy = if *pack { Strategy::Pack } else { Strategy::Spread };
            s.apply(&Command::CreateDeployment(spec)).unwrap();
        }
        settle_alive(&mut s, no_node_overcommitted);
        let mut seen = all_alive(&s);
        for id in &down {
            if seen.alive.remove(id) {
                seen.silent.insert(*id);
            }
        }
        settle(&mut s, &seen, no_node_overcommitted);
        for p in s.placements.values() {
            prop_assert!(!down.contains(&p.node), "{} on down node {}", p.actor_id, p.node);
        }
        for (name, d) in &s.deployments {
            let placed = per_node(&s, name);
            if d.spec.anti_affinity {
                prop_assert!(placed.values().all(|n| *n == 1));
            }
            let total: usize = placed.values().sum();
            if total < d.spec.replicas as usize {
                prop_assert!(d.pending_reason.is_some(), "{name} waits without a reason");
            } else {
                prop_assert_eq!(&d.pending_reason, &None);
            }
        }
    }
}

fn collection(name: &str, partitions: u32, replication: u32) -> crate::state::CollectionSpec {
    crate::state::CollectionSpec {
        name: name.into(),
        dimension: 384,
        metric: crate::state::Metric::Cosine,
        partitions,
        replication,
        embedder: "embedder".into(),
        resources: cpu(250),
        index: Default::default(),
        incarnation: 0,
        quantization: Default::default(),
    }
}

#[test]
fn a_collection_is_placed_whole_with_replicas_of_a_partition_apart() {
    let mut s = cluster(3, 4);
    s.apply(&Command::CreateDeployment(echo("embedder", 1)))
        .unwrap();
    s.apply(&Command::CreateCollection(collection("docs", 4, 2)))
        .unwrap();
    settle_alive(&mut s, no_node_overcommitted);
    for p in 0..4 {
        let nodes = per_node(&s, &format!("docs.p{p}"));
        assert_eq!(nodes.len(), 2, "partition {p}: {nodes:?}");
        assert!(nodes.values().all(|n| *n == 1));
    }
    let config: serde_json::Value =
        serde_json::from_str(&s.deployments["docs.p3"].spec.config).unwrap();
    assert_eq!(
        config,
        serde_json::json!({"collection": "docs", "incarnation": 1, "partition": 3, "dim": 384,
            "metric": "cosine", "index": "exact", "quantization": "none"})
    );
    // Its partitions are managed through the collection only.
    let err = s
        .apply(&Command::DeleteDeployment {
            name: "docs.p0".into(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("belongs to collection"), "{err}");
    s.apply(&Command::DeleteCollection {
        name: "docs".into(),
    })
    .unwrap();
    assert!(s.placements.values().all(|p| p.deployment == "embedder"));
    assert_eq!(s.deployments.len(), 1);
}

#[test]
fn a_collection_that_cannot_be_placed_whole_places_nothing() {
    // Replication 3 needs 3 distinct nodes; there are 2.
    let mut s = cluster(2, 4);
    s.apply(&Command::CreateDeployment(echo("embedder", 1)))
        .unwrap();
    s.apply(&Command::CreateCollection(collection("docs", 2, 3)))
        .unwrap();
    settle_alive(&mut s, |_| {});
    assert!(s.placements.values().all(|p| p.deployment == "embedder"));
    let reason = s.deployments["docs.p0"].pending_reason.clone().unwrap();
    assert!(reason.contains("gang docs placed nothing"), "{reason}");
    // A third node joins: the whole collection is placed.
    s.apply(&Command::RegisterNode {
        id: 3,
        address: "10.0.0.3:7000".into(),
        capacity: s.nodes[&1].capacity.clone(),
        labels: BTreeMap::new(),
    })
    .unwrap();
    settle_alive(&mut s, no_node_overcommitted);
    assert_eq!(
        s.placements
            .values()
            .filter(|p| p.deployment.starts_with("docs."))
            .count(),
        6
    );
}

#[test]
fn collections_check_their_embedder_and_names() {
    let mut s = cluster(1, 4);
    let err = s
        .apply(&Command::CreateCollection(collection("docs", 1, 1)))
        .unwrap_err();
    assert!(err.to_string().contains("deploy it first"), "{err}");
    s.apply(&Command::CreateDeployment(echo("embedder", 1)))
        .unwrap();
    let err = s
        .apply(&Command::CreateCollection(collection("a b", 1, 1)))
        .unwrap_err();
    assert!(err.to_string().contains("letters, digits"), "{err}");
    let mut own = echo("docs.p0", 1);
    own.collection = Some("docs".into());
    assert!(s.apply(&Command::CreateDeployment(own)).is_err());
}

/// A 1-partition collection of `replication` replicas on `nodes` nodes, placed and running.
fn partition(nodes: u64, replication: u32) -> ClusterState {
    let mut s = cluster(nodes, 4);
    s.apply(&Command::CreateDeployment(echo("embedder", 0)))
        .unwrap();
    s.apply(&Command::CreateCollection(collection(
        "docs",
        1,
        replication,
    )))
    .unwrap();
    settle_alive(&mut s, |_| {});
    // The primary vouches for each other replica once it caught up (an empty copy here).
    for replica in 1..replication {
        join(&mut s, replica);
    }
    s
}

fn join(s: &mut ClusterState, replica: u32) {
    let set = s.replica_sets["docs.p0"].clone();
    s.apply(&Command::AddInSync {
        deployment: "docs.p0".into(),
        replica,
        generation: s.placements[&format!("docs.p0/{replica}")].generation,
        epoch: set.epoch,
        seq: 0,
    })
    .unwrap();
}

fn set(s: &ClusterState) -> &ReplicaSet {
    &s.replica_sets["docs.p0"]
}

fn node_of(s: &ClusterState, replica: u32) -> NodeId {
    s.placements[&format!("docs.p0/{replica}")].node
}

/// Settles with `down` silent (and marked down).
fn settle_without(s: &mut ClusterState, down: &[NodeId]) {
    let seen = Observation {
        now_ms: 2,
        alive: s
            .nodes
            .keys()
            .copied()
            .filter(|n| !down.contains(n))
            .collect(),
        silent: down.iter().copied().collect(),
    };
    settle(s, &seen, |_| {});
}

#[test]
fn a_new_collection_starts_with_its_primary_in_sync_at_epoch_one() {
    let mut s = cluster(3, 4);
    s.apply(&Command::CreateDeployment(echo("embedder", 0)))
        .unwrap();
    s.apply(&Command::CreateCollection(collection("docs", 1, 2)))
        .unwrap();
    settle_alive(&mut s, |_| {});
    assert_eq!(set(&s).epoch, 1);
    assert_eq!(set(&s).primary, Some(0));
    assert_eq!(set(&s).in_sync.len(), 1);
    join(&mut s, 1);
    let set = set(&s);
    assert_eq!(set.epoch, 2);
    assert_eq!(set.in_sync.len(), 2);
    for (r, g) in &set.in_sync {
        assert_eq!(s.placements[&format!("docs.p0/{r}")].generation, *g);
    }
    assert_eq!(s.collections["docs"].incarnation, 1);
}

#[test]
fn a_down_primary_hands_over_then_moves_and_its_copy_is_not_in_sync() {
    let mut s = partition(3, 2);
    let primary_node = node_of(&s, 0);
    settle_without(&mut s, &[primary_node]);
    let set = set(&s).clone();
    assert_eq!(set.primary, Some(1), "{set:?}");
    // Replica 0 moved to the free node and starts empty: not in sync until it catches up.
    assert_ne!(node_of(&s, 0), primary_node);
    assert_eq!(set.in_sync.keys().copied().collect::<Vec<_>>(), [1]);
    assert_eq!(set.epoch, 3, "{set:?}");
    // The primary vouches for it once it has caught up; a stale epoch is refused.
    let generation = s.placements["docs.p0/0"].generation;
    let add = |epoch| Command::AddInSync {
        deployment: "docs.p0".into(),
        replica: 0,
        generation,
        epoch,
        seq: 7,
    };
    assert!(s.apply(&add(set.epoch - 1)).is_err());
    assert_eq!(
        s.apply(&add(set.epoch)),
        Ok(CommandOutcome::Epoch(set.epoch + 1))
    );
    assert!(self::set(&s).is_in_sync(0, generation));
}

#[test]
fn a_partition_replica_waits_for_its_node_for_the_move_delay_then_moves() {
    let mut s = partition(3, 2);
    let b = node_of(&s, 1);
    let generation = s.placements["docs.p0/1"].generation;
    let config = ReconcilerConfig {
        partition_move_delay: Duration::from_secs(60),
        ..rules(100)
    };
    let alive: BTreeSet<NodeId> = s.nodes.keys().copied().filter(|n| *n != b).collect();
    let at = |now_ms| Observation {
        now_ms,
        alive: alive.clone(),
        silent: [b].into(),
    };
    let round = |s: &mut ClusterState, seen: &Observation| {
        for c in reconcile(s, seen, &config) {
            s.apply(&c).unwrap();
        }
    };
    // Marked down at 10 s; at 69.9 s the replica still waits, with a reason that says so.
    round(&mut s, &at(10_000));
    assert_eq!(s.nodes[&b].liveness, Liveness::Down);
    round(&mut s, &at(69_999));
    assert_eq!(node_of(&s, 1), b);
    assert_eq!(s.placements["docs.p0/1"].generation, generation);
    let reason = s.deployments["docs.p0"].pending_reason.clone().unwrap();
    assert!(reason.contains(&format!("waits for node {b}")), "{reason}");
    // The reason does not change from round to round: no command for a round with nothing
    // new to do.
    assert!(reconcile(&s, &at(30_000), &config).is_empty());
    // Past the delay it is placed elsewhere, with a new generation.
    round(&mut s, &at(70_000));
    assert_ne!(node_of(&s, 1), b);
    assert_ne!(s.placements["docs.p0/1"].generation, generation);
    // A model replica never waits: the delay is for copies of data.
    let mut m = cluster(3, 4);
    m.apply(&Command::CreateDeployment(echo("echo", 3)))
        .unwrap();
    settle_alive(&mut m, |_| {});
    let node = m.placements["echo/0"].node;
    let seen = Observation {
        now_ms: 10_000,
        alive: m.nodes.keys().copied().filter(|n| *n != node).collect(),
        silent: [node].into(),
    };
    for c in reconcile(&m, &seen, &config) {
        m.apply(&c).unwrap();
    }
    assert_ne!(m.placements["echo/0"].node, node);
}

#[test]
fn when_every_in_sync_replica_is_down_nothing_of_the_partition_moves() {
    let mut s = partition(4, 2);
    let before = s.placements.clone();
    let (a, b) = (node_of(&s, 0), node_of(&s, 1));
    settle_without(&mut s, &[a, b]);
    assert_eq!(s.placements.len(), before.len());
    for (id, p) in &before {
        assert_eq!(s.placements[id].generation, p.generation, "{id} moved");
    }
    assert_eq!(set(&s).primary, Some(0));
    let reason = s.deployments["docs.p0"].pending_reason.clone().unwrap();
    assert!(reason.contains("all down"), "{reason}");
    // The operator may accept the loss only then; a stale promotion is refused while an
    // in-sync replica is up.
    let mut up = s.clone();
    settle_without(&mut up, &[]);
    let err = up
        .apply(&Command::PromoteStale {
            deployment: "docs.p0".into(),
            replica: 1,
        })
        .unwrap_err();
    assert!(err.to_string().contains("nothing is lost"), "{err}");
}

#[test]
fn replacing_the_last_in_sync_copy_is_refused() {
    let mut s = partition(3, 1);
    let g = s.placements["docs.p0/0"].generation;
    let other = s
        .nodes
        .keys()
        .copied()
        .find(|n| *n != node_of(&s, 0))
        .unwrap();
    let err = s
        .apply(&Command::PlaceActors {
            decisions: vec![PlacementDecision {
                deployment: "docs.p0".into(),
                replica: 0,
                node: other,
                gpus: vec![],
                revision: 1,
                replaces: Some(g),
            }],
        })
        .unwrap_err();
    assert!(err.to_string().contains("last in-sync copy"), "{err}");
    let err = s
        .apply(&Command::RemovePlacements {
            actor_ids: vec!["docs.p0/0".into()],
        })
        .unwrap_err();
    assert!(err.to_string().contains("last in-sync copy"), "{err}");
    // A drain of its node waits, and says why.
    s.apply(&Command::SetNodeDrain {
        id: node_of(&s, 0),
        draining: true,
    })
    .unwrap();
    settle_alive(&mut s, |_| {});
    assert_eq!(s.placements["docs.p0/0"].generation, g);
    let reason = s.deployments["docs.p0"].pending_reason.clone().unwrap();
    assert!(reason.contains("only in-sync copy"), "{reason}");
}

#[test]
fn a_second_drain_waits_until_the_moved_replica_is_in_sync() {
    let mut s = partition(4, 2);
    let (a, b) = (node_of(&s, 0), node_of(&s, 1));
    s.apply(&Command::SetNodeDrain {
        id: a,
        draining: true,
    })
    .unwrap();
    settle_alive(&mut s, |_| {});
    assert_ne!(node_of(&s, 0), a);
    assert_eq!(set(&s).primary, Some(1));
    s.apply(&Command::SetNodeDrain {
        id: b,
        draining: true,
    })
    .unwrap();
    settle_alive(&mut s, |_| {});
    assert_eq!(node_of(&s, 1), b, "the only in-sync copy must wait");
    // Once replica 0 has caught up, replica 1 may move.
    join(&mut s, 0);
    settle_alive(&mut s, |_| {});
    assert_ne!(node_of(&s, 1), b);
    assert_eq!(self::set(&s).primary, Some(0));
}

#[test]
fn a_leaving_primary_hands_over_and_a_collection_recreated_is_another_incarnation() {
    let mut s = partition(3, 2);
    let g = s.placements["docs.p0/0"].generation;
    s.apply(&Command::LeaveInSync {
        deployment: "docs.p0".into(),
        replica: 0,
        generation: g,
        reason: "disk full".into(),
    })
    .unwrap();
    assert_eq!(set(&s).primary, Some(1));
    assert!(!set(&s).in_sync.contains_key(&0));
    s.apply(&Command::DeleteCollection {
        name: "docs".into(),
    })
    .unwrap();
    assert!(s.replica_sets.is_empty());
    s.apply(&Command::CreateCollection(collection("docs", 1, 2)))
        .unwrap();
    assert_eq!(s.collections["docs"].incarnation, 2);
    assert_eq!(set(&s).epoch, 0);
}
