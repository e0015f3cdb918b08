//! The node agent, real replicas and the router together, in one process.
//!
//! Every test uses a pg scope of its own: tests run in parallel and ractor's process groups
//! are process-global. Expectations wait on the agent's status reports (with a timeout), not
//! on sleeps.

mod common;

use common::Parent;
use std::time::Duration;

use arbor_actors::agent::{
    AgentArgs, AgentMsg, Assignment, LocalReplica, NodeAgent, ReplicaState, StatusReport,
};
use arbor_actors::kinds::{Kind, ReplicaContext, spawn_replica};
use arbor_actors::replica::{CallFailure, CallRequest, ReplicaMsg, deployment_group};
use arbor_actors::router::{CallError, Router};
use arbor_actors::supervision::RestartPolicy;
use arbor_actors::wire::Wire;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorRef, ActorStatus, BytesConvertable};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

const PATIENCE: Duration = Duration::from_secs(10);
const CALL: Duration = Duration::from_secs(5);

fn fast_policy() -> RestartPolicy {
    RestartPolicy {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        max_restarts: 5,
        window: Duration::from_secs(60),
    }
}

async fn start_agent(
    scope: &str,
    policy: RestartPolicy,
) -> (ActorRef<AgentMsg>, UnboundedReceiver<StatusReport>) {
    let (reports, rx) = unbounded_channel();
    let args = AgentArgs {
        node: 1,
        scope: scope.into(),
        control: arbor_actors::control::memory::MemoryControl::new().control(),
        policy,
        reports,
        data_dir: std::env::temp_dir(),
        models_dir: std::env::temp_dir(),
    };
    let (agent, _) = Actor::spawn(None, NodeAgent, args)
        .await
        .expect("agent starts");
    (agent, rx)
}

fn assignment(actor_id: &str, deployment: &str, kind: &str, generation: u64) -> Assignment {
    Assignment {
        actor_id: actor_id.into(),
        deployment: deployment.into(),
        kind: kind.into(),
        generation,
        devices: vec![],
        config: String::new(),
    }
}

/// Reads reports until one matches, and returns every report read (the match last).
async fn until(
    rx: &mut UnboundedReceiver<StatusReport>,
    what: &str,
    matches: impl Fn(&StatusReport) -> bool,
) -> Vec<StatusReport> {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, rx.recv()).await {
            Ok(Some(report)) => {
                let done = matches(&report);
                seen.push(report);
                if done {
                    return seen;
                }
            }
            Ok(None) => panic!("report channel closed waiting for {what}; saw {seen:#?}"),
            Err(_) => panic!("no report of {what} within {PATIENCE:?}; saw {seen:#?}"),
        }
    }
}

async fn until_state(
    rx: &mut UnboundedReceiver<StatusReport>,
    actor_id: &str,
    generation: u64,
    state: ReplicaState,
) -> Vec<StatusReport> {
    let what = format!("{actor_id} gen {generation} {state:?}");
    until(rx, &what, |r| {
        r.actor_id == actor_id && r.generation == generation && r.state == state
    })
    .await
}

/// Reads reports until every expected one has been seen, in any order (several actors start
/// at once), and returns every report read.
async fn until_all(
    rx: &mut UnboundedReceiver<StatusReport>,
    expected: &[(&str, u64, ReplicaState)],
) -> Vec<StatusReport> {
    let mut seen: Vec<StatusReport> = Vec::new();
    let missing = |seen: &[StatusReport]| -> Vec<String> {
        expected
            .iter()
            .filter(|(id, generation, state)| {
                !seen
                    .iter()
                    .any(|r| r.actor_id == *id && r.generation == *generation && r.state == *state)
            })
            .map(|e| format!("{e:?}"))
            .collect()
    };
    while !missing(&seen).is_empty() {
        match tokio::time::timeout(PATIENCE, rx.recv()).await {
            Ok(Some(report)) => seen.push(report),
            _ => panic!(
                "no report of {:?} within {PATIENCE:?}; saw {seen:#?}",
                missing(&seen)
            ),
        }
    }
    seen
}

