//! `vector_partition`: one replica of one partition of a vector collection.
//!
//! Config: `{"collection": "docs", "incarnation": 3, "partition": 0, "dim": 384, "metric":
//! "cosine"}` (metric optional, cosine by default; the control plane writes it). The rows
//! live in `<data_dir>/partitions/<collection>~i<incarnation>~p<partition>~g<generation>.redb`,
//! so a replica restarted in place finds everything it acknowledged, while a replica placed
//! anew, or a collection created again, starts from an empty file.
//!
//! What a replica does follows from its partition's replica set as this node last learned it
//! from the control plane (`partition::replication::Role`):
//! - the **primary** orders writes ([`primary`]): it makes each one durable, passes it to
//!   every in-sync follower, and acknowledges once all have it durable, after the control
//!   plane has dropped any follower that failed;
//! - a **follower** applies the primary's writes in sequence order and serves reads;
//! - a replica that is not in sync **recovers** ([`recovery`]): it finds where its history
//!   parts from the primary's, undoes what the primary never had, copies what came after,
//!   and asks the primary to vouch for it to the control plane;
//! - with no in-sync replica to follow, it waits.
//!
//! Reads are served only by in-sync replicas, and nothing is served or acknowledged while
//! the node's lease has run out (it may have been replaced meanwhile). A write that failed
//! on the storage makes the replica leave its in-sync set and fail, with the cause.
//!
//! The actor never blocks on disk: loading, commits and scans run on tokio's blocking pool.
//! It handles one message at a time, so a primary's writes are ordered by its mailbox;
//! searches run in tasks of their own, concurrently, under the read side of a lock.

mod primary;
mod recovery;

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use arbor_kernels::device::Device;
use arbor_kernels::topk::Metric;
use arbor_scheduler::Command;
use ractor::{ActorProcessingErr, RpcReplyPort};
use serde::Deserialize;
use tokio::task::JoinSet;

use super::{Handled, Kind, Me, ReplicaContext, ReplicaKind, Started, parse_required_config};
use crate::control::Control;
use crate::partition::replication::Role;
use crate::partition::{
    GraphBuild, IndexConfig, MetadataFilter, Partition, PartitionAnswer, PartitionError,
    PartitionFailure, PartitionReply, PartitionRequest, StoreError, StoreName, WriteOp, store_path,
};
use crate::replica::{CallFailure, CallReply, ReplicaMsg, decode_request};
use crate::wire::{MAX_PAYLOAD_BYTES, Wire};

/// How long a starting replica waits for a previous incarnation to let go of its file (a
/// killed actor's last commit may still be finishing on the blocking pool).
const OPEN_PATIENCE: Duration = Duration::from_secs(10);
const OPEN_RETRY: Duration = Duration::from_millis(50);
/// The longest collection name, in bytes.
const MAX_COLLECTION_LEN: usize = 128;
/// How long a request that names a newer epoch than this node knows waits for the node to
/// learn it.
const VIEW_PATIENCE: Duration = Duration::from_millis(1000);
/// Rows asked for per page of changes, at most (lowered for wide vectors, see [`page_cap`]).
const PAGE_ROWS: usize = 2048;
/// The bytes of rows a page carries, about: well under the wire limit.
const PAGE_BYTES: usize = MAX_PAYLOAD_BYTES / 2;

/// What a partition's config must name.
pub(crate) const NEEDED: &str = "collection, partition and dim (metric optional)";

/// `vector_partition`'s configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    pub collection: String,
    /// The collection's incarnation (0 for one configured by hand).
    #[serde(default)]
    pub incarnation: u64,
    pub partition: u32,
    pub dim: usize,
    #[serde(default = "cosine")]
    pub metric: Metric,
    /// The collection's index (default: the exact scan).
    #[serde(default)]
    pub index: arbor_proto::IndexSpec,
    /// How the collection's vectors are held in memory (default: f32).
    #[serde(default)]
    pub quantization: arbor_proto::Quantization,
    /// How long the primary waits for a follower to have a write durable before it drops the
    /// follower from the in-sync set (well below a client's timeout).
    #[serde(default = "write_deadline_ms")]
    pub write_deadline_ms: u64,
}

