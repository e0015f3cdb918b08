//! The Ready loop: one task owns the `RawNode`, takes requests and network events, ticks,
//! persists, applies and replies.

use super::*;

pub(super) fn storage(e: StoreError) -> Halt {
    Halt::Storage(e.to_string())
}

pub(super) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs blocking storage work without stalling other tasks on a multi-thread runtime.
pub(super) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub(super) struct Driver {
    pub(super) id: NodeId,
    pub(super) raw: RawNode<RedbStorage>,
    pub(super) machine: StateMachine,
    pub(super) applied: u64,
    pub(super) transport: Transport,
    pub(super) events: broadcast::Sender<StateEvent>,
    pub(super) pending: HashMap<RequestId, PendingProposal>,
    pub(super) reads: HashMap<u64, PendingRead>,
    pub(super) ready_reads: Vec<(u64, ReadFn)>,
    pub(super) next_read: u64,
    pub(super) leader: NodeId,
    pub(super) config: NodeConfig,
    pub(super) promotion_seq: u64,
    /// This node removed itself from the voters while leading: it hands leadership over (raft-rs
    /// 0.7 would keep a non-member leader leading).
    pub(super) hand_over: bool,
    pub(super) applied_dirty: bool,
    /// When each peer last sent this node a raft message.
    pub(super) last_heard: HashMap<NodeId, Instant>,
}

/// Most requests handled between two Ready rounds (bounds latency under load).
pub(super) const MAX_BATCH: usize = 4096;