fn running(ids: &[&'static str]) -> Vec<(&'static str, u64, ReplicaState)> {
    ids.iter()
        .map(|id| (*id, 1, ReplicaState::Running))
        .collect()
}

/// Asserts that no report arrives for a while (for "does not restart again").
async fn quiet(rx: &mut UnboundedReceiver<StatusReport>, for_: Duration) {
    if let Ok(Some(report)) = tokio::time::timeout(for_, rx.recv()).await {
        panic!("unexpected report {report:?}");
    }
}

async fn replicas(agent: &ActorRef<AgentMsg>) -> Vec<LocalReplica> {
    match agent
        .call(AgentMsg::Replicas, Some(CALL))
        .await
        .expect("agent answers")
    {
        CallResult::Success(list) => list,
        _ => panic!("agent did not answer"),
    }
}

fn members(scope: &str, deployment: &str) -> Vec<ActorCell> {
    ractor::pg::get_scoped_members(&scope.to_string(), &deployment_group(deployment))
}

/// Polls the group until it has `n` members.
async fn wait_members(scope: &str, deployment: &str, n: usize) -> Vec<ActorCell> {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = members(scope, deployment);
        if now.len() == n {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "group of {deployment} has {} members, not {n}",
            now.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_echo_replicas_answer_through_the_router() {
    let scope = "t-echo-three";
    let (agent, mut rx) = start_agent(scope, RestartPolicy::default()).await;
    let desired: Vec<_> = (1..=3)
        .map(|i| assignment(&format!("echo-{i}"), "echo", "echo", 1))
        .collect();
    agent.cast(AgentMsg::Assign(desired.clone())).unwrap();
    let seen = until_all(&mut rx, &running(&["echo-1", "echo-2", "echo-3"])).await;
    assert_eq!(
        seen.len(),
        6,
        "one Starting and one Running each: {seen:#?}"
    );
    // Assigning the same set again changes nothing.
    agent.cast(AgentMsg::Assign(desired)).unwrap();
    quiet(&mut rx, Duration::from_millis(100)).await;
    assert_eq!(wait_members(scope, "echo", 3).await.len(), 3);

    let router = Router::new(scope, "echo");
    for n in 0..20u8 {
        let answer = router.call(vec![n, 1, 2], CALL).await.unwrap();
        assert_eq!(answer, vec![n, 1, 2]);
    }
    let list = replicas(&agent).await;
    assert_eq!(list.len(), 3);
    assert!(
        list.iter()
            .all(|r| r.state == ReplicaState::Running && r.pid.is_some())
    );
    agent.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_spreads_over_replicas() {
    let scope = "t-spread";
    let (agent, mut rx) = start_agent(scope, RestartPolicy::default()).await;
    let desired: Vec<_> = (1..=3)
        .map(|i| assignment(&format!("spin-{i}"), "spin", "spin", 1))
        .collect();
    agent.cast(AgentMsg::Assign(desired)).unwrap();
    until_all(&mut rx, &running(&["spin-1", "spin-2", "spin-3"])).await;
    wait_members(scope, "spin", 3).await;
    let pids: Vec<_> = replicas(&agent)
        .await
        .into_iter()
        .filter_map(|r| r.pid)
        .collect();
    assert_eq!(pids.len(), 3);

    let router = Router::new(scope, "spin");
    let calls = 12;
    let mut tasks = Vec::new();
    for _ in 0..calls {
        let router = router.clone();
        tasks.push(tokio::spawn(async move {
            router.call(br#"{"ms": 400}"#.to_vec(), CALL).await
        }));
    }
    // While all calls are in flight, every replica has some of them.
    let give_up = tokio::time::Instant::now() + PATIENCE;
    let counts = loop {
        let counts: Vec<usize> = pids.iter().map(|&p| router.outstanding(p)).collect();
        if counts.iter().sum::<usize>() == calls {
            break counts;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "in flight: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert!(
        counts.iter().all(|&c| c >= 1),
        "outstanding per replica: {counts:?}"
    );
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), br#"{"spun_ms":400}"#.to_vec());
    }
    assert!(pids.iter().all(|&p| router.outstanding(p) == 0));
    agent.stop(None);
}

#[tokio::test]
async fn a_killed_replica_is_restarted() {
    let scope = "t-kill";
    let (agent, mut rx) = start_agent(scope, fast_policy()).await;
    agent
        .cast(AgentMsg::Assign(vec![assignment("e1", "echo", "echo", 1)]))
        .unwrap();
    until_state(&mut rx, "e1", 1, ReplicaState::Running).await;
    let before = replicas(&agent).await[0].pid.expect("running");
    let cell = wait_members(scope, "echo", 1).await.remove(0);
    assert_eq!(cell.get_id(), before);
    cell.kill();

    let seen = until_state(&mut rx, "e1", 1, ReplicaState::Starting).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    until_state(&mut rx, "e1", 1, ReplicaState::Running).await;
    let after = replicas(&agent).await.remove(0);
    assert_eq!(after.restarts, 1);
    assert_ne!(after.pid, Some(before));
    let now = wait_members(scope, "echo", 1).await;
    assert_eq!(Some(now[0].get_id()), after.pid);
    assert_eq!(
        Router::new(scope, "echo").call(b"hi".to_vec(), CALL).await,
        Ok(b"hi".to_vec())
    );
    agent.stop(None);
}

#[tokio::test]
async fn a_replica_that_cannot_start_is_given_up_on() {
    let scope = "t-fail-on-start";
    let (agent, mut rx) = start_agent(scope, fast_policy()).await;
    let mut a = assignment("bad", "echo", "echo", 1);
    a.config = r#"{"fail_on_start": "disk on fire"}"#.into();
    agent.cast(AgentMsg::Assign(vec![a.clone()])).unwrap();

    let seen = until(&mut rx, "Failed", |r| {
        matches!(r.state, ReplicaState::Failed { .. })
    })
    .await;
    let starting = seen
        .iter()
        .filter(|r| r.state == ReplicaState::Starting)
        .count();
    // The first start, then one per restart.
    assert_eq!(starting, 6, "{seen:#?}");
    let Some(ReplicaState::Failed { reason }) = seen.last().map(|r| r.state.clone()) else {
        unreachable!()
    };
    assert!(reason.contains("failed 6 times in 60s"), "{reason}");
    assert!(reason.contains("disk on fire"), "{reason}");
    // No restart after giving up, even when the same set is assigned again.
    agent.cast(AgentMsg::Assign(vec![a.clone()])).unwrap();
    quiet(&mut rx, Duration::from_millis(300)).await;
    let list = replicas(&agent).await;
    assert_eq!(list[0].restarts, 5);
    assert!(matches!(list[0].state, ReplicaState::Failed { .. }));
    assert!(members(scope, "echo").is_empty());

    // A new generation starts over.
    a.generation = 2;
    a.config = String::new();
    agent.cast(AgentMsg::Assign(vec![a])).unwrap();
    until_state(&mut rx, "bad", 1, ReplicaState::Stopped).await;
    until_state(&mut rx, "bad", 2, ReplicaState::Running).await;
    agent.stop(None);
}

#[tokio::test]
async fn a_bad_config_names_the_field() {
    let scope = "t-bad-config";
    let policy = RestartPolicy {
        max_restarts: 0,
        ..fast_policy()
    };
    let (agent, mut rx) = start_agent(scope, policy).await;
    let mut a = assignment("typo", "echo", "echo", 1);
    a.config = r#"{"start_dleay_ms": 5}"#.into();
    agent.cast(AgentMsg::Assign(vec![a])).unwrap();
    let seen = until(&mut rx, "Failed", |r| {
        matches!(r.state, ReplicaState::Failed { .. })
    })
    .await;
    let reason = format!("{:?}", seen.last().unwrap().state);
    assert!(reason.contains("start_dleay_ms"), "{reason}");
    agent.stop(None);
}

#[tokio::test]
async fn a_new_generation_replaces_the_actor() {
    let scope = "t-generation";
    let (agent, mut rx) = start_agent(scope, fast_policy()).await;
    agent
        .cast(AgentMsg::Assign(vec![assignment("g", "echo", "echo", 1)]))
        .unwrap();
    until_state(&mut rx, "g", 1, ReplicaState::Running).await;
    let old = wait_members(scope, "echo", 1).await.remove(0);

    agent
        .cast(AgentMsg::Assign(vec![assignment("g", "echo", "echo", 2)]))
        .unwrap();
    let seen = until_state(&mut rx, "g", 2, ReplicaState::Running).await;
    let states: Vec<_> = seen
        .iter()
        .map(|r| (r.generation, r.state.clone()))
        .collect();
    assert_eq!(
        states,
        vec![
            (1, ReplicaState::Stopped),
            (2, ReplicaState::Starting),
            (2, ReplicaState::Running)
        ]
    );
    let new = wait_members(scope, "echo", 1).await.remove(0);
    assert_ne!(new.get_id(), old.get_id());
    let list = replicas(&agent).await;
    assert_eq!((list[0].generation, list[0].pid), (2, Some(new.get_id())));
    // The old actor was stopped, not left running outside the group.
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while old.get_status() != ActorStatus::Stopped {
        assert!(
            tokio::time::Instant::now() < give_up,
            "old actor still {:?}",
            old.get_status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Its stop is not mistaken for a failure.
    quiet(&mut rx, Duration::from_millis(100)).await;
    agent.stop(None);
}

#[tokio::test]
async fn an_unassigned_actor_stops_and_leaves_its_group() {
    let scope = "t-remove";
    let (agent, mut rx) = start_agent(scope, fast_policy()).await;
    agent
        .cast(AgentMsg::Assign(vec![
            assignment("keep", "echo", "echo", 1),
            assignment("drop", "echo", "echo", 1),
        ]))
        .unwrap();
    until_all(&mut rx, &running(&["keep", "drop"])).await;
    wait_members(scope, "echo", 2).await;

    agent
        .cast(AgentMsg::Assign(vec![assignment(
            "keep", "echo", "echo", 1,
        )]))
        .unwrap();
    until_state(&mut rx, "drop", 1, ReplicaState::Stopped).await;
    let left = wait_members(scope, "echo", 1).await;
    let list = replicas(&agent).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].actor_id, "keep");
    assert_eq!(Some(left[0].get_id()), list[0].pid);
    quiet(&mut rx, Duration::from_millis(100)).await;

    agent.cast(AgentMsg::Assign(vec![])).unwrap();
    until_state(&mut rx, "keep", 1, ReplicaState::Stopped).await;
    wait_members(scope, "echo", 0).await;
    agent.stop(None);
}

#[tokio::test]
async fn stopping_the_agent_stops_its_replicas() {
    let scope = "t-agent-stop";
    let (agent, mut rx) = start_agent(scope, fast_policy()).await;
    agent
        .cast(AgentMsg::Assign(vec![assignment("x", "echo", "echo", 1)]))
        .unwrap();
    until_state(&mut rx, "x", 1, ReplicaState::Running).await;
    let child = wait_members(scope, "echo", 1).await.remove(0);
    agent.stop_and_wait(None, Some(PATIENCE)).await.unwrap();
    until_state(&mut rx, "x", 1, ReplicaState::Stopped).await;
    wait_members(scope, "echo", 0).await;
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while child.get_status() != ActorStatus::Stopped {
        assert!(tokio::time::Instant::now() < give_up);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_unknown_kind_fails_without_restarts() {
    let scope = "t-unknown-kind";
    let (agent, mut rx) = start_agent(scope, fast_policy()).await;
    agent
        .cast(AgentMsg::Assign(vec![assignment("u", "d", "foo", 3)]))
        .unwrap();
    let seen = until(&mut rx, "Failed", |r| r.actor_id == "u").await;
    assert_eq!(
        seen,
        vec![StatusReport {
            actor_id: "u".into(),
            generation: 3,
            state: ReplicaState::Failed {
                reason: "unknown actor kind \"foo\"; known kinds: echo, spin, embedder, vector_partition, model, retrieval_coordinator"
                    .into()
            }
        }]
    );
    quiet(&mut rx, Duration::from_millis(100)).await;
    agent.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_answers_and_rejects_bad_payloads() {
    let scope = "t-spin";
    let (agent, mut rx) = start_agent(scope, fast_policy()).await;
    agent
        .cast(AgentMsg::Assign(vec![assignment("s", "spin", "spin", 1)]))
        .unwrap();
    until_state(&mut rx, "s", 1, ReplicaState::Running).await;
    let router = Router::new(scope, "spin");
    assert_eq!(
        router.call(br#"{"ms": 20}"#.to_vec(), CALL).await,
        Ok(br#"{"spun_ms":20}"#.to_vec())
    );
    assert_eq!(
        router.call(b"15".to_vec(), CALL).await,
        Ok(br#"{"spun_ms":15}"#.to_vec())
    );
    for bad in [&b"soon"[..], b"{\"ms\": 1e9}", b"99999999", b"\xff"] {
        match router.call(bad.to_vec(), CALL).await {
            // The request's own fault, coded so: the gateway reports it as invalid_job.
            Err(CallError::Replica(CallFailure::Invalid(why))) => {
                assert!(why.contains("spin"), "{why}")
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // A long spin does not stop the replica from answering others.
    let long = {
        let router = router.clone();
        tokio::spawn(async move { router.call(b"500".to_vec(), CALL).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(router.call(b"1".to_vec(), CALL).await.is_ok());
    assert!(
        !long.is_finished(),
        "the short call waited for the long one"
    );
    assert_eq!(long.await.unwrap(), Ok(br#"{"spun_ms":500}"#.to_vec()));
    // The replica stayed up throughout.
    quiet(&mut rx, Duration::from_millis(50)).await;
    agent.stop(None);
}

/// Bytes that do not decode as a request get an error reply from every kind, not a panic.
#[tokio::test]
async fn undecodable_requests_get_error_replies() {
    let (parent, _) = Actor::spawn(None, Parent, ()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    // A model replica loads a real model first: tests/model.rs sends it garbage.
    for kind in Kind::ALL.into_iter().filter(|&k| k != Kind::Model) {
        let config = match kind {
            Kind::VectorPartition => r#"{"collection":"raw","partition":0,"dim":4}"#,
            // The embedder would take the assigned GPU by default; this machine may have none.
            Kind::Embedder => r#"{"device": "cpu"}"#,
            Kind::RetrievalCoordinator => r#"{"collection":"raw"}"#,
            Kind::Echo | Kind::Spin | Kind::Model => "{}",
        };
        let ctx = ReplicaContext {
            actor_id: format!("raw-{kind}/0"),
            deployment: "raw".into(),
            generation: 1,
            devices: vec![0],
            config: config.into(),
            data_dir: data.path().to_path_buf(),
            models_dir: arbor_kernels::models::models_dir(None),
            scope: String::new(),
            control: arbor_actors::control::memory::MemoryControl::new().control(),
        };
        let replica = spawn_replica(kind, ctx, parent.get_cell()).await.unwrap();
        let garbage = Wire::<CallRequest>::from_bytes(vec![0xFF, 0xFF, 0xFF]);
        let reply = replica
            .call(|port| ReplicaMsg::Call(garbage, port), Some(CALL))
            .await
            .unwrap();
        let CallResult::Success(reply) = reply else {
            panic!("{kind}: no reply");
        };
        let err = reply.into_inner().unwrap().unwrap_err();
        assert!(matches!(err, CallFailure::Invalid(_)), "{kind}: {err:?}");
        assert!(err.to_string().contains("does not decode"), "{kind}: {err}");
        assert_eq!(replica.get_status(), ActorStatus::Running);
        replica.stop(None);
    }
    parent.stop(None);
}

/// Two spin replicas; a 300 ms call through a router (`idempotent` or not) whose replica is
/// killed while it works. Returns what the call got, how long it took, and the agent's
/// events (the victim is restarted by the agent as usual).
async fn kill_mid_call(
    scope: &'static str,
    idempotent: bool,
) -> (
    Result<Vec<u8>, CallError>,
    Duration,
    ActorRef<AgentMsg>,
    UnboundedReceiver<StatusReport>,
) {
    let (agent, mut rx) = start_agent(scope, fast_policy()).await;
    agent
        .cast(AgentMsg::Assign(vec![
            assignment("m1", "spin", "spin", 1),
            assignment("m2", "spin", "spin", 1),
        ]))
        .unwrap();
    until_all(&mut rx, &running(&["m1", "m2"])).await;
    let cells = wait_members(scope, "spin", 2).await;

    let router = Router::new(scope, "spin").idempotent(idempotent);
    let began = tokio::time::Instant::now();
    let call = {
        let router = router.clone();
        tokio::spawn(async move { router.call(b"300".to_vec(), CALL).await })
    };
    // Find the replica that took the call, and kill it while it works.
    let give_up = tokio::time::Instant::now() + PATIENCE;
    let victim = loop {
        if let Some(cell) = cells.iter().find(|c| router.outstanding(c.get_id()) == 1) {
            break cell.clone();
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the call never went out"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    victim.kill();
    let got = call.await.unwrap();
    (got, began.elapsed(), agent, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_call_rides_through_a_replica_dying_mid_call() {
    let (got, took, agent, mut rx) = kill_mid_call("t-mid-call", true).await;
    assert_eq!(got, Ok(br#"{"spun_ms":300}"#.to_vec()));
    // The answer came from a second, full spin elsewhere, not from the dying replica (a lower
    // bound only: a slow machine makes it longer, never shorter).
    assert!(took >= Duration::from_millis(340), "{took:?}");
    // The victim was restarted by the agent as usual.
    let seen = until(&mut rx, "a restart", |r| r.state == ReplicaState::Running).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    agent.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_may_have_run_is_not_repeated_unless_idempotent() {
    let (got, _, agent, _rx) = kill_mid_call("t-mid-call-once", false).await;
    match got {
        Err(e @ CallError::Unanswered { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("may have run") && text.contains("idempotent"),
                "{text}"
            );
            assert_eq!(
                arbor_proto::Coded::code(&e),
                arbor_proto::ErrorCode::Unavailable
            );
        }
        other => panic!("the call was repeated or answered: {other:?}"),
    }
    agent.stop(None);
}

/// A slow start is visible as `Starting`, and the agent keeps answering meanwhile.
#[tokio::test]
async fn the_agent_answers_while_a_replica_starts_slowly() {
    let scope = "t-slow-start";
    let (agent, mut rx) = start_agent(scope, fast_policy()).await;
    let mut slow = assignment("slow", "echo", "echo", 1);
    slow.config = r#"{"start_delay_ms": 300}"#.into();
    agent.cast(AgentMsg::Assign(vec![slow])).unwrap();
    until_state(&mut rx, "slow", 1, ReplicaState::Starting).await;
    let list = replicas(&agent).await;
    assert_eq!(list[0].state, ReplicaState::Starting);
    assert_eq!(list[0].pid, None);
    assert!(members(scope, "echo").is_empty());
    until_state(&mut rx, "slow", 1, ReplicaState::Running).await;
    assert!(replicas(&agent).await[0].pid.is_some());
    agent.stop(None);
}
