//! How a replica that is not in sync catches up with its primary, for as long as the replica
//! runs (it may fall out of sync again later):
//!
//! 1. it asks the primary where their histories part ([`PartitionRequest::Diverged`]);
//! 2. it undoes what it holds past that point on the primary's word alone: the ids it wrote
//!    since are set to the primary's versions of them ([`PartitionRequest::Versions`]), or,
//!    when nothing is shared, it starts empty;
//! 3. it copies every change after that point, page by page ([`PartitionRequest::Changes`]);
//!    a row written again meanwhile comes again in a later page. When nothing is shared that
//!    is every row and delete the primary holds, in the order they were written: a sequential
//!    read of the primary's log, appended to this replica's. Each page is durable with the
//!    sequence number it covers, so a copy that stops half way goes on from there;
//! 4. it asks to join ([`PartitionRequest::Join`]): the primary sends what came after the
//!    last page, between two writes, and vouches for it to the control plane.
//!
//! Until the control plane lists it as in sync it serves no read, and its primary sends it
//! no write. Failures retry with backoff; a change of primary starts over.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::ActorRef;

use super::{Identity, StorageFailure, locked, page_cap, read};
use crate::partition::replication::Role;
use crate::partition::{
    MAX_GET_IDS, Partition, PartitionAnswer, PartitionFailure, PartitionRequest, remote,
};
use crate::replica::ReplicaMsg;

/// How long one request to the primary may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(30);
/// A join: the primary's last copy and a control-plane commit.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The recovery task of one replica.
pub(super) struct Recovery {
    pub id: Identity,
    pub partition: Arc<RwLock<Partition>>,
    pub myself: ActorRef<ReplicaMsg>,
    pub dim: usize,
}

/// Why one attempt did not end in sync.
enum Attempt {
    /// Try again after a backoff.
    Retry(String),
    /// The local store failed: the replica must stop.
    Fatal(String),
}

impl From<StorageFailure> for Attempt {
    fn from(f: StorageFailure) -> Self {
        Attempt::Fatal(f.0)
    }
}

impl From<PartitionFailure> for Attempt {
    fn from(f: PartitionFailure) -> Self {
        Attempt::Retry(f.to_string())
    }
}

impl Recovery {
    pub async fn run(self) {
        let mut views = self.id.control.subscribe();
        let mut backoff = RETRY_FIRST;
        loop {
            let primary = match self.id.role() {
                Some(Role::Recovering { primary, .. }) => primary,
                // In sync, waiting for an in-sync replica, or not in the state: nothing to do
                // until the view changes.
                _ => {
                    backoff = RETRY_FIRST;
                    if views.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            match self.attempt(primary).await {
                Ok(epoch) => {
                    backoff = RETRY_FIRST;
                    // Wait until this node has heard of the join.
                    let _ = self
                        .id
                        .control
                        .view_at(&self.id.deployment, epoch, Duration::from_secs(5))
                        .await;
                }
                Err(Attempt::Fatal(why)) => {
                    self.id
                        .leave_in_sync(format!("storage failed while catching up: {why}"))
                        .await;
                    self.myself
                        .stop(Some(format!("storage failed while catching up: {why}")));
                    return;
                }
                Err(Attempt::Retry(why)) => {
                    tracing::info!(
                        actor_id = %self.id.actor_id,
                        primary = primary.0,
                        "catching up: {why}; again in {backoff:?}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// One pass of steps 1–4 against the primary `(replica, generation)`; the epoch at which
    /// this replica joined.
    async fn attempt(&self, (replica, generation): (u32, u64)) -> Result<u64, Attempt> {
        let cell = remote::member(&self.id.scope, &self.id.deployment, replica, generation)
            .ok_or_else(|| Attempt::Retry(format!("primary {replica} is not reachable yet")))?;
        let ask = |request| remote::ask(&cell, request, ASK_TIMEOUT);
        let (history, seq) = {
            let p = read(&self.partition).map_err(Attempt::Fatal)?;
            (p.history().clone(), p.seq())
        };
        // 1. Where the histories part.
        let common = match ask(PartitionRequest::Diverged {
            history: history.clone(),
            seq,
        })
        .await?
        {
            PartitionAnswer::Common { common, .. } => common,
            other => return Err(Attempt::Retry(format!("answered {other:?}"))),
        };
        // 2. Undo what the primary never had.
        if common < seq {
            tracing::warn!(
                actor_id = %self.id.actor_id,
                common,
                seq,
                "this replica holds writes its primary never had; undoing them"
            );
            if common == 0 {
                locked(&self.partition, |p| p.reset()).await??;
            } else {
                let ids = read(&self.partition)
                    .map_err(Attempt::Fatal)?
                    .written_after(common)
                    .map_err(|e| Attempt::Fatal(e.to_string()))?;
                let kept: Vec<(u64, u64)> = history
                    .iter()
                    .copied()
                    .filter(|(_, s)| *s <= common)
                    .collect();
                for chunk in ids.chunks(MAX_GET_IDS) {
                    let PartitionAnswer::Versions(changes) =
                        ask(PartitionRequest::Versions(chunk.to_vec())).await?
                    else {
                        return Err(Attempt::Retry("not an answer to versions".into()));
                    };
                    let kept = kept.clone();
                    locked(&self.partition, move |p| p.install(&changes, common, &kept)).await??;
                }
                if ids.is_empty() {
                    locked(&self.partition, move |p| p.install(&[], common, &kept)).await??;
                }
            }
        }
        let limit = u32::try_from(page_cap(self.dim)).unwrap_or(u32::MAX);
        let mut copied = 0usize;
        let mut installing: Option<tokio::task::JoinHandle<_>> = None;
        // 3. Every change after `common` (all of them when nothing is shared): the next page
        // is asked for while the last one installs (pages install in order: one install at a
        // time).
        let mut after = (common, u64::MAX);
        loop {
            let answer = ask(PartitionRequest::Changes { after, limit }).await;
            if let Some(previous) = installing.take() {
                previous
                    .await
                    .map_err(|e| Attempt::Fatal(format!("an install task failed: {e}")))???;
            }
            let PartitionAnswer::Changes {
                changes,
                next,
                seq,
                history,
            } = answer?
            else {
                return Err(Attempt::Retry("not an answer to changes".into()));
            };
            let covered = next.map_or(seq, |(s, _)| s.saturating_sub(1));
            copied += changes.len();
            let partition = self.partition.clone();
            installing = Some(tokio::spawn(async move {
                locked(&partition, move |p| p.install(&changes, covered, &history)).await
            }));
            match next {
                Some(n) => after = n,
                None => break,
            }
        }
        if let Some(last) = installing.take() {
            last.await
                .map_err(|e| Attempt::Fatal(format!("an install task failed: {e}")))???;
        }
        // 4. Join.
        let seq = read(&self.partition).map_err(Attempt::Fatal)?.seq();
        let joined = remote::ask(
            &cell,
            PartitionRequest::Join {
                replica: self.id.replica,
                generation: self.id.generation,
                seq,
            },
            JOIN_TIMEOUT,
        )
        .await?;
        let PartitionAnswer::Joined { epoch } = joined else {
            return Err(Attempt::Retry(format!("answered {joined:?}")));
        };
        tracing::info!(
            actor_id = %self.id.actor_id,
            common,
            copied,
            seq,
            epoch,
            "caught up with the primary; in sync"
        );
        Ok(epoch)
    }
}
