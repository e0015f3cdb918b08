//! The primary's side of replication: it orders writes, passes each to every in-sync
//! follower, and acknowledges only once all of them have it durable; a follower that fails
//! or misses the deadline is dropped from the in-sync set by a committed command *before*
//! the acknowledgement. It also answers replicas that catch up, and vouches for them once
//! they have.
//!
//! Everything here runs inside the actor's handler, one message at a time, so no write
//! happens between the steps of another (a join's last copy and its vouching included).
//!
//! The primary makes a write durable on its own disk *while* its followers do (two fsyncs in
//! parallel rather than one after the other). A follower may therefore hold a write its
//! primary lost in a crash; so a primary never writes in an epoch that began before it
//! started ([`fresh_epoch`]): its new writes carry a newer epoch than that lost one, and the
//! follower's history shows where the two part (`partition::replication`).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use arbor_scheduler::{Command, CommandOutcome};
use ractor::ActorCell;
use tokio::task::JoinSet;

use super::{Identity, PAGE_BYTES, PartitionConfig, StorageFailure, locked, page_cap, read};
use crate::partition::replication::{Role, common_prefix};
use crate::partition::{
    MAX_GET_IDS, Partition, PartitionAnswer, PartitionFailure, PartitionReply, PartitionRequest,
    WriteOp, remote,
};

/// How long a joining replica's last copy and its vouching may take.
const JOIN_DEADLINE: Duration = Duration::from_secs(30);

/// The epoch this replica leads at, or why it does not (`asked`: the request's epoch; a
/// request for a newer epoch waits a little for this node to learn it).
async fn leading(id: &Identity, asked: u64) -> Result<u64, PartitionFailure> {
    let epoch = lead(id.role_at(asked).await, id)?;
    if asked < epoch {
        return Err(PartitionFailure::StaleEpoch {
            asked,
            current: epoch,
        });
    }
    Ok(epoch)
}

/// The epoch at which `role` leads, if its node's lease holds.
fn lead(role: Option<Role>, id: &Identity) -> Result<u64, PartitionFailure> {
    let Some(role) = role else {
        return Err(PartitionFailure::Unavailable(format!(
            "partition {:?} is not in this node's view of the control plane",
            id.deployment
        )));
    };
    let Role::Primary { epoch } = role else {
        return Err(PartitionFailure::NotPrimary {
            epoch: role.epoch(),
        });
    };
    if !id.control.lease_valid() {
        return Err(PartitionFailure::Fenced);
    }
    Ok(epoch)
}

/// `epoch` if this incarnation of the primary may write in it; otherwise it first opens a new
/// epoch (a [`Command::PromotePrimary`] of itself), so that it never gives a sequence number
/// to a write other than the one a follower may still hold from its previous incarnation.
async fn fresh_epoch(id: &Identity, epoch: u64) -> Result<u64, PartitionFailure> {
    if epoch > id.started_epoch {
        return Ok(epoch);
    }
    let command = Command::PromotePrimary {
        deployment: id.deployment.clone(),
        replica: id.replica,
        epoch,
    };
    match id.control.propose(command).await {
        Ok(CommandOutcome::Epoch(next)) => {
            // Wait until this node's view has it, so that followers and readers agree.
            id.control
                .view_at(&id.deployment, next, Duration::from_secs(5))
                .await;
            lead(id.role(), id)
        }
        Ok(other) => Err(PartitionFailure::Unavailable(format!(
            "the control plane answered {other:?}"
        ))),
        Err(e) => Err(PartitionFailure::Unavailable(format!(
            "a restarted primary could not open a new epoch: {e}"
        ))),
    }
}