impl Driver {
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Request>,
        mut net: mpsc::Receiver<NetEvent>,
    ) -> Result<(), Halt> {
        let mut ticker = tokio::time::interval(self.config.raft.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop: Option<oneshot::Sender<()>> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.on_tick();
                }
                req = rx.recv() => match req {
                    Some(r) => self.handle_request(r, &mut stop),
                    None => return Ok(()),
                },
                ev = net.recv() => match ev {
                    Some(e) => self.handle_net(e)?,
                    None => return Ok(()),
                },
            }
            let mut n = 0;
            while n < MAX_BATCH {
                match net.try_recv() {
                    Ok(e) => self.handle_net(e)?,
                    Err(_) => break,
                }
                n += 1;
            }
            while n < MAX_BATCH && stop.is_none() {
                match rx.try_recv() {
                    Ok(r) => self.handle_request(r, &mut stop),
                    Err(_) => break,
                }
                n += 1;
            }
            self.on_ready()?;
            if let Some(s) = stop.take() {
                info!(node = self.id, "raft node shut down");
                let _ = s.send(());
                return Ok(());
            }
        }
    }

    pub(super) fn handle_net(&mut self, e: NetEvent) -> Result<(), Halt> {
        match e {
            NetEvent::Raft(m) => {
                self.last_heard.insert(m.from, Instant::now());
                let last = self.raw.raft.raft_log.last_index();
                if m.get_msg_type() == MessageType::MsgHeartbeat && m.commit > last {
                    // A leader sends at most what it knows this node acknowledged: this node
                    // has lost entries it acknowledged (its data dir was wiped or replaced).
                    // Taking part again would let it vote and count toward commits with a
                    // log that forgot what it promised: it stops instead.
                    return Err(Halt::LostAcknowledged {
                        leader: m.from,
                        expected: m.commit,
                        held: last,
                    });
                }
                if let Err(e) = self.raw.step(*m) {
                    debug!(node = self.id, "raft step: {e}");
                }
            }
            NetEvent::SnapshotSent { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            NetEvent::Unreachable { to } => self.raw.report_unreachable(to),
        }
        Ok(())
    }

    pub(super) fn handle_request(&mut self, r: Request, stop: &mut Option<oneshot::Sender<()>>) {
        match r {
            Request::Propose { id, entry, reply } => {
                if let Some(done) = self.machine.result_of(&id) {
                    let _ = reply.send(done.clone().map_err(ProposeError::Rejected));
                    return;
                }
                let mut p = PendingProposal {
                    entry,
                    reply,
                    proposed_at: None,
                };
                self.try_propose(&mut p);
                self.pending.insert(id, p);
            }
            Request::Read { f } => {
                let ctx = self.next_read;
                self.next_read += 1;
                self.raw.read_index(ctx.to_le_bytes().to_vec());
                let now = Instant::now();
                self.reads.insert(
                    ctx,
                    PendingRead {
                        f,
                        issued: now,
                        deadline: now + self.config.client.read_timeout,
                    },
                );
            }
            Request::ReadLocal { f } => f(self.applied, &self.machine.state),
            Request::Status(tx) => {
                let _ = tx.send(self.status());
            }
            Request::Shutdown(tx) => *stop = Some(tx),
        }
    }

    pub(super) fn try_propose(&mut self, p: &mut PendingProposal) {
        let result = match &p.entry {
            PendingEntry::Normal(data) => self.raw.propose(vec![], data.clone()),
            PendingEntry::Conf(cc) => {
                // raft turns a second pending change into an empty entry; wait instead.
                if self.raw.raft.state == StateRole::Leader && self.raw.raft.has_pending_conf() {
                    return;
                }
                self.raw.propose_conf_change(vec![], cc.clone())
            }
        };
        match result {
            Ok(()) => p.proposed_at = Some(Instant::now()),
            Err(raft::Error::ProposalDropped) => p.proposed_at = None,
            Err(e) => {
                debug!(node = self.id, "proposal not accepted: {e}");
                p.proposed_at = None;
            }
        }
    }

    pub(super) fn on_tick(&mut self) {
        self.maybe_hand_over();
        let now = Instant::now();
        let retry = self.config.client.propose_retry;
        let mut pending = std::mem::take(&mut self.pending);
        pending.retain(|_, p| !p.reply.is_closed());
        for p in pending.values_mut() {
            let due = match p.proposed_at {
                None => true,
                Some(at) => now.duration_since(at) >= retry,
            };
            if due {
                self.try_propose(p);
            }
        }
        self.pending = pending;

        let read_retry = self.config.client.read_retry;
        self.reads.retain(|_, r| r.deadline > now);
        let mut again = Vec::new();
        for (ctx, r) in self.reads.iter_mut() {
            if now.duration_since(r.issued) >= read_retry {
                r.issued = now;
                again.push(*ctx);
            }
        }
        for ctx in again {
            self.raw.read_index(ctx.to_le_bytes().to_vec());
        }
        self.maybe_promote();
    }

    pub(super) fn status(&self) -> NodeStatus {
        let raft = &self.raw.raft;
        let cs = self.raw.store().conf_state();
        let leader = raft.state == StateRole::Leader;
        let now = Instant::now();
        let progress = |id: &u64| MemberProgress {
            id: *id,
            last_heard_ms: if *id == self.id {
                Some(0)
            } else {
                self.last_heard
                    .get(id)
                    .map(|at| now.duration_since(*at).as_millis() as u64)
            },
            matched: if leader {
                raft.prs().get(*id).map(|p| p.matched)
            } else {
                None
            },
        };
        NodeStatus {
            id: self.id,
            leader: (raft.leader_id != 0).then_some(raft.leader_id),
            term: raft.term,
            role: raft.state.into(),
            commit: raft.raft_log.committed,
            applied: self.applied,
            snapshot_index: self.raw.store().snapshot_index(),
            voters: cs.voters.iter().map(progress).collect(),
            learners: cs.learners.iter().map(progress).collect(),
            dropped_messages: self.transport.dropped(),
        }
    }

    /// One round of the Ready loop, in the order ARCHITECTURE.md gives.
    pub(super) fn on_ready(&mut self) -> Result<(), Halt> {
        if !self.raw.has_ready() {
            self.run_ready_reads();
            return self.maybe_snapshot().map_err(storage);
        }
        let mut rd = self.raw.ready();
        let mut repropose = false;
        if let Some(ss) = rd.ss()
            && ss.leader_id != self.leader
        {
            {
                info!(
                    node = self.id,
                    leader = ss.leader_id,
                    term = self.raw.raft.term,
                    role = ?ss.raft_state,
                    "raft leader changed"
                );
                self.leader = ss.leader_id;
                metrics::counter!("arbor_raft_leader_changes_total").increment(1);
                // Proposals in flight to the old leader may be lost: propose them again once
                // this Ready is advanced (proposing now would append to the log behind the
                // Ready's back, and raft panics when it is advanced).
                repropose = ss.leader_id != 0;
            }
        }
        // 1. A leader sends its messages before persisting (it may append in parallel).
        self.transport.send(rd.take_messages());

        let mut batch = WriteBatch::default();
        // 2. A snapshot from the leader replaces the state.
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let index = snap.get_metadata().index;
            match StateMachine::decode(&snap.data) {
                Err(e) => {
                    // raft-rs marks the snapshot persisted once this Ready is advanced: a
                    // node that dropped it would never be sent another. Stop instead.
                    return Err(Halt::Undecodable {
                        index,
                        reason: format!("the leader's snapshot: {e}"),
                    });
                }
                Ok(m) => {
                    self.machine = m;
                    self.applied = index;
                    self.transport.set_founded(true);
                    for (id, addr) in &self.machine.state.raft_members {
                        self.transport.learn_address(*id, addr.clone());
                    }
                    info!(
                        node = self.id,
                        index,
                        bytes = snap.data.len(),
                        "restored a snapshot from the leader"
                    );
                    let _ = self.events.send(StateEvent::Restored { index });
                    batch.received_snapshot = Some(snap);
                    batch.applied = Some(index);
                }
            }
        }
        for rs in rd.take_read_states() {
            let Ok(ctx) = <[u8; 8]>::try_from(&rs.request_ctx[..]) else {
                continue;
            };
            if let Some(r) = self.reads.remove(&u64::from_le_bytes(ctx)) {
                self.ready_reads.push((rs.index, r.f));
            }
        }
        // 3+4. Committed entries (already durable here) apply; new entries and HardState are
        // written with the applied index in one fsynced transaction.
        let committed = rd.take_committed_entries();
        let mut replies = Vec::new();
        self.apply_entries(committed, &mut replies)?;
        if self.applied_dirty {
            batch.applied = Some(self.applied);
            self.applied_dirty = false;
        }
        batch.entries = rd.take_entries();
        batch.hard_state = rd.hs().cloned();
        let store = self.raw.mut_store();
        if !batch.is_empty() {
            blocking(|| store.write(batch)).map_err(storage)?;
        }
        self.send_replies(replies);
        // 5. Only now may the messages that depend on persisted state go out.
        self.transport.send(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        self.transport.send(light.take_messages());
        let mut replies = Vec::new();
        self.apply_entries(light.take_committed_entries(), &mut replies)?;
        self.send_replies(replies);
        self.raw.advance_apply();
        if repropose {
            // Those whose proposer gave up are dropped instead.
            let mut pending = std::mem::take(&mut self.pending);
            pending.retain(|_, p| !p.reply.is_closed());
            for p in pending.values_mut() {
                self.try_propose(p);
            }
            self.pending = pending;
        }
        self.run_ready_reads();
        self.maybe_snapshot().map_err(storage)
    }

    pub(super) fn send_replies(&mut self, replies: Vec<(RequestId, ApplyResult)>) {
        for (id, result) in replies {
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.reply.send(result.map_err(ProposeError::Rejected));
            }
        }
    }

    pub(super) fn run_ready_reads(&mut self) {
        if self.ready_reads.is_empty() {
            return;
        }
        let applied = self.applied;
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ready_reads)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.ready_reads = later;
        for (_, f) in now {
            f(applied, &self.machine.state);
        }
    }

    /// Applies committed entries in order. An entry that does not decode stops the loop:
    /// skipping it would leave this node's state different from the others' while it reports
    /// the same applied index.
    pub(super) fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        replies: &mut Vec<(RequestId, ApplyResult)>,
    ) -> Result<(), Halt> {
        for entry in entries {
            let index = entry.index;
            if index <= self.applied {
                continue;
            }
            if entry.data.is_empty() {
                self.applied = index;
                self.applied_dirty = true;
                continue; // a new leader's empty entry
            }
            let undecodable = |reason: String| Halt::Undecodable { index, reason };
            match entry.get_entry_type() {
                EntryType::EntryNormal => match Proposal::decode(&entry.data) {
                    Ok(p) => {
                        self.applied = index;
                        self.applied_dirty = true;
                        // A retried proposal already applied changes nothing: followers of
                        // the events (indexes kept beside the state) must not see it twice.
                        let replay = self.machine.result_of(&p.id).is_some();
                        let result = self.machine.apply(p.id, &p.command);
                        replies.push((p.id, result.clone()));
                        if !replay {
                            let _ = self.events.send(StateEvent::Applied {
                                index,
                                command: Arc::new(p.command),
                                result,
                            });
                        }
                    }
                    Err(e) => return Err(undecodable(e.to_string())),
                },
                EntryType::EntryConfChange => match ConfChange::parse_from_bytes(&entry.data) {
                    Ok(cc) => {
                        self.applied = index;
                        self.applied_dirty = true;
                        if let Some((id, result)) = self.apply_conf_change(index, &cc) {
                            replies.push((id, result));
                        }
                    }
                    Err(e) => return Err(undecodable(format!("membership change: {e}"))),
                },
                EntryType::EntryConfChangeV2 => {
                    return Err(undecodable(
                        "a joint-consensus membership change, which this version never makes"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Snapshots the state machine and compacts the log every `snapshot_interval` entries, or
    /// when raft asked for a newer snapshot than the stored one.
    pub(super) fn maybe_snapshot(&mut self) -> Result<(), StoreError> {
        let store = self.raw.store();
        let due = self.applied >= store.snapshot_index() + self.config.raft.snapshot_interval;
        let asked = store.take_snapshot_request() && self.applied > store.snapshot_index();
        if !due && !asked {
            return Ok(());
        }
        let data = match self.machine.encode() {
            Ok(d) => d,
            Err(e) => {
                error!(node = self.id, "cannot encode a snapshot: {e}");
                return Ok(());
            }
        };
        let index = self.applied;
        let cs = self.raw.store().conf_state().clone();
        let store = self.raw.mut_store();
        let bytes = data.len();
        blocking(|| store.install_local_snapshot(index, cs, data))?;
        debug!(
            node = self.id,
            index, bytes, "snapshot taken; log compacted"
        );
        Ok(())
    }
}
