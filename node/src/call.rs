//! A caller that holds the cluster secret and links with every node as a node would, so that
//! each node's replicas show up in their process groups here and can be called through the
//! same [`Router`] nodes use. Clients never need it (they go through the gateway with a
//! token); the process tests use it to reach replicas directly (a partition's rows, a
//! replica to kill).
//!
//! One client node per process: ractor_cluster numbers a session's remote actors by a node id
//! that each `NodeServer` counts from the same start, and process groups are global, so when a
//! second client node in the same process closes its sessions, actors with the same ids leave
//! the groups of the first one too.

use std::time::{Duration, Instant};

use arbor_actors::replica::deployment_group;
use arbor_actors::router::Router;

use crate::client::Client;
use crate::config::{ClusterConfig, Secret};
use crate::link::scope;

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
    ) -> Result<Caller<'a>, crate::client::ClientError> {
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

    /// The process-group scope the cluster's actors are found in.
    pub fn scope(&self) -> &str {
        &self.scope
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