fn cosine() -> Metric {
    Metric::Cosine
}

fn write_deadline_ms() -> u64 {
    2000
}

impl PartitionConfig {
    /// The collection name becomes part of a file name: only letters, digits, `_`, `-`, `.`
    /// (not first) are allowed.
    pub(crate) fn validate(&self) -> Result<(), String> {
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
        if self.write_deadline_ms == 0 {
            return Err("write_deadline_ms must be at least 1".into());
        }
        self.index.validate().map_err(|e| e.0)?;
        Ok(())
    }
}

/// The `vector_partition` actor.
pub struct PartitionReplica;

/// Who a replica is: what it needs to find its replica set and to be found.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub deployment: String,
    pub replica: u32,
    pub generation: u64,
    pub actor_id: String,
    pub scope: String,
    pub control: Control,
    /// The replica set's epoch when this incarnation started: it writes as primary only in a
    /// later one (see `primary::fresh_epoch`).
    pub started_epoch: u64,
    /// The least epoch this node's view must have reached before the primary picks a write's
    /// followers: raised when it vouches for a new in-sync member, whose commit can apply here
    /// before the view is fed (see `primary::join`).
    pub view_floor: Arc<std::sync::atomic::AtomicU64>,
}

impl Identity {
    /// This replica's role as this node knows its replica set (`None`: no such partition).
    pub fn role(&self) -> Option<Role> {
        let view = self.control.view(&self.deployment)?;
        Some(Role::of(&view, self.replica, self.generation))
    }

    /// The role once this node knows epoch `epoch` (waiting a little for it).
    pub async fn role_at(&self, epoch: u64) -> Option<Role> {
        let view = self
            .control
            .view_at(&self.deployment, epoch, VIEW_PATIENCE)
            .await?;
        Some(Role::of(&view, self.replica, self.generation))
    }

    /// Leaves the in-sync set (a primary hands over); logs what the control plane said.
    pub async fn leave_in_sync(&self, reason: String) {
        let command = Command::LeaveInSync {
            deployment: self.deployment.clone(),
            replica: self.replica,
            generation: self.generation,
            reason: reason.clone(),
        };
        match tokio::time::timeout(Duration::from_secs(5), self.control.propose(command)).await {
            Ok(Ok(_)) => {
                tracing::warn!(actor_id = %self.actor_id, "left the in-sync set: {reason}")
            }
            Ok(Err(e)) => {
                tracing::error!(actor_id = %self.actor_id, "could not leave the in-sync set ({reason}): {e}")
            }
            Err(_) => {
                tracing::error!(actor_id = %self.actor_id, "could not leave the in-sync set ({reason}): the control plane did not answer")
            }
        }
    }
}

/// A running partition replica. Dropping it (the actor stopped or was killed) aborts its
/// search tasks and its recovery, so no answer comes from a dead actor.
pub struct PartitionState {
    id: Identity,
    config: PartitionConfig,
    partition: Arc<RwLock<Partition>>,
    tasks: JoinSet<()>,
    recovery: JoinSet<()>,
    meters: Meters,
}

/// The partition's series on `/metrics`, labelled by its deployment (one replica per node).
#[derive(Clone)]
struct Meters {
    rows: metrics::Gauge,
    host_bytes: metrics::Gauge,
    gpu_bytes: metrics::Gauge,
    search: metrics::Histogram,
}

impl Meters {
    fn of(deployment: &str) -> Meters {
        let d = deployment.to_owned();
        Meters {
            rows: metrics::gauge!("arbor_partition_rows", "partition" => d.clone()),
            host_bytes: metrics::gauge!(
                "arbor_partition_bytes", "partition" => d.clone(), "memory" => "host"
            ),
            gpu_bytes: metrics::gauge!(
                "arbor_partition_bytes", "partition" => d.clone(), "memory" => "gpu"
            ),
            search: metrics::histogram!("arbor_partition_search_duration_seconds", "partition" => d),
        }
    }

