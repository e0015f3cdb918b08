//! `create_collection` and `promote_stale`: a collection's life in the control plane.

use super::*;
use arbor_scheduler::state::DeploymentSpec;

/// `arbor collection promote-stale`: says what the promotion loses, then makes it.
pub(super) async fn promote_stale(env: &Env, p: PromoteStaleJob) -> Result<Value, JobFailure> {
    let (collection, partition, replica) = (p.collection.clone(), p.partition, p.replica);
    let found = env
        .raft
        .read(move |s| {
            let c = s.collections.get(&collection)?;
            let deployment = c.partition_deployment(partition);
            (partition < c.partitions).then(|| {
                let view = arbor_scheduler::state::partition_views(s).remove(&deployment);
                (deployment, view)
            })
        })
        .await
        .map_err(|e| JobFailure::new(ErrorCode::Unavailable, e.to_string()))?;
    let Some((deployment, Some(view))) = found else {
        return Err(JobFailure::field(
            ErrorCode::InvalidJob,
            "job.partition",
            format!(
                "collection {:?} has no partition {}; see `arbor collections`",
                p.collection, p.partition
            ),
        ));
    };
    let Some(member) = view.members.get(&replica).copied() else {
        return Err(JobFailure::field(
            ErrorCode::InvalidJob,
            "job.replica",
            format!("partition {partition} has no replica {replica} placed"),
        ));
    };
    // What the stale copy holds, if it can be asked.
    let held = match arbor_actors::partition::remote::member(
        &env.scope,
        &deployment,
        replica,
        member.generation,
    ) {
        Some(cell) => match arbor_actors::partition::remote::ask(
            &cell,
            arbor_actors::partition::PartitionRequest::Stats,
            Duration::from_secs(5),
        )
        .await
        {
            Ok(arbor_actors::partition::PartitionAnswer::Stats(stats)) => Some(stats),
            _ => None,
        },
        None => None,
    };
    control_request(
        &env.raft,
        ControlRequest::PromoteStale {
            deployment: deployment.clone(),
            replica,
        },
    )
    .await?;
    let lost = match &held {
        Some(stats) => format!(
            "replica {replica} holds {} rows, writes up to sequence number {}; writes the lost \
             in-sync replicas {:?} acknowledged after that are gone (the control plane last \
             recorded sequence number {} acknowledged by all of them)",
            stats.count,
            stats.seq,
            view.set.in_sync.keys().collect::<Vec<_>>(),
            view.set.checkpoint
        ),
        None => format!(
            "replica {replica} could not be asked what it holds; whatever the lost in-sync \
             replicas {:?} acknowledged beyond it is gone",
            view.set.in_sync.keys().collect::<Vec<_>>()
        ),
    };
    data(PromoteStaleResult {
        collection: p.collection,
        partition,
        promoted: replica,
        rows: held.as_ref().map(|s| s.count),
        seq: held.as_ref().map(|s| s.seq),
        checkpoint: view.set.checkpoint,
        lost,
    })
}

pub(super) async fn create_collection(
    env: &Env,
    c: CreateCollectionJob,
) -> Result<Value, JobFailure> {
    // The embedder may be deployed after the collection, but a deployment of that name of
    // another kind would be sent embed requests it cannot answer.
    let embedder = c.embedder.clone();
    let kind = read_here(&env.raft, move |s| {
        s.deployments.get(&embedder).map(|d| d.spec.kind.clone())
    })
    .await?;
    if let Some(kind) = kind.filter(|k| k != "embedder") {
        return Err(JobFailure::field(
            ErrorCode::InvalidJob,
            "job.embedder",
            format!(
                "deployment {:?} is a {kind}, not an embedder; name the embedder deployment \
                 that turns this collection's text into vectors",
                c.embedder
            ),
        ));
    }
    let cpu = match &c.cpu {
        Some(s) => s.parse::<Millicores>().map_err(|e| {
            JobFailure::field(ErrorCode::InvalidJob, "job.cpu", format!("cpu {s:?}: {e}"))
        })?,
        None => Millicores(250),
    };
    let memory = match &c.memory {
        Some(s) => s.parse::<Bytes>().map_err(|e| {
            JobFailure::field(
                ErrorCode::InvalidJob,
                "job.memory",
                format!("memory {s:?}: {e}"),
            )
        })?,
        None => Bytes(512 << 20),
    };
    // Its settings were checked with the job's other fields (`validate`).
    let index = c.index.unwrap_or_default();
    let spec = CollectionSpec {
        name: c.name.clone(),
        dimension: c.dimension,
        metric: metric(&c.metric)?,
        partitions: c.partitions,
        replication: c.replicas,
        embedder: c.embedder.clone(),
        resources: Resources {
            cpu,
            memory,
            ..Default::default()
        },
        index,
        // The control plane gives it one.
        incarnation: 0,
        quantization: c.quantization.unwrap_or_default(),
    };
    let coordinator = coordinator_spec(env, &c).await?;
    control_request(&env.raft, ControlRequest::CreateCollection(spec)).await?;
    let coordinator = match coordinator {
        Some(d) => {
            let name = d.name.clone();
            control_request(&env.raft, ControlRequest::Deploy(d)).await?;
            Some(name)
        }
        None => None,
    };
    data(CollectionCreated {
        name: c.name,
        partitions: c.partitions,
        replicas: c.replicas,
        embedder: c.embedder,
        coordinator,
    })
}

