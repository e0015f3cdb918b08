//! Replica access: which replicas of a partition may be read (in sync, current epoch), writes
//! through the primary with patience across failovers, reads and hedged searches.

use super::*;

impl Coordinator {
    pub(super) fn deployment(&self, partition: u32) -> String {
        partition_deployment(&self.route.collection, partition)
    }

    /// The in-sync replicas of `partition` this node can reach, in random order: the only
    /// ones that may answer a read.
    pub(super) fn readable(&self, partition: u32) -> Vec<ActorCell> {
        let deployment = self.deployment(partition);
        let Some(view) = self.control.view(&deployment) else {
            return Vec::new();
        };
        let mut cells: Vec<ActorCell> = view
            .set
            .in_sync
            .iter()
            .filter_map(|(r, g)| remote::member(&self.scope, &deployment, *r, *g))
            .collect();
        if !cells.is_empty() {
            let first = rand::random_range(0..cells.len());
            cells.rotate_left(first);
        }
        cells
    }

    /// Writes to the partition's primary, which answers once every in-sync replica has the
    /// write durable. While the replica set changes (a failover, a dropped follower, this
    /// node behind the control plane) it tries again, for up to `write_patience_ms`; writes
    /// are idempotent (rows by id), so a try that timed out may be repeated.
    pub(super) async fn write(&self, partition: u32, op: WriteOp) -> Result<(), RetrievalError> {
        let request = |epoch| PartitionRequest::Write {
            epoch,
            op: op.clone(),
        };
        let invalid = |reason| RetrievalError::Write { partition, reason };
        match self
            .ask_primary(partition, request, WRITE_TIMEOUT, invalid)
            .await?
        {
            PartitionAnswer::Written { .. } => Ok(()),
            other => Err(RetrievalError::Write {
                partition,
                reason: format!("a write was answered with {}", answer_name(&other)),
            }),
        }
    }