    /// Rows and bytes as the partition holds them now.
    fn observe(&self, partition: &Partition) {
        let stats = partition.stats();
        self.rows.set(stats.count as f64);
        self.host_bytes
            .set((stats.host_bytes + stats.metadata_bytes) as f64);
        self.gpu_bytes.set(stats.device_bytes as f64);
    }
}

/// The most rows one page may carry for vectors of `dim` components.
fn page_cap(dim: usize) -> usize {
    (PAGE_BYTES / (4 * dim + 64)).clamp(1, PAGE_ROWS)
}

/// The replica index at the end of an actor id (`docs.p0/1` → 1).
fn replica_index(actor_id: &str) -> Result<u32, String> {
    actor_id
        .rsplit_once('/')
        .and_then(|(_, r)| r.parse().ok())
        .ok_or_else(|| format!("actor id {actor_id:?} does not end with /REPLICA"))
}

impl ReplicaKind for PartitionReplica {
    type State = PartitionState;

    async fn start(&self, _myself: Me, ctx: ReplicaContext) -> Started<Self::State> {
        let config: PartitionConfig = parse_required_config(Kind::VectorPartition, &ctx, NEEDED)?;
        config.validate().map_err(|e| {
            format!(
                "bad config for {} actor {:?}: {e}",
                Kind::VectorPartition,
                ctx.actor_id
            )
        })?;
        let name = StoreName {
            collection: config.collection.clone(),
            incarnation: config.incarnation,
            partition: config.partition,
            generation: ctx.generation,
        };
        let path = store_path(&ctx.data_dir, &name);
        let device = ctx
            .devices
            .first()
            .map_or(Device::Cpu, |&d| Device::Cuda(d as usize));
        let give_up = tokio::time::Instant::now() + OPEN_PATIENCE;
        let partition = loop {
            let index = IndexConfig {
                spec: config.index,
                quantization: config.quantization,
            };
            let (file, dim, metric) = (path.clone(), config.dim, config.metric);
            let opened = tokio::task::spawn_blocking(move || {
                Partition::open(&file, dim, metric, device, index)
            })
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
            seq = partition.seq(),
            device = %partition.device(),
            index = partition.stats().index,
            "vector partition loaded"
        );
        let id = Identity {
            replica: replica_index(&ctx.actor_id)?,
            deployment: ctx.deployment.clone(),
            generation: ctx.generation,
            actor_id: ctx.actor_id.clone(),
            scope: ctx.scope.clone(),
            control: ctx.control.clone(),
            started_epoch: 0,
            view_floor: Arc::default(),
        };
        let id = Identity {
            started_epoch: id.role().map_or(0, |r| r.epoch()),
            ..id
        };
        let meters = Meters::of(&ctx.deployment);
        meters.observe(&partition);
        let mut partition = partition;
        let build = partition.take_build();
        let partition = Arc::new(RwLock::new(partition));
        if let Some(build) = build {
            adopt_when_built(build, Arc::downgrade(&partition));
        }
        Ok(PartitionState {
            id,
            config,
            partition,
            tasks: JoinSet::new(),
            recovery: JoinSet::new(),
            meters,
        })
    }

    async fn started(&self, myself: Me, state: &mut Self::State) -> Handled {
        // A replica the control plane counts as in sync must hold what it acknowledged. A
        // file created just now, once the set has moved past its first epoch, means the data
        // is gone (a wiped or replaced disk): it must not serve as if it had it.
        let created = read(&state.partition)?.created();
        if created
            && let Some(role) = state.id.role()
            && role.in_sync()
            && role.epoch() > 1
        {
            state
                .id
                .leave_in_sync("its partition file was missing when it started".into())
                .await;
        }
        let job = recovery::Recovery {
            id: state.id.clone(),
            partition: state.partition.clone(),
            myself,
            dim: state.config.dim,
        };
        state.recovery.spawn(job.run());
        Ok(())
    }

    /// Saves the HNSW graph, so that the next start of this replica loads it.
    async fn stopped(&self, state: &mut Self::State) -> Handled {
        let partition = state.partition.clone();
        let actor_id = state.id.actor_id.clone();
        let saved =
            tokio::task::spawn_blocking(move || read(&partition).map(|p| p.save_graph())).await;
        match saved {
            Ok(Ok(Ok(true))) => tracing::info!(%actor_id, "HNSW graph saved"),
            Ok(Ok(Err(e))) => tracing::warn!(%actor_id, "the HNSW graph could not be saved: {e}"),
            _ => {}
        }
        Ok(())
    }

