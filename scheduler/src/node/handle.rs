//! [`RaftHandle`]: the cloneable client of one node's control plane (propose, read,
//! status, membership changes, subscribe).

use super::*;

/// The cloneable client API of one node. Every method may be called from any node; the
/// node forwards proposals to the leader and retries them across leader changes.
#[derive(Clone)]
pub struct RaftHandle {
    pub(super) id: NodeId,
    pub(super) tx: mpsc::Sender<Request>,
    pub(super) events: broadcast::Sender<StateEvent>,
    pub(super) seq: Arc<AtomicU64>,
    pub(super) client: ClientTiming,
    pub(super) halted: watch::Receiver<Option<Halt>>,
}

impl RaftHandle {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Resolves once the node's Ready loop has stopped on its own, with the reason; never
    /// while the node runs or after a requested shutdown or kill.
    pub async fn halted(&self) -> Halt {
        let mut rx = self.halted.clone();
        loop {
            if let Some(h) = rx.borrow_and_update().clone() {
                return h;
            }
            if rx.changed().await.is_err() {
                // The sender is gone without a halt: shut down or killed. Never resolve.
                std::future::pending::<()>().await;
            }
        }
    }

    fn next_id(&self) -> RequestId {
        RequestId::now(self.id, self.seq.fetch_add(1, Ordering::Relaxed))
    }

