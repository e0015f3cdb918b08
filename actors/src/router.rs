//! How callers reach a deployment: pick a running replica, call it, and ride through replicas
//! that die or move.
//!
//! Replicas are found through their deployment's process group, read afresh on every attempt,
//! so a replica that the agent restarted or the control plane moved to another node is picked
//! up as soon as it joins. The choice is "power of two choices" on the requests this router
//! has outstanding per replica: nearly as good as least-loaded, without a global view and
//! without every caller piling onto the same idle replica.
//!
//! A replica that is gone is excluded for this request and another is tried, until
//! `attempt_deadline` has passed. Which losses are retried depends on the request: one that
//! never reached a replica (the send failed) always is; one that may have run (the replica
//! died mid-call, or did not answer in time) only when the request is idempotent
//! ([`Router::idempotent`]), since running it twice must do no harm. An error *answered* by a
//! replica is the application's, and is returned as it is: another replica of the same kind
//! would answer the same.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorCell, ActorId};
use rand::Rng;
use tokio::time::Instant;
use tracing::debug;

use crate::replica::{CallFailure, CallRequest, ReplicaMsg, deployment_group};
use crate::wire::{Wire, WireError};

/// How long a caller keeps looking for a replica that answers, by default.
pub const DEFAULT_ATTEMPT_DEADLINE: Duration = Duration::from_secs(5);

/// The pause before reading the group again when no untried replica is in it.
const NO_MEMBER_PAUSE: Duration = Duration::from_millis(75);

/// Why a call did not produce an answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error(
        "no running replica of deployment {deployment:?} is reachable; check `arbor deployments`"
    )]
    NoReplicas { deployment: String },
    /// The replica answered with an error (not retried).
    #[error("the replica answered with an error: {0}")]
    Replica(CallFailure),
    #[error(
        "deployment {deployment:?} did not answer: {attempts} attempt(s) reached replicas that \
         died or timed out; check `arbor deployments`"
    )]
    Timeout { deployment: String, attempts: u32 },
    #[error("the reply could not be used: {0}")]
    Wire(#[from] WireError),
    /// A replica took the request and then {outcome}: it may have run. Not retried, because
    /// the request is not idempotent.
    #[error(
        "a replica of deployment {deployment:?} {outcome}; the request may have run, and it is \
         not tried again because deployment {deployment:?} does not declare its requests \
         idempotent"
    )]
    Unanswered {
        deployment: String,
        outcome: &'static str,
    },
}

impl arbor_proto::Coded for CallError {
    /// A replica's own refusal carries its code; anything else means no replica could answer
    /// now.
    fn code(&self) -> arbor_proto::ErrorCode {
        match self {
            CallError::Replica(failure) => arbor_proto::Coded::code(failure),
            _ => arbor_proto::ErrorCode::Unavailable,
        }
    }
}

/// Calls the replicas of one deployment. Cheap to clone; clones share the load counters, so
/// many tasks can call through one router and spread their load together.
#[derive(Debug, Clone)]
pub struct Router {
    scope: String,
    deployment: String,
    group: String,
    attempt_deadline: Duration,
    idempotent: bool,
    prefer_local: bool,
    outstanding: Arc<Mutex<HashMap<ActorId, usize>>>,
    /// The process-wide in-flight count of the deployment ([`crate::load`]).
    in_flight: Arc<std::sync::atomic::AtomicU64>,
    /// `arbor_deployment_request_duration_seconds{deployment}`: every answered call.
    latency: metrics::Histogram,
}

impl Router {
    /// A router for `deployment`, whose replicas join groups in the pg `scope`.
    pub fn new(scope: impl Into<String>, deployment: impl Into<String>) -> Router {
        let deployment = deployment.into();
        Router {
            scope: scope.into(),
            group: deployment_group(&deployment),
            in_flight: crate::load::book().counter(&deployment),
            latency: metrics::histogram!(
                "arbor_deployment_request_duration_seconds",
                "deployment" => deployment.clone()
            ),
            deployment,
            attempt_deadline: DEFAULT_ATTEMPT_DEADLINE,
            idempotent: false,
            prefer_local: false,
            outstanding: Arc::default(),
        }
    }

    /// How long [`Router::call`] keeps trying other replicas (and waiting for one to appear)
    /// before it gives up; one attempt already under way may run its `timeout` past it.
    pub fn with_attempt_deadline(mut self, deadline: Duration) -> Router {
        self.attempt_deadline = deadline;
        self
    }