    async fn handle(&self, msg: ReplicaMsg, state: &mut Self::State) -> Handled {
        while state.tasks.try_join_next().is_some() {}
        match msg {
            ReplicaMsg::Partition(request, reply) => match request.into_inner() {
                Ok(request) => return self.request(state, request, reply).await,
                Err(e) => {
                    let why = PartitionFailure::Invalid(format!("request rejected: {e}"));
                    let _ = reply.send(Wire::new(Err(why)));
                }
            },
            ReplicaMsg::Call(request, reply) => {
                let answer = decode_request(request).and_then(|r| call(state, &r.payload));
                let _ = reply.send(Wire::new(answer));
            }
            // Requests for other kinds are refused with what this replica is.
            other => crate::replica::refuse(Kind::VectorPartition, &state.id.actor_id, other),
        }
        Ok(())
    }
}

/// A write that could not be made durable locally: the partition's memory or disk can no
/// longer be trusted, so the replica leaves its in-sync set and fails (the agent restarts it
/// and reports the cause).
pub(crate) struct StorageFailure(pub String);

impl PartitionReplica {
    async fn request(
        &self,
        state: &mut PartitionState,
        request: PartitionRequest,
        reply: RpcReplyPort<Wire<PartitionReply>>,
    ) -> Result<(), ActorProcessingErr> {
        let writes = matches!(
            request,
            PartitionRequest::Write { .. }
                | PartitionRequest::Replicate { .. }
                | PartitionRequest::Install { .. }
        );
        let answered = match request {
            PartitionRequest::Write { epoch, op } => {
                primary::write(&state.id, &state.partition, &state.config, epoch, op).await
            }
            PartitionRequest::Replicate { epoch, seq, op } => {
                match follow(&state.id, &state.partition, epoch, seq, op).await {
                    Followed::Answered(answered) => answered,
                    Followed::Durable { seq, rest } => {
                        // Durable here: the primary may count this replica for the write
                        // while its index takes it in (searches wait for that).
                        let applied = Ok(PartitionAnswer::Applied { seq });
                        let _ = reply.send(Wire::new(applied));
                        let done = rest.await.unwrap_or_else(|e| {
                            Err(StorageFailure(format!("a write task failed: {e}")))
                        });
                        if let Ok(p) = read(&state.partition) {
                            state.meters.observe(&p);
                        }
                        return match done {
                            Ok(_) => Ok(()),
                            Err(StorageFailure(why)) => {
                                state
                                    .id
                                    .leave_in_sync(format!("storage failed: {why}"))
                                    .await;
                                Err(why.into())
                            }
                        };
                    }
                }
            }
            PartitionRequest::Install {
                epoch,
                changes,
                seq,
                history,
            } => install(&state.id, &state.partition, epoch, changes, seq, history).await,
            PartitionRequest::Join {
                replica,
                generation,
                seq,
            } => Ok(primary::join(&state.id, &state.partition, replica, generation, seq).await),
            PartitionRequest::Diverged { history, seq } => Ok(primary::diverged(
                &state.id,
                &state.partition,
                &history,
                seq,
            )),
            // What a catching-up replica reads: each answer is one consistent read, so it
            // runs beside the writes, off the actor.
            PartitionRequest::Changes { after, limit } => {
                let (id, p) = (state.id.clone(), state.partition.clone());
                answer_later(&mut state.tasks, reply, async move {
                    primary::changes(&id, &p, after, limit).await
                });
                return Ok(());
            }
            PartitionRequest::Rows { after, limit } => {
                let (id, p) = (state.id.clone(), state.partition.clone());
                answer_later(&mut state.tasks, reply, async move {
                    primary::rows(&id, &p, after, limit).await
                });
                return Ok(());
            }
            PartitionRequest::Tombstones { after, limit } => {
                let (id, p) = (state.id.clone(), state.partition.clone());
                answer_later(&mut state.tasks, reply, async move {
                    primary::tombstones(&id, &p, after, limit).await
                });
                return Ok(());
            }
            PartitionRequest::Versions(ids) => {
                let (id, p) = (state.id.clone(), state.partition.clone());
                answer_later(&mut state.tasks, reply, async move {
                    primary::versions(&id, &p, ids).await
                });
                return Ok(());
            }
            PartitionRequest::Stats => Ok(read(&state.partition)
                .map(|p| PartitionAnswer::Stats(p.stats()))
                .map_err(|e| PartitionFailure::Unavailable(e.to_string()))),
            PartitionRequest::Search { .. } | PartitionRequest::Get(_) => {
                if let Err(why) = may_serve(&state.id) {
                    Ok(Err(why))
                } else {
                    let search = state.meters.search.clone();
                    spawn_read(&mut state.tasks, &state.partition, reply, request, search);
                    return Ok(());
                }
            }
        };
        if writes && let Ok(p) = read(&state.partition) {
            state.meters.observe(&p);
        }
        match answered {
            Ok(answer) => {
                let _ = reply.send(Wire::new(answer));
                Ok(())
            }
            Err(StorageFailure(why)) => {
                let _ = reply.send(Wire::new(Err(PartitionFailure::Unavailable(why.clone()))));
                state
                    .id
                    .leave_in_sync(format!("storage failed: {why}"))
                    .await;
                Err(why.into())
            }
        }
    }
}