/// A coordinator's write: see the module's documentation.
pub(super) async fn write(
    id: &Identity,
    partition: &Arc<RwLock<Partition>>,
    config: &PartitionConfig,
    asked: u64,
    op: WriteOp,
) -> Result<PartitionReply, StorageFailure> {
    let epoch = match leading(id, asked).await {
        Ok(e) => e,
        Err(why) => return Ok(Err(why)),
    };
    let epoch = match fresh_epoch(id, epoch).await {
        Ok(e) => e,
        Err(why) => return Ok(Err(why)),
    };
    // Refused input is refused before anyone stores it; the handler orders writes, so the
    // next sequence number is known before the local commit ends.
    let (prepared, seq) = {
        let p = read(partition).map_err(StorageFailure)?;
        match p.prepare(&op) {
            Ok(prepared) => (prepared, p.seq() + 1),
            Err(e) => return Ok(Err(PartitionFailure::Invalid(e.to_string()))),
        }
    };
    let local = tokio::spawn({
        let partition = partition.clone();
        async move { locked(&partition, move |p| p.apply(prepared, epoch)).await }
    });
    // The followers as a view at least as new as every in-sync member this primary vouched
    // for: a write acknowledged without a member the control plane counts as in sync would be
    // missing from it.
    let floor = id.view_floor.load(std::sync::atomic::Ordering::Acquire);
    let view = id
        .control
        .view_at(&id.deployment, floor, Duration::from_secs(5))
        .await;
    if view.as_ref().is_some_and(|v| v.set.epoch < floor) {
        return Ok(Err(PartitionFailure::Unavailable(format!(
            "this node's view of {:?} has not reached epoch {floor} yet",
            id.deployment
        ))));
    }
    let followers: Vec<(u32, u64)> = view
        .map(|v| {
            v.set
                .in_sync
                .into_iter()
                .filter(|(r, _)| *r != id.replica)
                .collect()
        })
        .unwrap_or_default();
    let deadline = Duration::from_millis(config.write_deadline_ms);
    let mut sends = JoinSet::new();
    for follower in followers {
        let (id, partition, op) = (id.clone(), partition.clone(), op.clone());
        sends.spawn(async move {
            let done = tokio::time::timeout(
                deadline,
                replicate(&id, &partition, follower, epoch, seq, op, deadline),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", deadline.as_millis())));
            (follower, done)
        });
    }
    let ack = match local.await {
        Ok(Ok(Ok(ack))) if ack.seq == seq => ack,
        Ok(Ok(Ok(ack))) => {
            return Err(StorageFailure(format!(
                "write took sequence number {}, not {seq}",
                ack.seq
            )));
        }
        Ok(Ok(Err(refused))) => return Ok(Err(refused)),
        Ok(Err(failure)) => return Err(failure),
        Err(e) => return Err(StorageFailure(format!("the local write failed: {e}"))),
    };
    let mut failed = Vec::new();
    while let Some(joined) = sends.join_next().await {
        let Ok((follower, done)) = joined else {
            continue;
        };
        if let Err(why) = done {
            tracing::warn!(
                actor_id = %id.actor_id,
                follower = follower.0,
                seq = ack.seq,
                "a follower did not take a write: {why}; dropping it from the in-sync set"
            );
            failed.push(follower);
        }
    }
    let mut now = epoch;
    if !failed.is_empty() {
        let command = Command::RemoveInSync {
            deployment: id.deployment.clone(),
            replicas: failed.clone(),
            epoch,
            seq: ack.seq,
        };
        match id.control.propose(command).await {
            Ok(CommandOutcome::Epoch(e)) => now = e,
            Ok(_) => {}
            Err(e) => {
                return Ok(Err(PartitionFailure::Unavailable(format!(
                    "replicas {:?} of partition {:?} did not take write {} and could not be \
                     dropped from its in-sync set: {e}",
                    failed.iter().map(|(r, _)| r).collect::<Vec<_>>(),
                    id.deployment,
                    ack.seq
                ))));
            }
        }
        // A dropped follower's node may not have applied the change yet; once its lease
        // has run out it has, or it serves nothing: only then may a reader rely on the ack.
        tokio::time::sleep(id.control.lease_duration()).await;
    }
    if !id.control.lease_valid() {
        return Ok(Err(PartitionFailure::Fenced));
    }
    Ok(Ok(PartitionAnswer::Written {
        seq: ack.seq,
        epoch: now,
        count: u32::try_from(ack.count).unwrap_or(u32::MAX),
    }))
}

/// Passes write `seq` to one follower; a follower that lags is brought up to date first.
async fn replicate(
    id: &Identity,
    partition: &Arc<RwLock<Partition>>,
    (replica, generation): (u32, u64),
    epoch: u64,
    seq: u64,
    op: WriteOp,
    deadline: Duration,
) -> Result<(), String> {
    let cell = remote::member(&id.scope, &id.deployment, replica, generation)
        .ok_or_else(|| "not reachable from this node".to_string())?;
    let request = PartitionRequest::Replicate { epoch, seq, op };
    match remote::ask(&cell, request, deadline).await {
        Ok(PartitionAnswer::Applied { .. }) => Ok(()),
        Ok(other) => Err(format!("answered {other:?}")),
        Err(PartitionFailure::OutOfSync {
            seq: theirs,
            history,
        }) => {
            // The primary's own copy of this write may still be committing: bring the
            // follower up to it, this write included.
            while read(partition)?.seq() < seq {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let (mine, my_history) = {
                let p = read(partition)?;
                (p.seq(), p.history().clone())
            };
            if common_prefix(&history, theirs, &my_history, mine) < theirs {
                return Err(format!(
                    "it holds writes after {} that this primary never had; it must recover",
                    common_prefix(&history, theirs, &my_history, mine)
                ));
            }
            push_changes(partition, &cell, theirs, epoch, deadline).await
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Sends `cell` every change after sequence number `from`, up to this primary's last, as
/// [`PartitionRequest::Install`] pages; each is durable there before the next.
async fn push_changes(
    partition: &Arc<RwLock<Partition>>,
    cell: &ActorCell,
    from: u64,
    epoch: u64,
    deadline: Duration,
) -> Result<(), String> {
    let mut after = (from, u64::MAX);
    loop {
        let (changes, next, seq, history) = page(partition, after, usize::MAX)?;
        let covered = next.map_or(seq, |(s, _)| s.saturating_sub(1));
        let request = PartitionRequest::Install {
            epoch,
            changes,
            seq: covered,
            history,
        };
        match remote::ask(cell, request, deadline).await {
            Ok(PartitionAnswer::Applied { .. }) => {}
            Ok(other) => return Err(format!("answered {other:?}")),
            Err(e) => return Err(e.to_string()),
        }
        match next {
            Some(n) => after = n,
            None => return Ok(()),
        }
    }
}

type Page = (
    Vec<crate::partition::Change>,
    Option<(u64, u64)>,
    u64,
    Vec<(u64, u64)>,
);

/// One page of changes after `after`, with this replica's sequence number and history as
/// they were when it was read.
fn page(partition: &RwLock<Partition>, after: (u64, u64), limit: usize) -> Result<Page, String> {
    let p = read(partition)?;
    let limit = limit.min(page_cap(p.dim()));
    let (changes, next) = p
        .changes_after(after, limit, PAGE_BYTES)
        .map_err(|e| e.to_string())?;
    Ok((changes, next, p.seq(), p.history().clone()))
}

/// [`PartitionRequest::Join`]: the joiner holds everything up to `seq`; send it the rest,
/// then vouch for it.
pub(super) async fn join(
    id: &Identity,
    partition: &Arc<RwLock<Partition>>,
    replica: u32,
    generation: u64,
    seq: u64,
) -> PartitionReply {
    let epoch = lead(id.role(), id)?;
    let placed = id
        .control
        .view(&id.deployment)
        .and_then(|v| v.members.get(&replica).map(|m| m.generation));
    if placed != Some(generation) {
        return Err(PartitionFailure::Invalid(format!(
            "replica {replica} of {:?} is not placed at generation {generation}",
            id.deployment
        )));
    }
    let cell = remote::member(&id.scope, &id.deployment, replica, generation).ok_or_else(|| {
        PartitionFailure::Unavailable(format!(
            "replica {replica} is not reachable from the primary"
        ))
    })?;
    let pushed = tokio::time::timeout(
        JOIN_DEADLINE,
        push_changes(partition, &cell, seq, epoch, JOIN_DEADLINE),
    )
    .await
    .unwrap_or_else(|_| Err("the last copy took too long".into()));
    pushed.map_err(|why| {
        PartitionFailure::Unavailable(format!(
            "could not send replica {replica} the last writes: {why}"
        ))
    })?;
    let now = read(partition)
        .map_err(PartitionFailure::Unavailable)?
        .seq();
    let command = Command::AddInSync {
        deployment: id.deployment.clone(),
        replica,
        generation,
        epoch,
        seq: now,
    };
    match id.control.propose(command).await {
        Ok(CommandOutcome::Epoch(epoch)) => {
            // Every later write must reach the new member: the commit may have applied here
            // before this node's view has it, so writes wait for a view this new.
            id.view_floor
                .fetch_max(epoch, std::sync::atomic::Ordering::AcqRel);
            id.control
                .view_at(&id.deployment, epoch, JOIN_DEADLINE)
                .await;
            tracing::info!(actor_id = %id.actor_id, replica, seq = now, epoch, "a replica caught up and joined the in-sync set");
            Ok(PartitionAnswer::Joined { epoch })
        }
        Ok(other) => Err(PartitionFailure::Unavailable(format!(
            "the control plane answered {other:?}"
        ))),
        Err(e) => Err(PartitionFailure::Unavailable(e.to_string())),
    }
}

/// [`PartitionRequest::Diverged`].
pub(super) fn diverged(
    id: &Identity,
    partition: &RwLock<Partition>,
    history: &[(u64, u64)],
    seq: u64,
) -> PartitionReply {
    primary_only(id)?;
    let p = read(partition).map_err(PartitionFailure::Unavailable)?;
    Ok(PartitionAnswer::Common {
        common: common_prefix(&history.to_vec(), seq, p.history(), p.seq()),
        seq: p.seq(),
    })
}

/// [`PartitionRequest::Changes`].
pub(super) async fn changes(
    id: &Identity,
    partition: &Arc<RwLock<Partition>>,
    after: (u64, u64),
    limit: u32,
) -> PartitionReply {
    primary_only(id)?;
    let partition = partition.clone();
    let (changes, next, seq, history) =
        tokio::task::spawn_blocking(move || page(&partition, after, limit as usize))
            .await
            .map_err(|e| PartitionFailure::Unavailable(e.to_string()))?
            .map_err(PartitionFailure::Unavailable)?;
    Ok(PartitionAnswer::Changes {
        changes,
        next,
        seq,
        history,
    })
}

/// [`PartitionRequest::Rows`].
pub(super) async fn rows(
    id: &Identity,
    partition: &Arc<RwLock<Partition>>,
    after: Option<u64>,
    limit: u32,
) -> PartitionReply {
    primary_only(id)?;
    let partition = partition.clone();
    tokio::task::spawn_blocking(move || {
        let p = read(&partition).map_err(PartitionFailure::Unavailable)?;
        let limit = (limit as usize).min(page_cap(p.dim()));
        let (rows, next) = p
            .rows_after(after, limit, PAGE_BYTES)
            .map_err(|e| PartitionFailure::Unavailable(e.to_string()))?;
        Ok(PartitionAnswer::Rows {
            rows,
            next,
            seq: p.seq(),
            history: p.history().clone(),
        })
    })
    .await
    .map_err(|e| PartitionFailure::Unavailable(e.to_string()))?
}

/// [`PartitionRequest::Tombstones`].
pub(super) async fn tombstones(
    id: &Identity,
    partition: &Arc<RwLock<Partition>>,
    after: Option<u64>,
    limit: u32,
) -> PartitionReply {
    primary_only(id)?;
    let partition = partition.clone();
    tokio::task::spawn_blocking(move || {
        let p = read(&partition).map_err(PartitionFailure::Unavailable)?;
        let (gone, next) = p
            .tombstones_after(after, (limit as usize).clamp(1, 100_000))
            .map_err(|e| PartitionFailure::Unavailable(e.to_string()))?;
        Ok(PartitionAnswer::Tombstones { gone, next })
    })
    .await
    .map_err(|e| PartitionFailure::Unavailable(e.to_string()))?
}

/// [`PartitionRequest::Versions`].
pub(super) async fn versions(
    id: &Identity,
    partition: &Arc<RwLock<Partition>>,
    ids: Vec<u64>,
) -> PartitionReply {
    primary_only(id)?;
    if ids.len() > MAX_GET_IDS {
        return Err(PartitionFailure::Invalid(format!(
            "{} ids in one request; at most {MAX_GET_IDS} are allowed",
            ids.len()
        )));
    }
    let partition = partition.clone();
    tokio::task::spawn_blocking(move || {
        let p = read(&partition).map_err(PartitionFailure::Unavailable)?;
        p.versions(&ids)
            .map(PartitionAnswer::Versions)
            .map_err(|e| PartitionFailure::Unavailable(e.to_string()))
    })
    .await
    .map_err(|e| PartitionFailure::Unavailable(e.to_string()))?
}

/// Only the primary is a source for replicas that catch up.
fn primary_only(id: &Identity) -> Result<(), PartitionFailure> {
    lead(id.role(), id).map(|_| ())
}
