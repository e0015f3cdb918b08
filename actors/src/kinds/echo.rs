//! `echo`: replies with the payload it got.
//!
//! The simplest replica, used to check routing, placement and supervision end to end. Its
//! config can make it slow to start or fail to start, so that users and tests can watch the
//! node agent's backoff and give-up without writing a broken actor.

use std::time::Duration;

use serde::Deserialize;

use super::{Handled, Kind, Me, ReplicaContext, ReplicaKind, Started, parse_config};
use crate::replica::{ReplicaMsg, decode_request};
use crate::wire::Wire;

/// `echo`'s configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoConfig {
    /// When set, the replica fails to start with this text as the reason.
    #[serde(default)]
    pub fail_on_start: Option<String>,
    /// Milliseconds to wait before the replica is ready.
    #[serde(default)]
    pub start_delay_ms: Option<u64>,
}

/// The `echo` actor.
pub struct EchoReplica;

impl ReplicaKind for EchoReplica {
    type State = ReplicaContext;

    async fn start(&self, _myself: Me, ctx: ReplicaContext) -> Started<Self::State> {
        let config: EchoConfig = parse_config(Kind::Echo, &ctx)?;
        if let Some(ms) = config.start_delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(why) = config.fail_on_start {
            return Err(why.into());
        }
        Ok(ctx)
    }

    async fn handle(&self, msg: ReplicaMsg, ctx: &mut Self::State) -> Handled {
        match msg {
            ReplicaMsg::Call(request, reply) => {
                let answer = decode_request(request).map(|r| r.payload);
                // The caller may have given up (timeout): nothing to do about it.
                let _ = reply.send(Wire::new(answer));
            }
            // Requests for other kinds are refused with what this replica is.
            other => crate::replica::refuse(Kind::Echo, &ctx.actor_id, other),
        }
        Ok(())
    }
}
