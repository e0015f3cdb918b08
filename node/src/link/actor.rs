//! The node's remote-capable link actor: peers' heartbeats land here, and peers ask it how
//! this node's control plane stands (`cluster_status`, run by whichever node a client asked).

use arbor_actors::wire::Wire;
use arbor_scheduler::RaftHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::messages::LinkMsg;
use super::supervisor::SupervisorMsg;
use super::{link_group, scope};
use crate::config::NodeId;

pub struct LinkActor;

pub struct LinkActorArgs {
    pub cluster: String,
    pub node: NodeId,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub raft: RaftHandle,
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
            // Control-plane work runs beside the actor, so heartbeats are never held up.
            LinkMsg::RaftStatus(reply) => {
                let raft = state.raft.clone();
                tokio::spawn(async move {
                    let status = raft.status().await.map_err(|e| e.to_string());
                    let _ = reply.send(Wire::new(status));
                });
            }
        }
        Ok(())
    }
}
