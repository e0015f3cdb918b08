//! The cluster's own jobs: `membership` (`arbor status`), `cluster_status`, `add_node`,
//! `remove_node`, `drain` and `undrain`. They run on the accepting node, which asks its peers
//! over the links between nodes; an operator's machine needs a token, never the cluster secret.

use std::time::Duration;

use arbor_proto::ErrorCode;
use arbor_proto::NodeId;
use arbor_proto::cluster::{ClusterStatus, MembershipOutcome, MembershipReport};
use arbor_scheduler::NodeStatus;

use super::run::{Env, JobFailure};
use crate::control::ControlRequest;
use crate::link::messages::{LinkMsg, MembershipChange};
use crate::link::supervisor::SupervisorMsg;

/// How long one peer may take to say how its control plane stands.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

fn unresponsive(e: impl std::fmt::Display) -> JobFailure {
    JobFailure::new(
        ErrorCode::Unavailable,
        format!("this node's links did not answer: {e}"),
    )
}

/// Every node's state as this node's links see it.
pub async fn membership(env: &Env) -> Result<MembershipReport, JobFailure> {
    ractor::call_t!(env.supervisor, SupervisorMsg::Report, 2000).map_err(unresponsive)
}

/// Each node of cluster.toml asked for its own control-plane status (this one directly, the
/// others over their links, all at once), combined into one view.
pub async fn cluster_status(env: &Env) -> Result<ClusterStatus, JobFailure> {
    let asks = env.raft_addrs.keys().map(|&id| async move {
        let status = if id == env.node {
            env.raft.status().await.ok()
        } else {
            peer_status(env, id).await
        };
        (id, status)
    });
    let answers: Vec<(NodeId, Option<NodeStatus>)> = futures::future::join_all(asks).await;
    Ok(crate::cluster_cmd::combine(&answers))
}

/// A peer's control-plane status over this node's link with it; `None` if it cannot say.
async fn peer_status(env: &Env, peer: NodeId) -> Option<NodeStatus> {
    let session = ractor::call_t!(env.supervisor, SupervisorMsg::SessionWith, 2000, peer)
        .ok()
        .flatten()?;
    let link = crate::link::peer_link_actor(&env.cluster, peer, &session.get_cell())?;
    let answer = link.call(LinkMsg::RaftStatus, Some(PEER_TIMEOUT)).await;
    crate::client::answer(answer).ok()?.ok()
}

/// Adds or removes a control-plane member.
pub async fn change_membership(
    env: &Env,
    change: MembershipChange,
) -> Result<MembershipOutcome, JobFailure> {
    if let MembershipChange::Add(id) | MembershipChange::Remove(id) = change
        && !env.raft_addrs.contains_key(&id)
    {
        return Err(JobFailure::new(
            ErrorCode::InvalidJob,
            format!(
                "node {id} is not in this node's cluster.toml: add its [[nodes]] entry there \
                 (and on every node) first"
            ),
        ));
    }
    tracing::info!(?change, "membership change requested");
    crate::link::actor::change_membership(env.raft.clone(), env.raft_addrs.clone(), change)
        .await
        .map_err(|why| JobFailure::new(ErrorCode::JobFailed, why))
}

/// Drains a node (its actors move elsewhere, none are placed there) or lets it take actors.
pub async fn drain(env: &Env, node: NodeId, draining: bool) -> Result<(), JobFailure> {
    if !env.raft_addrs.contains_key(&node) {
        return Err(JobFailure::new(
            ErrorCode::InvalidJob,
            format!("node {node} is not in cluster.toml"),
        ));
    }
    super::run::control_request(&env.raft, ControlRequest::Drain { node, draining }).await?;
    Ok(())
}