/// Whether this replica may answer reads: it is in sync, and its node's lease holds.
fn may_serve(id: &Identity) -> Result<(), PartitionFailure> {
    if !id.control.lease_valid() {
        return Err(PartitionFailure::Fenced);
    }
    match id.role() {
        Some(role) if role.in_sync() => Ok(()),
        _ => Err(PartitionFailure::NotInSync),
    }
}

/// The partition, read-locked, or why it cannot be.
/// Waits (on the blocking pool) for the HNSW graph being built from the rows the partition
/// loaded, then makes searches use it. Holds the partition weakly: a replica stopped meanwhile
/// is not kept alive (nor its file locked) by its graph.
fn adopt_when_built(build: GraphBuild, partition: Weak<RwLock<Partition>>) {
    tokio::task::spawn_blocking(move || {
        let built = build.wait();
        let Some(partition) = partition.upgrade() else {
            return;
        };
        let store = match partition.write() {
            Ok(mut p) => {
                p.adopt(built);
                let store = p.store_path().to_owned();
                tracing::info!(%store, index = p.stats().index, "partition index ready");
                store
            }
            Err(_) => {
                tracing::warn!("a partition failed before its graph was built");
                return;
            }
        };
        // Saved under a read lock, so that searches go on while the file is written.
        if let Ok(p) = read(&partition)
            && let Err(e) = p.save_graph()
        {
            tracing::warn!(%store, "the HNSW graph could not be saved: {e}");
        }
    });
}

/// Saves the graph that grew since its last save (see [`Partition::save_due`]), on the
/// blocking pool under a read lock: searches go on, writes wait for the file.
fn save_in_background(partition: Weak<RwLock<Partition>>) {
    tokio::task::spawn_blocking(move || {
        let Some(partition) = partition.upgrade() else {
            return;
        };
        let Ok(p) = read(&partition) else {
            return;
        };
        let started = std::time::Instant::now();
        match p.save_graph() {
            Ok(true) => tracing::info!(
                store = %p.store_path(),
                rows = p.len(),
                seconds = started.elapsed().as_secs_f64(),
                "HNSW graph saved"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(store = %p.store_path(), "the HNSW graph could not be saved: {e}")
            }
        }
    });
}

fn read(
    partition: &RwLock<Partition>,
) -> Result<std::sync::RwLockReadGuard<'_, Partition>, String> {
    partition
        .read()
        .map_err(|_| "the partition failed and is being reloaded".to_string())
}

