//! `arbor call DEPLOYMENT PAYLOAD`: one request to a deployment, from outside the cluster.
//!
//! The client links with every node, so each node's replicas of the deployment show up in
//! the deployment's process group here, then calls through the same [`Router`] nodes use:
//! fewest outstanding requests, another replica when one disappears.
//!
//! One client node per process: ractor_cluster numbers a session's remote actors by a node id
//! that each `NodeServer` counts from the same start, and process groups are global, so when a
//! second client node in the same process closes its sessions, actors with the same ids leave
//! the groups of the first one too.

use std::time::{Duration, Instant};

use arbor_actors::replica::deployment_group;
use arbor_actors::router::{CallError, Router};

use crate::client::Client;
use crate::config::{ClusterConfig, Secret};
use crate::link::scope;

/// Why `arbor call` got no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallCmdError {
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    #[error(transparent)]
    Call(#[from] CallError),
}

/// A client linked with the cluster, ready to call deployments.
pub struct Caller<'a> {
    client: Client<'a>,
    scope: String,
}

impl<'a> Caller<'a> {
    /// Links with every reachable node of `config`'s cluster.
    pub async fn connect(
        config: &'a ClusterConfig,
        secret: &Secret,
        per_node: Duration,
    ) -> Result<Caller<'a>, CallCmdError> {
        let mut client = Client::start(config, secret, per_node).await?;
        for (id, result) in client.join_all().await? {
            if let Err(why) = result {
                tracing::debug!(node = id, "not linked: {why}");
            }
        }
        Ok(Caller {
            client,
            scope: scope(&config.cluster.name),
        })
    }

    /// A router to `deployment`, once at least one of its replicas is visible here (or
    /// `wait` has passed: the router then reports that none is reachable).
    pub async fn router(&self, deployment: &str, wait: Duration) -> Router {
        self.visible(deployment, wait).await;
        Router::new(self.scope.clone(), deployment)
    }

    /// Waits up to `wait` for a replica of `deployment` to be advertised here; how many are.
    pub async fn visible(&self, deployment: &str, wait: Duration) -> usize {
        let group = deployment_group(deployment);
        let deadline = Instant::now() + wait;
        loop {
            let n = ractor::pg::get_scoped_members(&self.scope, &group).len();
            if n > 0 || Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.client.stop().await;
    }
}

/// Sends one request and returns the reply.
pub async fn call_once(
    config: &ClusterConfig,
    secret: &Secret,
    deployment: &str,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, CallCmdError> {
    let caller = Caller::connect(config, secret, Duration::from_secs(3)).await?;
    // Nodes advertise their replicas as soon as the link is up: none after a few seconds
    // means none runs (or the deployment does not exist), and waiting longer will not help.
    if caller
        .visible(deployment, timeout.min(Duration::from_secs(3)))
        .await
        == 0
    {
        caller.stop().await;
        return Err(CallError::NoReplicas {
            deployment: deployment.to_owned(),
        }
        .into());
    }
    let router = Router::new(caller.scope.clone(), deployment).with_attempt_deadline(timeout);
    let reply = router.call(payload, timeout).await;
    caller.stop().await;
    Ok(reply?)
}