    /// Asks the partition's primary (the request made for the epoch the coordinator knows),
    /// with the patience of a write: while the replica set changes it finds the new primary
    /// and asks again. A request the primary refuses as invalid fails with `invalid`.
    pub(super) async fn ask_primary(
        &self,
        partition: u32,
        request: impl Fn(u64) -> PartitionRequest,
        timeout: Duration,
        invalid: impl Fn(String) -> RetrievalError,
    ) -> Result<PartitionAnswer, RetrievalError> {
        let deployment = self.deployment(partition);
        let deadline = Instant::now() + Duration::from_millis(self.route.write_patience_ms);
        let unavailable = |reason: String| RetrievalError::Unavailable {
            collection: self.route.collection.clone(),
            partition,
            reason,
        };
        let mut last = String::from("no primary yet");
        while Instant::now() < deadline {
            let Some(view) = self.control.view(&deployment) else {
                return Err(RetrievalError::NoReplica {
                    collection: self.route.collection.clone(),
                    partition,
                });
            };
            let Some((primary, generation)) = view.primary() else {
                last = format!(
                    "no in-sync replica is left (epoch {}); it waits for one to return",
                    view.set.epoch
                );
                let _ = self
                    .control
                    .view_at(&deployment, view.set.epoch + 1, Duration::from_millis(500))
                    .await;
                continue;
            };
            let Some(cell) = remote::member(&self.scope, &deployment, primary, generation) else {
                last = format!("its primary (replica {primary}) is not reachable from this node");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            match remote::ask(&cell, request(view.set.epoch), timeout).await {
                Ok(answer) => return Ok(answer),
                Err(PartitionFailure::Invalid(reason)) => return Err(invalid(reason)),
                Err(PartitionFailure::StaleEpoch { current, .. }) => {
                    last = format!("this node knew epoch {}, not {current}", view.set.epoch);
                    let _ = self
                        .control
                        .view_at(&deployment, current, Duration::from_secs(1))
                        .await;
                }
                Err(e) => {
                    last = e.to_string();
                    let _ = self
                        .control
                        .view_at(&deployment, view.set.epoch + 1, Duration::from_millis(200))
                        .await;
                }
            }
        }
        Err(unavailable(last))
    }

    /// Asks one in-sync replica of `partition` at a time (starting at a random one) until one
    /// answers: a replica that fails, times out or is not in sync passes it on to the next.
    /// When none is reachable, or every one failed for a reason that passes (a replica set
    /// that changes, a node that lost the control plane for an election), it tries again, for
    /// the write patience: the reads made for a write, such as an ingest's, share it.
    pub(super) async fn read(
        &self,
        partition: u32,
        request: PartitionRequest,
    ) -> Result<PartitionAnswer, RetrievalError> {
        let deployment = self.deployment(partition);
        let deadline = Instant::now() + Duration::from_millis(self.route.write_patience_ms);
        let mut reasons: Vec<String> = Vec::new();
        loop {
            let members = self.readable(partition);
            if members.is_empty() {
                reasons = vec!["no in-sync replica is reachable".into()];
            } else {
                reasons.clear();
            }
            for member in members {
                match remote::ask(&member, request.clone(), READ_TIMEOUT).await {
                    Ok(answer) => return Ok(answer),
                    Err(PartitionFailure::Invalid(reason)) => {
                        return Err(RetrievalError::Read { partition, reason });
                    }
                    Err(why) => reasons.push(why.to_string()),
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            match self.control.view(&deployment) {
                Some(view) => {
                    let next = view.set.epoch + 1;
                    let _ = self
                        .control
                        .view_at(&deployment, next, Duration::from_millis(200))
                        .await;
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Err(RetrievalError::Unavailable {
            collection: self.route.collection.clone(),
            partition,
            reason: reasons.join("; "),
        })
    }

    pub(super) fn hedge_budget(&self) -> std::sync::MutexGuard<'_, HedgeBudget> {
        self.hedges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One partition's hits, or `None` if no in-sync replica answered in time.
    pub(super) async fn search(
        &self,
        partition: u32,
        request: PartitionRequest,
    ) -> Option<Vec<SearchHit>> {
        let timeout = Duration::from_millis(self.route.search_timeout_ms);
        let hedge_after = Duration::from_millis(self.route.hedge_after_ms);
        let members = self.readable(partition);
        if members.is_empty() {
            return None;
        }
        let ask = |cell: ActorCell| {
            let request = request.clone();
            async move { hits_of(remote::ask(&cell, request, timeout).await) }
        };
        let primary = ask(members[0].clone());
        tokio::pin!(primary);
        self.hedge_budget().on_request();
        let Some(second) = members.get(1).cloned() else {
            return primary.await;
        };
        tokio::select! {
            found = &mut primary => match found {
                Some(hits) => return Some(hits),
                None => return ask(second).await,
            },
            _ = tokio::time::sleep(hedge_after) => {}
        }
        if !self.hedge_budget().try_hedge() {
            // Over budget: the cluster is likely saturated, and a twin would only add load.
            return match primary.await {
                Some(hits) => Some(hits),
                None => ask(second).await,
            };
        }
        let hedge = ask(second);
        tokio::pin!(hedge);
        // The first answer wins; a failure waits for the other.
        tokio::select! {
            found = &mut primary => match found {
                Some(hits) => Some(hits),
                None => hedge.await,
            },
            found = &mut hedge => match found {
                Some(hits) => Some(hits),
                None => primary.await,
            },
        }
    }
}

pub(super) fn hits_of(reply: PartitionReply) -> Option<Vec<SearchHit>> {
    match reply {
        Ok(PartitionAnswer::Hits(mut per_query)) => per_query.pop(),
        Ok(_) => None,
        Err(why) => {
            tracing::warn!("a partition replica did not search: {why}");
            None
        }
    }
}

/// A task's result, its panic or cancellation made an error.
pub(super) fn joined<T>(
    r: Result<Result<T, RetrievalError>, tokio::task::JoinError>,
) -> Result<T, RetrievalError> {
    r.unwrap_or_else(|e| {
        Err(RetrievalError::Invalid(format!(
            "an ingest task failed: {e}"
        )))
    })
}

pub(super) fn answer_name(a: &PartitionAnswer) -> &'static str {
    match a {
        PartitionAnswer::Written { .. } => "written",
        PartitionAnswer::Hits(_) => "hits",
        PartitionAnswer::Stats(_) => "stats",
        PartitionAnswer::Records(_) => "records",
        PartitionAnswer::Applied { .. } => "applied",
        PartitionAnswer::Common { .. } => "a common prefix",
        PartitionAnswer::Changes { .. } => "changes",
        PartitionAnswer::Versions(_) => "versions",
        PartitionAnswer::Rows { .. } => "rows",
        PartitionAnswer::Tombstones { .. } => "tombstones",
        PartitionAnswer::Joined { .. } => "joined",
    }
}
