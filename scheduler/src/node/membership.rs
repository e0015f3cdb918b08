//! Membership changes as the driver carries them out: applying a conf change, promoting a
//! caught-up learner, handing leadership over when removed.

use super::*;

impl Driver {
    /// A leader that removed itself hands leadership to the most caught-up remaining voter
    /// (once more every tick until someone else leads).
    pub(super) fn maybe_hand_over(&mut self) {
        if !self.hand_over {
            return;
        }
        if self.raw.raft.state != StateRole::Leader {
            self.hand_over = false;
            return;
        }
        let voters = self.raw.store().conf_state().voters.clone();
        let best = voters
            .iter()
            .filter(|v| **v != self.id)
            .max_by_key(|v| self.raw.raft.prs().get(**v).map_or(0, |p| p.matched))
            .copied();
        if let Some(to) = best {
            info!(
                node = self.id,
                to, "removed from the voters while leading; handing over"
            );
            self.raw.transfer_leader(to);
        }
    }

    /// On the leader: promotes a learner that asked for it once it has caught up.
    pub(super) fn maybe_promote(&mut self) {
        if self.raw.raft.state != StateRole::Leader
            || self.raw.raft.has_pending_conf()
            || self.machine.pending_promotions.is_empty()
        {
            return;
        }
        let committed = self.raw.raft.raft_log.committed;
        let learners: Vec<u64> = self.raw.store().conf_state().learners.clone();
        for id in self.machine.pending_promotions.clone() {
            if !learners.contains(&id) {
                continue;
            }
            let caught_up = self
                .raw
                .raft
                .prs()
                .get(id)
                .is_some_and(|pr| pr.matched + 8 >= committed);
            if !caught_up {
                continue;
            }
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::AddNode);
            cc.node_id = id;
            self.promotion_seq += 1;
            let ctx = ConfContext {
                id: RequestId::now(self.id, self.promotion_seq),
                address: None,
                promote_when_caught_up: false,
            };
            let Ok(bytes) = ctx.encode() else { return };
            cc.context = bytes.into();
            info!(
                node = self.id,
                learner = id,
                "learner caught up; promoting to voter"
            );
            if let Err(e) = self.raw.propose_conf_change(vec![], cc) {
                debug!(node = self.id, "promotion not proposed: {e}");
            }
            return; // one change at a time
        }
    }

    /// Validates and applies one membership change. Deterministic: depends only on the
    /// configuration and the state machine, which every node has identically at this index.
    pub(super) fn apply_conf_change(
        &mut self,
        index: u64,
        cc: &ConfChange,
    ) -> Option<(RequestId, ApplyResult)> {
        let ctx = match ConfContext::decode(&cc.context) {
            Ok(c) => c,
            Err(e) => {
                warn!(
                    node = self.id,
                    index, "membership change without a valid context: {e}"
                );
                return None;
            }
        };
        if let Some(done) = self.machine.result_of(&ctx.id) {
            return Some((ctx.id, done.clone()));
        }
        let cs = self.raw.store().conf_state().clone();
        let node = cc.node_id;
        let is_voter = cs.voters.contains(&node);
        let is_learner = cs.learners.contains(&node);
        let refuse = |why: String| Err(Rejection::Membership(why));
        let check: Result<(), Rejection> = match cc.get_change_type() {
            _ if node == 0 => refuse("node id 0 is reserved".into()),
            ConfChangeType::AddLearnerNode if is_voter => {
                refuse(format!("node {node} is already a voter"))
            }
            ConfChangeType::AddLearnerNode if ctx.address.as_deref().unwrap_or("").is_empty() => {
                refuse(format!("node {node} needs a raft address"))
            }
            ConfChangeType::AddNode if !is_learner && !is_voter => refuse(format!(
                "node {node} must join as a learner and catch up before it votes"
            )),
            ConfChangeType::RemoveNode if !is_voter && !is_learner => {
                refuse(format!("node {node} is not a member"))
            }
            ConfChangeType::RemoveNode if is_voter && cs.voters.len() == 1 => {
                refuse("cannot remove the last voter".into())
            }
            _ => Ok(()),
        };
        let result = match check {
            Err(r) => Err(r),
            Ok(()) => match self.raw.apply_conf_change(cc) {
                Ok(new_cs) => {
                    match cc.get_change_type() {
                        ConfChangeType::AddLearnerNode => {
                            let addr = ctx.address.clone().unwrap_or_default();
                            self.machine.state.raft_members.insert(node, addr.clone());
                            self.transport.learn_address(node, addr);
                            if ctx.promote_when_caught_up {
                                self.machine.pending_promotions.insert(node);
                            }
                        }
                        ConfChangeType::AddNode => {
                            self.machine.pending_promotions.remove(&node);
                        }
                        ConfChangeType::RemoveNode => {
                            self.machine.pending_promotions.remove(&node);
                            self.machine.state.raft_members.remove(&node);
                            self.transport.forget(node);
                            if node == self.id {
                                self.hand_over = true;
                            }
                        }
                    }
                    info!(
                        node = self.id,
                        index,
                        change = ?cc.get_change_type(),
                        target = node,
                        voters = ?new_cs.voters,
                        learners = ?new_cs.learners,
                        "membership changed"
                    );
                    let _ = self.events.send(StateEvent::Membership {
                        index,
                        voters: new_cs.voters.clone(),
                        learners: new_cs.learners.clone(),
                    });
                    let outcome = CommandOutcome::Membership {
                        voters: new_cs.voters.clone(),
                        learners: new_cs.learners.clone(),
                    };
                    self.raw.mut_store().set_conf_state(new_cs);
                    Ok(outcome)
                }
                Err(e) => Err(Rejection::Membership(e.to_string())),
            },
        };
        self.machine.remember(ctx.id, result.clone());
        Some((ctx.id, result))
    }
}