/// Runs `f` on the blocking pool with the partition write-locked. An error that leaves the
/// partition untrustworthy (storage, memory diverged from disk) is a [`StorageFailure`];
/// one that refused the input changed nothing.
async fn locked<T: Send + 'static>(
    partition: &Arc<RwLock<Partition>>,
    f: impl FnOnce(&mut Partition) -> Result<T, PartitionError> + Send + 'static,
) -> Result<Result<T, PartitionFailure>, StorageFailure> {
    let partition = partition.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut p = partition
            .write()
            .map_err(|_| StorageFailure("a write panicked earlier".into()))?;
        let done = f(&mut p);
        // A write may start a graph build (an int8 partition that trained its quantizer).
        if let Some(build) = p.take_build() {
            let _inside = runtime.enter();
            adopt_when_built(build, Arc::downgrade(&partition));
        }
        let save = p.save_due();
        drop(p);
        if save {
            let _inside = runtime.enter();
            save_in_background(Arc::downgrade(&partition));
        }
        match done {
            Ok(v) => Ok(Ok(v)),
            Err(PartitionError::Invalid(e)) => Ok(Err(PartitionFailure::Invalid(e.to_string()))),
            Err(e @ (PartitionError::Filter(_) | PartitionError::BadSearch(_))) => {
                Ok(Err(PartitionFailure::Invalid(e.to_string())))
            }
            Err(e) => Err(StorageFailure(e.to_string())),
        }
    })
    .await
    .unwrap_or_else(|e| Err(StorageFailure(format!("a write task failed: {e}"))))
}

/// What a follower made of a write.
enum Followed {
    /// Refused (stale epoch, out of sync, bad input) or failed before it was durable.
    Answered(Result<PartitionReply, StorageFailure>),
    /// Durable as `seq`; `rest` applies it to memory, holding the partition until done.
    Durable {
        seq: u64,
        rest: tokio::task::JoinHandle<Result<Result<u64, PartitionFailure>, StorageFailure>>,
    },
}

/// A follower's side of [`PartitionRequest::Replicate`]: applies write `seq` right after
/// `seq - 1`, from a primary of an epoch not older than the one this node knows. It is
/// answered once the write is durable; the index takes it in after (see
/// [`crate::partition::Durable`]).
async fn follow(
    id: &Identity,
    partition: &Arc<RwLock<Partition>>,
    epoch: u64,
    seq: u64,
    op: WriteOp,
) -> Followed {
    let known = id.role().map_or(0, |r| r.epoch());
    if epoch < known {
        return Followed::Answered(Ok(Err(PartitionFailure::StaleEpoch {
            asked: epoch,
            current: known,
        })));
    }
    let (durable_tx, durable_rx) = tokio::sync::oneshot::channel();
    let rest = tokio::spawn({
        let partition = partition.clone();
        async move {
            locked(&partition, move |p| {
                if p.seq() + 1 != seq {
                    return Ok(Err(PartitionFailure::OutOfSync {
                        seq: p.seq(),
                        history: p.history().clone(),
                    }));
                }
                let prepared = p.prepare(&op)?;
                let durable = p.persist(prepared, epoch)?;
                let _ = durable_tx.send(durable.seq());
                Ok(Ok(p.reflect_durable(durable)?.seq))
            })
            .await
            .map(Result::flatten)
        }
    });
    match durable_rx.await {
        Ok(seq) => Followed::Durable { seq, rest },
        // It ended before the write was durable.
        Err(_) => Followed::Answered(match rest.await {
            Ok(done) => done.map(|r| r.map(|seq| PartitionAnswer::Applied { seq })),
            Err(e) => Err(StorageFailure(format!("a write task failed: {e}"))),
        }),
    }
}

/// A replica's side of [`PartitionRequest::Install`]: changes from the primary of an epoch
/// not older than the one this node knows.
async fn install(
    id: &Identity,
    partition: &Arc<RwLock<Partition>>,
    epoch: u64,
    changes: Vec<crate::partition::Change>,
    seq: u64,
    history: Vec<(u64, u64)>,
) -> Result<PartitionReply, StorageFailure> {
    let known = id.role().map_or(0, |r| r.epoch());
    if epoch < known {
        return Ok(Err(PartitionFailure::StaleEpoch {
            asked: epoch,
            current: known,
        }));
    }
    locked(partition, move |p| {
        p.install(&changes, seq, &history)?;
        Ok(PartitionAnswer::Applied { seq })
    })
    .await
}

