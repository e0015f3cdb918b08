//! `vector_partition`: one replica of one partition of a vector collection.
//!
//! Config: `{"collection": "docs", "partition": 0, "dim": 384, "metric": "cosine"}` (metric
//! optional, cosine by default). The rows live in `<data_dir>/partitions/<collection>-<n>.redb`,
//! so a replica restarted on the same node finds everything it acknowledged.
//!
//! The actor never blocks on heavy work: loading, commits and scans run on tokio's blocking
//! pool. Writes are serialized by the actor itself: it awaits each write before it takes the
//! next message, so writes apply in arrival order and sequence numbers follow that order.
//! Searches run in tasks of their own, concurrently, under the read side of a lock that a
//! write takes only while it runs.
//!
//! A replica that starts (restarted on a stale file, or newly placed with none) catches up
//! from a live replica of its partition before it serves: a task spawned in `post_start`
//! finds the other members of its process group, pages through one's rows (`Page`), copies
//! what differs and deletes what the peer no longer has. Meanwhile searches and pages are
//! refused ("catching up"), while writes are applied as usual and their ids remembered, so
//! that the copy never overwrites a newer write with an older row (nor revives a deleted
//! one). A replica with no peer is the only copy and serves at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arbor_kernels::device::Device;
use arbor_kernels::topk::Metric;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Deserialize;
use tokio::task::JoinSet;

use super::{Kind, ReplicaContext, parse_required_config};
use crate::partition::{
    MetadataFilter, Partition, PartitionAnswer, PartitionError, PartitionReply, PartitionRequest,
    StoreError, VectorRecord, WriteAck, store_path,
};
use crate::replica::{CallReply, ReplicaMsg, decode_request, deployment_group};
use crate::wire::{MAX_PAYLOAD_BYTES, Wire};

/// How long a starting replica waits for a previous incarnation to let go of its file (a
/// killed actor's last commit may still be finishing on the blocking pool).
const OPEN_PATIENCE: Duration = Duration::from_secs(10);
const OPEN_RETRY: Duration = Duration::from_millis(50);
/// The longest collection name, in bytes.
const MAX_COLLECTION_LEN: usize = 128;
/// What a replica that is not caught up answers to searches and pages.
pub const CATCHING_UP: &str = "catching up from a live replica";
/// How long a starting replica waits to see itself in its group (the agent joins it right
/// after `pre_start`), and how often it looks.
const JOIN_PATIENCE: Duration = Duration::from_secs(2);
const JOIN_POLL: Duration = Duration::from_millis(20);
/// How long a catching-up replica waits for one page.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Rows asked for per page, at most (lowered for wide vectors, see [`page_cap`]).
const PAGE_ROWS: usize = 2048;
/// The bytes of rows a page carries, about: well under the wire limit.
const PAGE_BYTES: usize = MAX_PAYLOAD_BYTES / 2;
/// Backoff between failed catch-up attempts.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// `vector_partition`'s configuration; every field but `metric` is required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    pub collection: String,
    pub partition: u32,
    pub dim: usize,
    #[serde(default = "cosine")]
    pub metric: Metric,
}

fn cosine() -> Metric {
    Metric::Cosine
}

impl PartitionConfig {
    /// The collection name becomes part of a file name: only letters, digits, `_`, `-`, `.`
    /// (not first) are allowed.
    fn validate(&self) -> Result<(), String> {
        let c = &self.collection;
        let ok = !c.is_empty()
            && c.len() <= MAX_COLLECTION_LEN
            && !c.starts_with('.')
            && c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
        if !ok {
            return Err(format!(
                "collection name {c:?} is not allowed: use 1 to {MAX_COLLECTION_LEN} letters, \
                 digits, '_', '-' or '.' (not first)"
            ));
        }
        if self.dim == 0 || self.dim > crate::partition::store::MAX_DIM {
            return Err(format!(
                "dim {} is not allowed: 1 to {} components",
                self.dim,
                crate::partition::store::MAX_DIM
            ));
        }
        Ok(())
    }
}

