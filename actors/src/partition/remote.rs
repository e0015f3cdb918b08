//! Reaching one partition replica: by its replica group (the control plane names the replica
//! and its generation; the process group only says where it runs), and asking it one request
//! with a deadline. Used by replicas among themselves and by coordinators.

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorCell, ActorRef};

use super::messages::{PartitionAnswer, PartitionFailure, PartitionRequest};
use crate::replica::{ReplicaMsg, replica_group};
use crate::wire::Wire;

/// The running actor of replica `replica` of partition deployment `deployment` at
/// `generation`, if this node has heard of it.
pub fn member(scope: &str, deployment: &str, replica: u32, generation: u64) -> Option<ActorCell> {
    let actor_id = arbor_scheduler::state::actor_id(deployment, replica);
    ractor::pg::get_scoped_members(&scope.to_string(), &replica_group(&actor_id, generation))
        .into_iter()
        .next()
}

/// Asks `cell` one request; a reply that does not come within `timeout`, a replica that went
/// away and bytes that do not decode are all [`PartitionFailure::Unavailable`].
pub async fn ask(
    cell: &ActorCell,
    request: PartitionRequest,
    timeout: Duration,
) -> Result<PartitionAnswer, PartitionFailure> {
    let actor: ActorRef<ReplicaMsg> = cell.clone().into();
    let reply = ractor::rpc::call(
        &actor.get_cell(),
        |reply| ReplicaMsg::Partition(Wire::new(request), reply),
        Some(timeout),
    )
    .await;
    match reply {
        Ok(CallResult::Success(wire)) => wire
            .into_inner()
            .map_err(|e| PartitionFailure::Unavailable(format!("an unreadable answer: {e}")))?,
        Ok(CallResult::Timeout) => Err(PartitionFailure::Unavailable(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
        Ok(CallResult::SenderError) | Err(_) => Err(PartitionFailure::Unavailable(
            "the replica went away".into(),
        )),
    }
}