/// Answers `reply` with `answer` once it is ready, in a task of the actor's own (dropped with
/// the actor).
fn answer_later(
    tasks: &mut JoinSet<()>,
    reply: RpcReplyPort<Wire<PartitionReply>>,
    answer: impl std::future::Future<Output = PartitionReply> + Send + 'static,
) {
    tasks.spawn(async move {
        let _ = reply.send(Wire::new(answer.await));
    });
}

/// Runs a read on the blocking pool, off the actor, and answers `reply` with it; the actor
/// goes on with other requests meanwhile (reads share the lock).
fn spawn_read(
    tasks: &mut JoinSet<()>,
    partition: &Arc<RwLock<Partition>>,
    reply: RpcReplyPort<Wire<PartitionReply>>,
    request: PartitionRequest,
    latency: metrics::Histogram,
) {
    let partition = partition.clone();
    tasks.spawn(async move {
        let answer = tokio::task::spawn_blocking(move || {
            let p = read(&partition).map_err(PartitionFailure::Unavailable)?;
            match request {
                PartitionRequest::Search {
                    queries,
                    k,
                    filter,
                    ef,
                } => {
                    let started = std::time::Instant::now();
                    let ef = ef.map(|ef| ef as usize);
                    let hits = search(&p, &queries, k as usize, filter.as_deref(), ef);
                    latency.record(started.elapsed().as_secs_f64());
                    hits
                }
                PartitionRequest::Get(ids) => p
                    .get(&ids)
                    .map(PartitionAnswer::Records)
                    .map_err(|e| PartitionFailure::Invalid(e.to_string())),
                other => Err(PartitionFailure::Invalid(format!("not a read: {other:?}"))),
            }
        })
        .await
        .unwrap_or_else(|e| {
            Err(PartitionFailure::Unavailable(format!(
                "a read task failed: {e}"
            )))
        });
        let _ = reply.send(Wire::new(answer));
    });
}

fn search(
    p: &Partition,
    queries: &[Vec<f32>],
    k: usize,
    filter: Option<&str>,
    ef: Option<usize>,
) -> PartitionReply {
    let filter = filter
        .map(MetadataFilter::parse)
        .transpose()
        .map_err(|e| PartitionFailure::Invalid(format!("bad filter: {e}")))?;
    p.search_ef(queries, k, filter.as_ref(), ef)
        .map(PartitionAnswer::Hits)
        .map_err(|e| match e {
            PartitionError::Store(e) => PartitionFailure::Unavailable(e.to_string()),
            e => PartitionFailure::Invalid(e.to_string()),
        })
}

/// The generic call (`arbor call`): `{"stats": true}` answers the stats as JSON, with the
/// replica's role.
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
            let stats = read(&state.partition)
                .map_err(CallFailure::Unavailable)?
                .stats();
            let encoding =
                |e: serde_json::Error| CallFailure::Failed(format!("could not encode stats: {e}"));
            let mut value = serde_json::to_value(&stats).map_err(encoding)?;
            value["role"] = serde_json::Value::from(match state.id.role() {
                Some(Role::Primary { .. }) => "primary",
                Some(Role::Follower { .. }) => "follower",
                Some(Role::Recovering { .. }) => "recovering",
                Some(Role::Waiting { .. }) | None => "waiting",
            });
            serde_json::to_vec(&value).map_err(encoding)
        }
        Ok(_) => Err(CallFailure::Invalid(USAGE.into())),
        Err(e) => Err(CallFailure::Invalid(format!("{USAGE}; got: {e}"))),
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
        assert_eq!(c.write_deadline_ms, 2000);
        let c = parse(r#"{"collection":"d","incarnation":4,"partition":0,"dim":3,"metric":"l2"}"#)
            .unwrap();
        assert_eq!(c.metric, Metric::L2);
        assert_eq!(c.incarnation, 4);
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

    #[test]
    fn replica_index_is_the_actor_ids_suffix() {
        assert_eq!(replica_index("docs.p0/3"), Ok(3));
        assert!(replica_index("docs.p0").is_err());
    }
}