    /// Whether the requests sent through this router may run twice without harm (a read, an
    /// upsert by id, an embedding): then an attempt that timed out, or whose replica died
    /// during it, is tried again on another replica. Off by default: such an attempt fails as
    /// [`CallError::Unanswered`].
    pub fn idempotent(mut self, yes: bool) -> Router {
        self.idempotent = yes;
        self
    }

    /// Whether a replica on this node is asked before the others, while one is up and
    /// untried: for requests that carry megabytes (a bulk load's rows), which would otherwise
    /// cross the network, encrypted and decoded on the way, for nothing. Off by default: load
    /// spreads over every replica.
    pub fn prefer_local(mut self, yes: bool) -> Router {
        self.prefer_local = yes;
        self
    }

    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// Requests this router (and its clones) has in flight to `replica`.
    pub fn outstanding(&self, replica: ActorId) -> usize {
        self.counters().get(&replica).copied().unwrap_or(0)
    }

    /// Sends `payload` to one replica and returns its answer. `timeout` bounds each attempt.
    pub async fn call(&self, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, CallError> {
        let request = CallRequest { payload };
        let reply = self
            .ask(
                |reply| ReplicaMsg::Call(Wire::new(request.clone()), reply),
                timeout,
            )
            .await?;
        match reply.into_inner()? {
            Ok(answer) => Ok(answer),
            Err(error) => Err(CallError::Replica(error)),
        }
    }

    /// Sends the message `make` builds to one replica and returns what it answered, trying
    /// another replica when one is gone. Typed requests (embed, search, generate) go through
    /// here; what the answer means is the caller's business.
    pub async fn ask<R: Send + 'static>(
        &self,
        make: impl Fn(ractor::RpcReplyPort<R>) -> ReplicaMsg,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let started = Instant::now();
        let _in_flight = crate::load::InFlight::enter(&self.in_flight);
        let result = self.attempts(make, timeout).await;
        match &result {
            Ok(_) => self.latency.record(started.elapsed().as_secs_f64()),
            Err(e) => metrics::counter!(
                "arbor_deployment_request_errors_total",
                "deployment" => self.deployment.clone(),
                "code" => arbor_proto::Coded::code(e).as_str(),
            )
            .increment(1),
        }
        result
    }

    async fn attempts<R: Send + 'static>(
        &self,
        make: impl Fn(ractor::RpcReplyPort<R>) -> ReplicaMsg,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let deadline = Instant::now() + self.attempt_deadline;
        let mut tried: HashSet<ActorId> = HashSet::new();
        let mut attempts: u32 = 0;
        loop {
            let members = ractor::pg::get_scoped_members(&self.scope, &self.group);
            let Some(replica) = self.choose(&members, &tried) else {
                if Instant::now() >= deadline {
                    return Err(self.gave_up(attempts));
                }
                tokio::time::sleep_until(deadline.min(Instant::now() + NO_MEMBER_PAUSE)).await;
                continue;
            };
            attempts += 1;
            let id = replica.get_id();
            let result = {
                let _counted = Outstanding::enter(&self.outstanding, id);
                ractor::rpc::call(&replica, &make, Some(timeout)).await
            };
            let (why, may_have_run) = match result {
                Ok(CallResult::Success(reply)) => return Ok(reply),
                Ok(CallResult::Timeout) => ("timed out", true),
                Ok(CallResult::SenderError) => ("exited during the call", true),
                Err(_) => ("is gone", false),
            };
            if may_have_run && !self.idempotent {
                return Err(CallError::Unanswered {
                    deployment: self.deployment.clone(),
                    outcome: why,
                });
            }
            debug!(deployment = %self.deployment, %id, attempts, "replica {why}; trying another");
            tried.insert(id);
            if Instant::now() >= deadline {
                return Err(self.gave_up(attempts));
            }
        }
    }

    fn gave_up(&self, attempts: u32) -> CallError {
        let deployment = self.deployment.clone();
        if attempts == 0 {
            CallError::NoReplicas { deployment }
        } else {
            CallError::Timeout {
                deployment,
                attempts,
            }
        }
    }

    fn choose(&self, members: &[ActorCell], tried: &HashSet<ActorId>) -> Option<ActorCell> {
        let mut candidates: Vec<(ActorId, usize)> = {
            let counters = self.counters();
            members
                .iter()
                .map(ActorCell::get_id)
                .filter(|id| !tried.contains(id))
                .map(|id| (id, counters.get(&id).copied().unwrap_or(0)))
                .collect()
        };
        if self.prefer_local {
            keep_local(&mut candidates);
        }
        let id = pick(&candidates, &mut rand::rng())?;
        members.iter().find(|m| m.get_id() == id).cloned()
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, HashMap<ActorId, usize>> {
        // The map holds plain counters: one left half-updated by a panic is still usable.
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Narrows `candidates` to the replicas on this node, where there is one; leaves them as they
/// are otherwise. Pure.
pub fn keep_local(candidates: &mut Vec<(ActorId, usize)>) {
    if candidates.iter().any(|(id, _)| id.is_local()) {
        candidates.retain(|(id, _)| id.is_local());
    }
}

/// Power of two choices: two distinct candidates at random, the one with fewer outstanding
/// requests wins (the first drawn on a tie). `None` when there is no candidate.
pub fn pick<R: Rng + ?Sized>(candidates: &[(ActorId, usize)], rng: &mut R) -> Option<ActorId> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0].0),
        n => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (first, second) = (candidates[a], candidates[b]);
            Some(if second.1 < first.1 {
                second.0
            } else {
                first.0
            })
        }
    }
}