/// The coordinator deployment a collection deploys for itself (`NAME-coordinator`), its
/// config taken from the collection's own shape, so nobody repeats the partition count; `None`
/// when the job asks for no coordinator.
async fn coordinator_spec(
    env: &Env,
    c: &CreateCollectionJob,
) -> Result<Option<DeploymentSpec>, JobFailure> {
    let replicas = match c.coordinators {
        Some(0) => return Ok(None),
        Some(n) => n,
        // Two for availability, on distinct nodes, where there are two nodes.
        None => read_here(&env.raft, |s| s.nodes.len()).await?.clamp(1, 2) as u32,
    };
    let mut resources = serde_json::Map::new();
    if let Some(cpu) = &c.coordinator_cpu {
        cpu.parse::<Millicores>().map_err(|e| {
            JobFailure::field(
                ErrorCode::InvalidJob,
                "job.coordinator_cpu",
                format!("coordinator_cpu {cpu:?}: {e}"),
            )
        })?;
        resources.insert("cpu".into(), cpu.clone().into());
    }
    if let Some(memory) = &c.coordinator_memory {
        memory.parse::<Bytes>().map_err(|e| {
            JobFailure::field(
                ErrorCode::InvalidJob,
                "job.coordinator_memory",
                format!("coordinator_memory {memory:?}: {e}"),
            )
        })?;
        resources.insert("memory".into(), memory.clone().into());
    }
    // The shape (partitions, embedder, metric) is the collection's: the coordinator reads it
    // from the control plane.
    let mut config = json!({ "collection": c.name });
    if let Some(model) = &c.model {
        config["model"] = model.clone().into();
    }
    let mut file = json!({
        "name": arbor_proto::collection_coordinator(&c.name),
        "kind": "retrieval_coordinator",
        "replicas": replicas,
        "anti_affinity": true,
        // Ingests (upserts by id) and queries may run twice without harm.
        "idempotent": true,
        "config": config,
    });
    if !resources.is_empty() {
        file["resources"] = Value::Object(resources);
    }
    crate::deployment_file::parse(Path::new("job.coordinator.json"), &file.to_string())
        .map(Some)
        .map_err(|e| JobFailure::new(ErrorCode::InvalidJob, e.to_string()))
}

/// `delete_collection`: the collection, then the coordinator it deployed for itself.
pub(super) async fn delete_collection(env: &Env, name: String) -> Result<Value, JobFailure> {
    control_request(&env.raft, ControlRequest::DeleteCollection(name.clone())).await?;
    let own = arbor_proto::collection_coordinator(&name);
    let collection = name.clone();
    let deployed = read_here(&env.raft, move |s| {
        s.deployments.get(&own).is_some_and(|d| {
            d.spec.kind == "retrieval_coordinator"
                && serde_json::from_str::<CollectionRoute>(&d.spec.config)
                    .is_ok_and(|r| r.collection == collection)
        })
    })
    .await?;
    if deployed {
        let own = arbor_proto::collection_coordinator(&name);
        control_request(&env.raft, ControlRequest::Undeploy(own)).await?;
    }
    data(Deleted {
        name,
        deleted: true,
    })
}