/// The `vector_partition` actor.
pub struct PartitionReplica;

/// A running partition replica. Dropping it (the actor stopped or was killed) aborts the
/// search tasks, so no answer comes from a dead actor.
pub struct PartitionState {
    ctx: ReplicaContext,
    partition: Arc<RwLock<Partition>>,
    /// `Some` while catching up: the ids written (upserted or deleted) since the start, which
    /// the copy leaves alone. `None` once the replica serves.
    catching_up: CatchUp,
    tasks: JoinSet<()>,
}

/// Whether a replica still catches up, and the ids written meanwhile.
type CatchUp = Arc<Mutex<Option<HashSet<u64>>>>;

fn is_catching_up(c: &CatchUp) -> bool {
    c.lock().map_or(true, |g| g.is_some())
}

/// Remembers ids written while catching up. Called under the partition's write lock, by
/// the write that succeeded, so a copied page (applied under the same lock) either sees the
/// ids or is overwritten by the write.
fn remember_written(c: &CatchUp, ids: impl IntoIterator<Item = u64>) {
    if let Ok(mut g) = c.lock()
        && let Some(set) = g.as_mut()
    {
        set.extend(ids);
    }
}

/// The most rows one page may carry for vectors of `dim` components.
fn page_cap(dim: usize) -> usize {
    (PAGE_BYTES / (4 * dim + 64)).clamp(1, PAGE_ROWS)
}

