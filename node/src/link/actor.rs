//! The node's remote-capable link actor: peers' heartbeats and membership queries land here.

use std::time::Duration;

use arbor_actors::wire::Wire;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use std::collections::BTreeMap;

use arbor_scheduler::{CommandOutcome, RaftHandle};

use super::messages::{LinkMsg, MembershipChange, MembershipOutcome};
use super::supervisor::SupervisorMsg;
use super::{link_group, scope};
use crate::config::NodeId;

/// How long a membership query waits for the supervisor.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct LinkActor;

pub struct LinkActorArgs {
    pub cluster: String,
    pub node: NodeId,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub raft: RaftHandle,
    /// Raft addresses of the nodes in cluster.toml, for membership changes.
    pub raft_addrs: BTreeMap<NodeId, String>,
}

/// Carries out a membership change through the control plane.
pub(crate) async fn change_membership(
    raft: RaftHandle,
    raft_addrs: BTreeMap<NodeId, String>,
    change: MembershipChange,
) -> Result<MembershipOutcome, String> {
    let outcome = match change {
        MembershipChange::Add(id) => {
            let addr = raft_addrs
                .get(&id)
                .ok_or_else(|| format!("node {id} is not in cluster.toml: add it there first"))?;
            raft.add_node(id, addr.clone()).await
        }
        MembershipChange::Remove(id) => raft.remove_node(id).await,
    };
    match outcome.map_err(|e| e.to_string())? {
        CommandOutcome::Membership { voters, learners } => {
            Ok(MembershipOutcome { voters, learners })
        }
        other => Err(format!("unexpected outcome {other:?}")),
    }
}

impl Actor for LinkActor {
    type Msg = LinkMsg;
    type State = LinkActorArgs;
    type Arguments = LinkActorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Joining the node's own group is what advertises this actor to peers.
        ractor::pg::join_scoped(
            scope(&args.cluster),
            link_group(args.node),
            vec![myself.get_cell()],
        );
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LinkMsg::Heartbeat(beat) => match beat.into_inner() {
                Ok(beat) if beat.to == state.node && beat.from == beat.info.id => {
                    let _ = state.supervisor.cast(SupervisorMsg::Heartbeat(beat));
                }
                Ok(beat) => tracing::debug!(
                    from = beat.from,
                    to = beat.to,
                    "dropped a heartbeat addressed to another node"
                ),
                Err(e) => tracing::warn!("dropped a malformed heartbeat: {e}"),
            },
            LinkMsg::Membership(reply) => {
                match ractor::call_t!(
                    state.supervisor,
                    SupervisorMsg::Report,
                    REPORT_TIMEOUT.as_millis() as u64
                ) {
                    Ok(report) => {
                        let _ = reply.send(Wire::new(report));
                    }
                    Err(e) => tracing::warn!("membership query failed: {e}"),
                }
            }
            // Control-plane work runs beside the actor, so heartbeats are never held up.
            LinkMsg::RaftStatus(reply) => {
                let raft = state.raft.clone();
                tokio::spawn(async move {
                    let status = raft.status().await.map_err(|e| e.to_string());
                    let _ = reply.send(Wire::new(status));
                });
            }
            LinkMsg::ChangeMembership(change, reply) => {
                let (raft, addrs) = (state.raft.clone(), state.raft_addrs.clone());
                tokio::spawn(async move {
                    let result = match change.into_inner() {
                        Ok(change) => {
                            tracing::info!(?change, "membership change requested");
                            change_membership(raft, addrs, change).await
                        }
                        Err(e) => Err(format!("malformed membership change: {e}")),
                    };
                    let _ = reply.send(Wire::new(result));
                });
            }
            LinkMsg::Control(request, reply) => {
                let raft = state.raft.clone();
                tokio::spawn(async move {
                    let result = match request.into_inner() {
                        Ok(request) => {
                            tracing::info!(?request, "control request");
                            crate::control::execute(&raft, request).await
                        }
                        Err(e) => Err(format!("malformed control request: {e}")),
                    };
                    let _ = reply.send(Wire::new(result));
                });
            }
        }
        Ok(())
    }
}