    async fn submit(&self, entry: PendingEntry) -> Result<CommandOutcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        let id = self.next_id();
        let entry = match entry {
            PendingEntry::Normal(_) => entry,
            PendingEntry::Conf(mut cc) => {
                let mut ctx = ConfContext::decode(&cc.context)
                    .map_err(|e| ProposeError::Encode(format!("membership context: {e}")))?;
                ctx.id = id;
                cc.context = ctx
                    .encode()
                    .map_err(|e| ProposeError::Encode(e.to_string()))?
                    .into();
                PendingEntry::Conf(cc)
            }
        };
        self.tx
            .send(Request::Propose { id, entry, reply })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        let timeout = self.client.propose_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout(timeout)),
        }
    }

    /// Proposes `command` and waits until it is applied; returns its outcome, or the reason
    /// the state machine rejected it.
    pub async fn propose(&self, command: Command) -> Result<CommandOutcome, ProposeError> {
        let started = std::time::Instant::now();
        let result = self.propose_once(command).await;
        let outcome = match &result {
            Ok(_) => "applied",
            Err(ProposeError::Rejected(_)) => "rejected",
            Err(_) => "unavailable",
        };
        metrics::histogram!("arbor_raft_proposal_duration_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn propose_once(&self, command: Command) -> Result<CommandOutcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        let id = self.next_id();
        let data = Proposal { id, command }
            .encode()
            .map_err(|e| ProposeError::Encode(e.to_string()))?;
        self.tx
            .send(Request::Propose {
                id,
                entry: PendingEntry::Normal(data),
                reply,
            })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        let timeout = self.client.propose_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout(timeout)),
        }
    }

    /// Proposes raw entry bytes, as a newer version's command would look to this one: only
    /// for tests of what a node does with an entry it cannot decode.
    #[doc(hidden)]
    pub async fn propose_undecodable(&self, data: Vec<u8>) -> Result<(), ProposeError> {
        let (reply, _rx) = oneshot::channel();
        self.tx
            .send(Request::Propose {
                id: self.next_id(),
                entry: PendingEntry::Normal(data),
                reply,
            })
            .await
            .map_err(|_| ProposeError::Stopped)
    }

    /// Runs `f` on a linearizable view of the state: after a ReadIndex round confirms this
    /// node has applied everything committed when the read began. `f` runs on the node's
    /// Ready loop, so keep it short (clone what you need).
    pub async fn read<R, F>(&self, f: F) -> Result<R, ReadError>
    where
        R: Send + 'static,
        F: FnOnce(&ClusterState) -> R + Send + 'static,
    {
        self.read_at(move |_, s| f(s)).await
    }

    /// [`RaftHandle::read`], with the applied index the state is at.
    pub async fn read_at<R, F>(&self, f: F) -> Result<R, ReadError>
    where
        R: Send + 'static,
        F: FnOnce(u64, &ClusterState) -> R + Send + 'static,
    {
        let rx = self.enqueue(f, |f| Request::Read { f }).await?;
        let timeout = self.client.read_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            // The node dropped the read: its deadline passed, or it stopped.
            Ok(Err(_)) => Err(ReadError::Timeout(timeout)),
            Err(_) => Err(ReadError::Timeout(timeout)),
        }
    }

    /// Hands `f` to the Ready loop as the request `wrap` makes; its result comes back on the
    /// returned channel.
    async fn enqueue<R, F>(
        &self,
        f: F,
        wrap: impl FnOnce(ReadFn) -> Request,
    ) -> Result<oneshot::Receiver<R>, ReadError>
    where
        R: Send + 'static,
        F: FnOnce(u64, &ClusterState) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let f: ReadFn = Box::new(move |applied, s| {
            let _ = tx.send(f(applied, s));
        });
        self.tx
            .send(wrap(f))
            .await
            .map_err(|_| ReadError::Stopped)?;
        Ok(rx)
    }

    /// Runs `f` on this node's state as applied so far, without asking the leader: possibly
    /// stale, but answered even without a quorum. For work that follows commits anyway
    /// (a node agent watching its own placements).
    pub async fn read_local<R, F>(&self, f: F) -> Result<R, ReadError>
    where
        R: Send + 'static,
        F: FnOnce(&ClusterState) -> R + Send + 'static,
    {
        self.read_local_at(move |_, s| f(s)).await
    }

    /// [`RaftHandle::read_local`], with the applied index the state is at.
    pub async fn read_local_at<R, F>(&self, f: F) -> Result<R, ReadError>
    where
        R: Send + 'static,
        F: FnOnce(u64, &ClusterState) -> R + Send + 'static,
    {
        let rx = self.enqueue(f, |f| Request::ReadLocal { f }).await?;
        rx.await.map_err(|_| ReadError::Stopped)
    }

    /// A linearizable copy of the whole state.
    pub async fn read_state(&self) -> Result<ClusterState, ReadError> {
        self.read(|s| s.clone()).await
    }

    /// Changes applied on this node from now on. A receiver that falls behind gets
    /// `RecvError::Lagged` and should re-read the state.
    pub fn subscribe(&self) -> broadcast::Receiver<StateEvent> {
        self.events.subscribe()
    }

    /// This node's raft status.
    pub async fn status(&self) -> Result<NodeStatus, ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Status(tx))
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)
    }

    fn conf(
        &self,
        change: ConfChangeType,
        node: NodeId,
        address: Option<String>,
        promote: bool,
    ) -> Result<PendingEntry, ProposeError> {
        let mut cc = ConfChange::default();
        cc.set_change_type(change);
        cc.node_id = node;
        let ctx = ConfContext {
            id: RequestId {
                origin: 0,
                seq: 0,
                at_ms: 0,
            },
            address,
            promote_when_caught_up: promote,
        };
        cc.context = ctx
            .encode()
            .map_err(|e| ProposeError::Encode(e.to_string()))?
            .into();
        Ok(PendingEntry::Conf(cc))
    }

    /// Adds node `id` (reachable for raft at `raft_addr`) as a learner; the leader promotes it
    /// to voter once it has caught up. Returns when the learner is in the configuration; poll
    /// [`RaftHandle::status`] (voters) to see the promotion.
    pub async fn add_node(
        &self,
        id: NodeId,
        raft_addr: String,
    ) -> Result<CommandOutcome, ProposeError> {
        let e = self.conf(ConfChangeType::AddLearnerNode, id, Some(raft_addr), true)?;
        self.submit(e).await
    }

    /// Adds node `id` as a learner that stays a learner.
    pub async fn add_learner(
        &self,
        id: NodeId,
        raft_addr: String,
    ) -> Result<CommandOutcome, ProposeError> {
        let e = self.conf(ConfChangeType::AddLearnerNode, id, Some(raft_addr), false)?;
        self.submit(e).await
    }

    /// Promotes learner `id` to voter now (rejected unless it is a learner).
    pub async fn promote(&self, id: NodeId) -> Result<CommandOutcome, ProposeError> {
        let e = self.conf(ConfChangeType::AddNode, id, None, false)?;
        self.submit(e).await
    }

    /// Removes member `id` (voter or learner).
    pub async fn remove_node(&self, id: NodeId) -> Result<CommandOutcome, ProposeError> {
        let e = self.conf(ConfChangeType::RemoveNode, id, None, false)?;
        self.submit(e).await
    }
}