impl Actor for PartitionReplica {
    type Msg = ReplicaMsg;
    type State = PartitionState;
    type Arguments = ReplicaContext;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: ReplicaContext,
    ) -> Result<Self::State, ActorProcessingErr> {
        let config: PartitionConfig = parse_required_config(
            Kind::VectorPartition,
            &ctx,
            "collection, partition and dim (metric optional)",
        )?;
        config.validate().map_err(|e| {
            format!(
                "bad config for {} actor {:?}: {e}",
                Kind::VectorPartition,
                ctx.actor_id
            )
        })?;
        let path = store_path(&ctx.data_dir, &config.collection, config.partition);
        let device = ctx
            .devices
            .first()
            .map_or(Device::Cpu, |&d| Device::Cuda(d as usize));
        let give_up = tokio::time::Instant::now() + OPEN_PATIENCE;
        let partition = loop {
            let (file, dim, metric) = (path.clone(), config.dim, config.metric);
            let opened =
                tokio::task::spawn_blocking(move || Partition::open(&file, dim, metric, device))
                    .await
                    .map_err(|e| format!("loading partition {}: {e}", path.display()))?;
            match opened {
                Ok(partition) => break partition,
                Err(PartitionError::Store(StoreError::AlreadyOpen { .. }))
                    if tokio::time::Instant::now() < give_up =>
                {
                    tokio::time::sleep(OPEN_RETRY).await;
                }
                Err(e) => return Err(format!("cannot open partition: {e}").into()),
            }
        };
        tracing::info!(
            actor_id = %ctx.actor_id,
            collection = %config.collection,
            partition = config.partition,
            rows = partition.len(),
            device = %partition.device(),
            "vector partition loaded"
        );
        Ok(PartitionState {
            ctx,
            partition: Arc::new(RwLock::new(partition)),
            catching_up: Arc::new(Mutex::new(Some(HashSet::new()))),
            tasks: JoinSet::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let job = CatchUpJob {
            myself,
            scope: state.ctx.scope.clone(),
            group: deployment_group(&state.ctx.deployment),
            actor_id: state.ctx.actor_id.clone(),
            partition: state.partition.clone(),
            catching_up: state.catching_up.clone(),
        };
        state.tasks.spawn(job.run());
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        while state.tasks.try_join_next().is_some() {}
        match msg {
            ReplicaMsg::Partition(request, reply) => match request.into_inner() {
                Ok(request) => return self.request(state, request, reply).await,
                Err(e) => {
                    let _ = reply.send(Wire::new(Err(format!("request rejected: {e}"))));
                }
            },
            ReplicaMsg::Call(request, reply) => {
                let answer = decode_request(request).and_then(|r| call(state, &r.payload));
                let _ = reply.send(Wire::new(answer));
            }
            // Requests for other kinds are refused with what this replica is.
            other => crate::replica::refuse(Kind::VectorPartition, &state.ctx.actor_id, other),
        }
        Ok(())
    }
}

impl PartitionReplica {
    async fn request(
        &self,
        state: &mut PartitionState,
        request: PartitionRequest,
        reply: RpcReplyPort<Wire<PartitionReply>>,
    ) -> Result<(), ActorProcessingErr> {
        match request {
            PartitionRequest::Upsert(records) => {
                let c = state.catching_up.clone();
                let done = write(&state.partition, move |p| {
                    let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
                    let ack = p.upsert(records)?;
                    remember_written(&c, ids);
                    Ok(ack)
                })
                .await;
                answer_write(done, reply, |a| PartitionAnswer::Written {
                    seq: a.seq,
                    count: count32(a.count),
                })
            }
            PartitionRequest::Delete(ids) => {
                let c = state.catching_up.clone();
                let done = write(&state.partition, move |p| {
                    let ack = p.delete(&ids)?;
                    remember_written(&c, ids);
                    Ok(ack)
                })
                .await;
                answer_write(done, reply, |a| PartitionAnswer::Deleted {
                    seq: a.seq,
                    count: count32(a.count),
                })
            }
            PartitionRequest::Search { .. }
            | PartitionRequest::Page { .. }
            | PartitionRequest::Get(_)
                if is_catching_up(&state.catching_up) =>
            {
                let _ = reply.send(Wire::new(Err(CATCHING_UP.to_string())));
                Ok(())
            }
            PartitionRequest::Page { after, limit } => {
                spawn_read(
                    &mut state.tasks,
                    &state.partition,
                    reply,
                    "page",
                    move |p| {
                        let limit = (limit as usize).min(page_cap(p.dim()));
                        p.page(after, limit, PAGE_BYTES)
                            .map(|(records, last)| PartitionAnswer::Page { records, last })
                            .map_err(|e| e.to_string())
                    },
                );
                Ok(())
            }
            PartitionRequest::Get(ids) => {
                spawn_read(&mut state.tasks, &state.partition, reply, "get", move |p| {
                    p.get(&ids)
                        .map(PartitionAnswer::Records)
                        .map_err(|e| e.to_string())
                });
                Ok(())
            }
            PartitionRequest::Search { queries, k, filter } => {
                spawn_read(
                    &mut state.tasks,
                    &state.partition,
                    reply,
                    "search",
                    move |p| search(p, &queries, k as usize, filter.as_deref()),
                );
                Ok(())
            }
            PartitionRequest::Stats => {
                let answer = stats(&state.partition).map(PartitionAnswer::Stats);
                let _ = reply.send(Wire::new(answer));
                Ok(())
            }
        }
    }
}

fn count32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Runs one write on the blocking pool, holding the write side of the lock.
async fn write(
    partition: &Arc<RwLock<Partition>>,
    f: impl FnOnce(&mut Partition) -> Result<WriteAck, PartitionError> + Send + 'static,
) -> Result<WriteAck, WriteFailure> {
    let partition = partition.clone();
    tokio::task::spawn_blocking(move || match partition.write() {
        Ok(mut p) => f(&mut p).map_err(|e| {
            if e.is_fatal() {
                WriteFailure::Fatal(e.to_string())
            } else {
                WriteFailure::Refused(e.to_string())
            }
        }),
        Err(_) => Err(WriteFailure::Fatal(
            "a write panicked earlier; memory may not match the disk".into(),
        )),
    })
    .await
    .unwrap_or_else(|e| Err(WriteFailure::Fatal(format!("write task failed: {e}"))))
}

enum WriteFailure {
    /// Nothing changed; the caller is told why.
    Refused(String),
    /// Memory may no longer match the disk: the actor fails so that it is loaded again.
    Fatal(String),
}

fn answer_write(
    done: Result<WriteAck, WriteFailure>,
    reply: RpcReplyPort<Wire<PartitionReply>>,
    answer: impl FnOnce(WriteAck) -> PartitionAnswer,
) -> Result<(), ActorProcessingErr> {
    match done {
        Ok(ack) => {
            let _ = reply.send(Wire::new(Ok(answer(ack))));
            Ok(())
        }
        Err(WriteFailure::Refused(why)) => {
            let _ = reply.send(Wire::new(Err(why)));
            Ok(())
        }
        Err(WriteFailure::Fatal(why)) => {
            let _ = reply.send(Wire::new(Err(why.clone())));
            Err(why.into())
        }
    }
}

/// Runs a read on the blocking pool, off the actor, and answers `reply` with it; the actor
/// goes on with other requests meanwhile (reads share the lock).
fn spawn_read(
    tasks: &mut JoinSet<()>,
    partition: &Arc<RwLock<Partition>>,
    reply: RpcReplyPort<Wire<PartitionReply>>,
    what: &'static str,
    read: impl FnOnce(&Partition) -> PartitionReply + Send + 'static,
) {
    let partition = partition.clone();
    tasks.spawn(async move {
        let answer = tokio::task::spawn_blocking(move || {
            let p = partition
                .read()
                .map_err(|_| "the partition failed and is being reloaded".to_string())?;
            read(&p)
        })
        .await
        .unwrap_or_else(|e| Err(format!("{what} task failed: {e}")));
        let _ = reply.send(Wire::new(answer));
    });
}

fn search(p: &Partition, queries: &[Vec<f32>], k: usize, filter: Option<&str>) -> PartitionReply {
    let filter = filter
        .map(MetadataFilter::parse)
        .transpose()
        .map_err(|e| format!("bad filter: {e}"))?;
    p.search(queries, k, filter.as_ref())
        .map(PartitionAnswer::Hits)
        .map_err(|e| e.to_string())
}

fn stats(partition: &RwLock<Partition>) -> Result<crate::partition::PartitionStats, String> {
    partition
        .read()
        .map(|p| p.stats())
        .map_err(|_| "the partition failed and is being reloaded".to_string())
}

/// The generic call (`arbor call`): `{"stats": true}` answers the stats as JSON.
fn call(state: &PartitionState, payload: &[u8]) -> CallReply {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Query {
        stats: bool,
    }
    const USAGE: &str = "a vector_partition answers the call {\"stats\": true}; \
                         writes and searches are partition requests";
    match serde_json::from_slice::<Query>(payload) {
        Ok(Query { stats: true }) => {
            let stats = stats(&state.partition)?;
            serde_json::to_vec(&stats).map_err(|e| format!("could not encode stats: {e}"))
        }
        Ok(_) => Err(USAGE.into()),
        Err(e) => Err(format!("{USAGE}; got: {e}")),
    }
}

/// What the catch-up task needs: who it is, where its peers are, and the shared partition.
struct CatchUpJob {
    myself: ActorRef<ReplicaMsg>,
    scope: String,
    group: String,
    actor_id: String,
    partition: Arc<RwLock<Partition>>,
    catching_up: CatchUp,
}

/// Why one attempt to copy from a peer failed.
enum CopyFailure {
    /// The peer is itself catching up.
    PeerCatchingUp,
    /// It did not answer, answered an error, or the copy could not be applied.
    Other(String),
    /// The local partition can no longer be trusted: the actor must be reloaded.
    Fatal(String),
}

impl CatchUpJob {
    async fn run(self) {
        let mut backoff = RETRY_FIRST;
        loop {
            let peers = self.peers().await;
            if peers.is_empty() {
                self.finish(0, "no other replica: this is the only copy");
                return;
            }
            let mut all_catching_up = true;
            for peer in &peers {
                match self.copy_from(peer).await {
                    Ok(copied) => {
                        self.finish(copied, "caught up from a live replica");
                        return;
                    }
                    Err(CopyFailure::Fatal(why)) => {
                        tracing::error!(actor_id = %self.actor_id, "catch-up failed: {why}");
                        self.myself.stop(Some(why));
                        return;
                    }
                    Err(CopyFailure::PeerCatchingUp) => {}
                    Err(CopyFailure::Other(why)) => {
                        all_catching_up = false;
                        tracing::warn!(
                            actor_id = %self.actor_id,
                            peer = %peer.get_id(),
                            "catch-up from a peer failed: {why}"
                        );
                    }
                }
            }
            // No live replica, only others catching up (all started together, or the live
            // ones are gone): the lowest actor id serves what it has and the others copy it.
            let me = self.myself.get_id();
            if all_catching_up && peers.iter().all(|p| me < p.get_id()) {
                self.finish(
                    0,
                    "every other replica is catching up: serving what is here",
                );
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    /// The other members of the group, once this replica is in it (or after
    /// [`JOIN_PATIENCE`], for a replica that nobody joins to a group).
    async fn peers(&self) -> Vec<ActorCell> {
        let me: ActorId = self.myself.get_id();
        let give_up = tokio::time::Instant::now() + JOIN_PATIENCE;
        loop {
            let members = ractor::pg::get_scoped_members(&self.scope, &self.group);
            let joined = members.iter().any(|m| m.get_id() == me);
            if joined || tokio::time::Instant::now() >= give_up {
                return members.into_iter().filter(|m| m.get_id() != me).collect();
            }
            tokio::time::sleep(JOIN_POLL).await;
        }
    }

    fn finish(&self, copied: u64, why: &str) {
        // Under the write lock, so no write is between remembering and serving.
        let rows = match self.partition.write() {
            Ok(p) => {
                if let Ok(mut g) = self.catching_up.lock() {
                    *g = None;
                }
                p.len()
            }
            Err(_) => {
                self.myself
                    .stop(Some("the partition failed during catch-up".into()));
                return;
            }
        };
        tracing::info!(actor_id = %self.actor_id, copied, rows, "{why}; serving");
    }

    /// Pages through `peer`'s rows and makes the local ones match, leaving alone the ids
    /// written meanwhile. Returns how many rows were copied or deleted.
    async fn copy_from(&self, peer: &ActorCell) -> Result<u64, CopyFailure> {
        let dim = self
            .partition
            .read()
            .map_err(|_| CopyFailure::Fatal("the partition failed".into()))?
            .dim();
        let limit = u32::try_from(page_cap(dim)).unwrap_or(u32::MAX);
        let mut after = None;
        let mut changed = 0u64;
        loop {
            let request = PartitionRequest::Page { after, limit };
            let reply = ractor::rpc::call(
                &ActorRef::<ReplicaMsg>::from(peer.clone()).get_cell(),
                |reply| ReplicaMsg::Partition(Wire::new(request), reply),
                Some(PAGE_TIMEOUT),
            )
            .await;
            let (records, last) = match reply {
                Ok(CallResult::Success(wire)) => match wire.into_inner() {
                    Ok(Ok(PartitionAnswer::Page { records, last })) => (records, last),
                    Ok(Ok(other)) => {
                        return Err(CopyFailure::Other(format!("not a page: {other:?}")));
                    }
                    Ok(Err(e)) if e.contains("catching up") => {
                        return Err(CopyFailure::PeerCatchingUp);
                    }
                    Ok(Err(e)) => return Err(CopyFailure::Other(e)),
                    Err(e) => return Err(CopyFailure::Other(e.to_string())),
                },
                Ok(CallResult::Timeout) => {
                    return Err(CopyFailure::Other("no page within the timeout".into()));
                }
                Ok(CallResult::SenderError) => {
                    return Err(CopyFailure::Other("the peer dropped the request".into()));
                }
                Err(e) => return Err(CopyFailure::Other(e.to_string())),
            };
            // This page covers the ids after `after` up to `last` (to the end when `None`).
            let lo = match after {
                None => 0,
                Some(u64::MAX) => return Ok(changed),
                Some(a) => a + 1,
            };
            changed += self
                .apply_page(lo..=last.unwrap_or(u64::MAX), records)
                .await?;
            match last {
                None => return Ok(changed),
                Some(l) if l >= lo => after = Some(l),
                Some(_) => {
                    return Err(CopyFailure::Other("the peer's pages do not advance".into()));
                }
            }
        }
    }

    /// Makes the local rows with ids in `range` match `records` (the peer's rows there),
    /// except the ids written since the start. Runs under the partition's write lock.
    async fn apply_page(
        &self,
        range: std::ops::RangeInclusive<u64>,
        records: Vec<VectorRecord>,
    ) -> Result<u64, CopyFailure> {
        let partition = self.partition.clone();
        let catching_up = self.catching_up.clone();
        tokio::task::spawn_blocking(move || {
            let mut p = partition
                .write()
                .map_err(|_| CopyFailure::Fatal("a write panicked earlier".into()))?;
            let written = catching_up
                .lock()
                .map_err(|_| CopyFailure::Fatal("catch-up state poisoned".into()))?
                .clone()
                .unwrap_or_default();
            let local: HashMap<u64, (Vec<f32>, String)> = p
                .stored_range(range)
                .map_err(|e| CopyFailure::Other(e.to_string()))?
                .into_iter()
                .map(|r| (r.id, (r.vector, r.metadata)))
                .collect();
            let theirs: HashSet<u64> = records.iter().map(|r| r.id).collect();
            let copy: Vec<VectorRecord> = records
                .into_iter()
                .filter(|r| !written.contains(&r.id))
                .filter(|r| {
                    local
                        .get(&r.id)
                        .is_none_or(|(v, m)| *v != r.vector || *m != r.metadata)
                })
                .collect();
            let gone: Vec<u64> = local
                .keys()
                .copied()
                .filter(|id| !theirs.contains(id) && !written.contains(id))
                .collect();
            let changed = (copy.len() + gone.len()) as u64;
            let fail = |e: PartitionError| {
                if e.is_fatal() {
                    CopyFailure::Fatal(e.to_string())
                } else {
                    CopyFailure::Other(format!("applying a copied page: {e}"))
                }
            };
            if !copy.is_empty() {
                p.upsert(copy).map_err(fail)?;
            }
            for chunk in gone.chunks(crate::partition::store::MAX_DELETE_IDS) {
                p.delete(chunk).map_err(fail)?;
            }
            Ok(changed)
        })
        .await
        .unwrap_or_else(|e| Err(CopyFailure::Other(format!("catch-up task failed: {e}"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::tests::ctx;

    #[test]
    fn config_is_checked() {
        let parse = |c: &str| {
            parse_required_config::<PartitionConfig>(Kind::VectorPartition, &ctx(c), "fields")
                .and_then(|c| c.validate().map(|()| c))
        };
        let c = parse(r#"{"collection":"docs","partition":2,"dim":384}"#).unwrap();
        assert_eq!(c.metric, Metric::Cosine);
        assert_eq!(c.partition, 2);
        let c = parse(r#"{"collection":"d","partition":0,"dim":3,"metric":"l2"}"#).unwrap();
        assert_eq!(c.metric, Metric::L2);
        for (bad, why) in [
            ("", "needs a config"),
            (r#"{"partition":0,"dim":3}"#, "collection"),
            (r#"{"collection":"d","dim":3}"#, "partition"),
            (r#"{"collection":"d","partition":0}"#, "dim"),
            (
                r#"{"collection":"d","partition":0,"dim":3,"x":1}"#,
                "unknown field",
            ),
            (
                r#"{"collection":"d","partition":0,"dim":3,"metric":"l1"}"#,
                "unknown variant",
            ),
            (
                r#"{"collection":"../x","partition":0,"dim":3}"#,
                "not allowed",
            ),
            (r#"{"collection":"","partition":0,"dim":3}"#, "not allowed"),
            (r#"{"collection":"d","partition":0,"dim":0}"#, "dim 0"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