/// Counts one request against a replica for as long as it lives, so the count drops even
/// when the caller's future is cancelled.
struct Outstanding<'a> {
    counters: &'a Mutex<HashMap<ActorId, usize>>,
    id: ActorId,
}

impl<'a> Outstanding<'a> {
    fn enter(counters: &'a Mutex<HashMap<ActorId, usize>>, id: ActorId) -> Self {
        *counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_insert(0) += 1;
        Outstanding { counters, id }
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counters.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counters.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn id(n: u64) -> ActorId {
        ActorId::Local(n)
    }

    #[test]
    fn local_replicas_are_kept_when_there_are_any() {
        let remote = |pid| ActorId::Remote { node_id: 2, pid };
        let mut mixed = vec![(remote(1), 0), (id(5), 3), (remote(2), 0), (id(6), 0)];
        keep_local(&mut mixed);
        assert_eq!(mixed, [(id(5), 3), (id(6), 0)]);
        let mut far = vec![(remote(1), 0), (remote(2), 1)];
        keep_local(&mut far);
        assert_eq!(far.len(), 2);
        let mut none = Vec::new();
        keep_local(&mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn empty_and_single() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(pick(&[], &mut rng), None);
        assert_eq!(pick(&[(id(3), 99)], &mut rng), Some(id(3)));
    }

    #[test]
    fn never_picks_the_busiest_of_many_when_others_are_idle() {
        // With two draws, the busiest wins only when drawn against itself, which cannot
        // happen: the two draws are distinct.
        let mut rng = StdRng::seed_from_u64(7);
        let candidates = [(id(1), 0), (id(2), 0), (id(3), 10)];
        for _ in 0..1000 {
            assert_ne!(pick(&candidates, &mut rng), Some(id(3)));
        }
    }

    #[test]
    fn spreads_over_equal_candidates() {
        let mut rng = StdRng::seed_from_u64(42);
        let candidates: Vec<_> = (0..4).map(|n| (id(n), 0)).collect();
        let mut seen = HashMap::new();
        for _ in 0..4000 {
            *seen
                .entry(pick(&candidates, &mut rng).unwrap())
                .or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 4);
        assert!(seen.values().all(|&n| n > 700), "{seen:?}");
    }

    #[test]
    fn outstanding_counts_drop_with_the_guard() {
        let counters = Mutex::new(HashMap::new());
        let a = Outstanding::enter(&counters, id(1));
        let b = Outstanding::enter(&counters, id(1));
        assert_eq!(counters.lock().unwrap()[&id(1)], 2);
        drop(a);
        drop(b);
        assert!(counters.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn no_members_is_no_replicas() {
        let router = Router::new("router-unit-empty", "nothing")
            .with_attempt_deadline(Duration::from_millis(100));
        let err = router
            .call(b"x".to_vec(), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            CallError::NoReplicas {
                deployment: "nothing".into()
            }
        );
        assert!(err.to_string().contains("check `arbor deployments`"));
    }
}
