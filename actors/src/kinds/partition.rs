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

use std::sync::{Arc, RwLock};
use std::time::Duration;

use arbor_kernels::device::Device;
use arbor_kernels::topk::Metric;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Deserialize;
use tokio::task::JoinSet;

use super::{Kind, ReplicaContext, parse_required_config};
use crate::partition::{
    MetadataFilter, Partition, PartitionAnswer, PartitionError, PartitionReply, PartitionRequest,
    StoreError, WriteAck, store_path,
};
use crate::replica::{CallReply, ReplicaMsg, decode_request};
use crate::wire::Wire;

/// How long a starting replica waits for a previous incarnation to let go of its file (a
/// killed actor's last commit may still be finishing on the blocking pool).
const OPEN_PATIENCE: Duration = Duration::from_secs(10);
const OPEN_RETRY: Duration = Duration::from_millis(50);
/// The longest collection name, in bytes.
const MAX_COLLECTION_LEN: usize = 128;

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
    tasks: JoinSet<()>,
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
            tasks: JoinSet::new(),
        })
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
            ReplicaMsg::Embed(_, reply) => {
                let _ = reply.send(Wire::new(crate::replica::not_an_embedder(
                    Kind::VectorPartition,
                    &state.ctx.actor_id,
                )));
            }
            ReplicaMsg::Model(_, reply) => {
                crate::replica::not_a_model(Kind::VectorPartition, reply)
            }
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
                let done = write(&state.partition, move |p| p.upsert(records)).await;
                answer_write(done, reply, |a| PartitionAnswer::Written {
                    seq: a.seq,
                    count: count32(a.count),
                })
            }
            PartitionRequest::Delete(ids) => {
                let done = write(&state.partition, move |p| p.delete(&ids)).await;
                answer_write(done, reply, |a| PartitionAnswer::Deleted {
                    seq: a.seq,
                    count: count32(a.count),
                })
            }
            PartitionRequest::Search { queries, k, filter } => {
                let partition = state.partition.clone();
                state.tasks.spawn(async move {
                    let answer = tokio::task::spawn_blocking(move || {
                        search(&partition, &queries, k as usize, filter.as_deref())
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("search task failed: {e}")));
                    let _ = reply.send(Wire::new(answer));
                });
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

fn search(
    partition: &RwLock<Partition>,
    queries: &[Vec<f32>],
    k: usize,
    filter: Option<&str>,
) -> PartitionReply {
    let filter = filter
        .map(MetadataFilter::parse)
        .transpose()
        .map_err(|e| format!("bad filter: {e}"))?;
    let p = partition
        .read()
        .map_err(|_| "the partition failed and is being reloaded".to_string())?;
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
