//! `create_collection` and `promote_stale`: a collection's life in the control plane.

use super::*;

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
        // The control plane gives it one.
        incarnation: 0,
    };
    control_request(&env.raft, ControlRequest::CreateCollection(spec)).await?;
    data(CollectionCreated {
        name: c.name,
        partitions: c.partitions,
        replicas: c.replicas,
        embedder: c.embedder,
    })
}
