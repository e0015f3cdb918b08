//! Randomized histories of concurrent read / write / compare-and-set on a few keys, under
//! leader kills and partitions, each checked for linearizability.
//!
//! The checker is Wing & Gong's search with Lowe's memoization (as in Porcupine), run per
//! key (linearizability is local, so a history is linearizable iff each key's is). An
//! operation whose outcome is unknown (timed out, or its node was killed) is given a return
//! time of +∞: it may take effect at any point after its call, or never (an effect after
//! everything else is unobservable).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbor_scheduler::{Bootstrap, Command, CommandOutcome, NodeConfig, RaftHandle};
use common::Cluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Read {
        saw: Option<String>,
    },
    Write {
        value: String,
    },
    /// `result`: `Some((swapped, previous))`, or `None` when unknown.
    Cas {
        expected: Option<String>,
        new: String,
        result: Option<(bool, Option<String>)>,
    },
}

#[derive(Debug, Clone)]
struct Event {
    key: String,
    op: Op,
    call: u64,
    /// `u64::MAX` when the outcome is unknown.
    ret: u64,
}

type Value = Option<String>;

/// The register model: whether `op` can take effect on `state`, and the state after it.
fn step(state: &Value, op: &Op) -> Option<Value> {
    match op {
        Op::Read { saw } => (saw == state).then(|| state.clone()),
        Op::Write { value } => Some(Some(value.clone())),
        Op::Cas {
            expected,
            new,
            result,
        } => match result {
            Some((true, prev)) => (state == expected && prev == state).then(|| Some(new.clone())),
            Some((false, prev)) => (state != expected && prev == state).then(|| state.clone()),
            None => Some(if state == expected {
                Some(new.clone())
            } else {
                state.clone()
            }),
        },
    }
}

/// Wing & Gong / Lowe linearizability check of one register's history.
fn linearizable(ops: &[Event]) -> bool {
    #[derive(Clone, Copy)]
    struct Node {
        op: usize,
        is_call: bool,
        prev: usize,
        next: usize,
        /// For a call: index of its return node.
        matching: usize,
    }
    let n = ops.len();
    if n == 0 {
        return true;
    }
    // Events: calls before returns at equal times (treat touching intervals as concurrent).
    let mut evs: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in ops.iter().enumerate() {
        evs.push((e.call, 0, i));
        evs.push((e.ret, 1, i));
    }
    evs.sort();
    // Linked list with a head sentinel at index 0.
    let mut nodes: Vec<Node> = Vec::with_capacity(2 * n + 1);
    nodes.push(Node {
        op: usize::MAX,
        is_call: false,
        prev: usize::MAX,
        next: 1,
        matching: 0,
    });
    let mut call_node = vec![0usize; n];
    for (k, (_, kind, i)) in evs.iter().enumerate() {
        let idx = k + 1;
        nodes.push(Node {
            op: *i,
            is_call: *kind == 0,
            prev: idx - 1,
            next: if k + 1 < evs.len() {
                idx + 1
            } else {
                usize::MAX
            },
            matching: 0,
        });
        if *kind == 0 {
            call_node[*i] = idx;
        } else {
            nodes[call_node[*i]].matching = idx;
        }
    }
    let lift = |nodes: &mut Vec<Node>, c: usize| {
        let r = nodes[c].matching;
        let (p, nx) = (nodes[c].prev, nodes[c].next);
        nodes[p].next = nx;
        if nx != usize::MAX {
            nodes[nx].prev = p;
        }
        let (p, nx) = (nodes[r].prev, nodes[r].next);
        nodes[p].next = nx;
        if nx != usize::MAX {
            nodes[nx].prev = p;
        }
    };
    let unlift = |nodes: &mut Vec<Node>, c: usize| {
        let r = nodes[c].matching;
        let (p, nx) = (nodes[r].prev, nodes[r].next);
        nodes[p].next = r;
        if nx != usize::MAX {
            nodes[nx].prev = r;
        }
        let (p, nx) = (nodes[c].prev, nodes[c].next);
        nodes[p].next = c;
        if nx != usize::MAX {
            nodes[nx].prev = c;
        }
    };
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Value)> = HashSet::new();
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut state: Value = None;
    let mut entry = nodes[0].next;
    loop {
        if nodes[0].next == usize::MAX {
            return true;
        }
        if entry == usize::MAX {
            // Ran off the end without linearizing anything new: backtrack.
            let Some((c, s)) = stack.pop() else {
                return false;
            };
            let op = nodes[c].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = s;
            unlift(&mut nodes, c);
            entry = nodes[c].next;
            continue;
        }
        let node = nodes[entry];
        if node.is_call {
            let op = node.op;
            if let Some(next_state) = step(&state, &ops[op].op) {
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), next_state.clone())) {
                    stack.push((entry, state.clone()));
                    state = next_state;
                    linearized = lin;
                    lift(&mut nodes, entry);
                    entry = nodes[0].next;
                    continue;
                }
            }
            entry = node.next;
        } else {
            // A return whose call is not linearized yet: backtrack.
            let Some((c, s)) = stack.pop() else {
                return false;
            };
            let op = nodes[c].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = s;
            unlift(&mut nodes, c);
            entry = nodes[c].next;
        }
    }
}

fn check(history: &[Event]) -> Result<(), String> {
    let mut per_key: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
    for e in history {
        per_key.entry(&e.key).or_default().push(e.clone());
    }
    for (key, ops) in per_key {
        if !linearizable(&ops) {
            return Err(format!("key {key:?} is not linearizable: {ops:#?}"));
        }
    }
    Ok(())
}

#[test]
fn checker_accepts_and_refuses_known_histories() {
    let ev = |op: Op, call, ret| Event {
        key: "x".into(),
        op,
        call,
        ret,
    };
    let w = |v: &str| Op::Write { value: v.into() };
    let r = |v: Option<&str>| Op::Read {
        saw: v.map(Into::into),
    };
    // Sequential and consistent.
    assert!(linearizable(&[ev(w("1"), 0, 1), ev(r(Some("1")), 2, 3)]));
    // A stale read after a completed write.
    assert!(!linearizable(&[ev(w("1"), 0, 1), ev(r(None), 2, 3)]));
    // Concurrent read may see either.
    assert!(linearizable(&[
        ev(w("1"), 0, 5),
        ev(r(None), 1, 2),
        ev(r(Some("1")), 3, 4)
    ]));
    // But not new then old.
    assert!(!linearizable(&[
        ev(w("1"), 0, 5),
        ev(r(Some("1")), 1, 2),
        ev(r(None), 3, 4)
    ]));
    // An unknown write may or may not have happened.
    assert!(linearizable(&[ev(w("1"), 0, u64::MAX), ev(r(None), 2, 3)]));
    assert!(linearizable(&[
        ev(w("1"), 0, u64::MAX),
        ev(r(Some("1")), 2, 3)
    ]));
    // A successful CAS needs the expected value.
    let cas = |e: Option<&str>, n: &str, res| Op::Cas {
        expected: e.map(Into::into),
        new: n.into(),
        result: res,
    };
    assert!(linearizable(&[
        ev(w("1"), 0, 1),
        ev(cas(Some("1"), "2", Some((true, Some("1".into())))), 2, 3)
    ]));
    assert!(!linearizable(&[
        ev(w("1"), 0, 1),
        ev(cas(None, "2", Some((true, None))), 2, 3)
    ]));
    // Two successful CAS from the same value cannot both win.
    assert!(!linearizable(&[
        ev(cas(None, "a", Some((true, None))), 0, 10),
        ev(cas(None, "b", Some((true, None))), 1, 11),
    ]));
}

fn lin_config(cfg: &mut NodeConfig) {
    cfg.client.propose_timeout = Duration::from_secs(3);
    cfg.client.read_timeout = Duration::from_secs(3);
    cfg.raft.snapshot_interval = 200;
}

const KEYS: [&str; 3] = ["x", "y", "z"];

async fn client(
    id: usize,
    seed: u64,
    handles: Arc<Mutex<BTreeMap<u64, RaftHandle>>>,
    start: Instant,
    until: Instant,
) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed * 1000 + id as u64);
    let mut history = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        let h = {
            let hs = handles.lock().unwrap();
            let ids: Vec<u64> = hs.keys().copied().collect();
            hs[&ids[rng.random_range(0..ids.len())]].clone()
        };
        let key = KEYS[rng.random_range(0..KEYS.len())].to_string();
        let now = || start.elapsed().as_nanos() as u64;
        let call = now();
        n += 1;
        match rng.random_range(0..3) {
            0 => {
                let k = key.clone();
                if let Ok(saw) = h.read(move |s| s.kv.get(&k).cloned()).await {
                    history.push(Event {
                        key,
                        op: Op::Read { saw },
                        call,
                        ret: now(),
                    });
                }
                // A failed read has no effect: left out.
            }
            1 => {
                let value = format!("c{id}-{n}");
                let r = h
                    .propose(Command::KvPut {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .await;
                history.push(Event {
                    key,
                    op: Op::Write { value },
                    call,
                    ret: if r.is_ok() { now() } else { u64::MAX },
                });
            }
            _ => {
                let expected = match rng.random_range(0..3) {
                    0 => None,
                    _ => history.iter().rev().find_map(|e: &Event| match &e.op {
                        Op::Write { value } if e.key == key => Some(value.clone()),
                        _ => None,
                    }),
                };
                let new = format!("c{id}-{n}");
                let r = h
                    .propose(Command::KvCas {
                        key: key.clone(),
                        expected: expected.clone(),
                        new: Some(new.clone()),
                    })
                    .await;
                let (result, ret) = match r {
                    Ok(CommandOutcome::Cas { swapped, previous }) => {
                        (Some((swapped, previous)), now())
                    }
                    Ok(other) => panic!("CAS returned {other:?}"),
                    Err(_) => (None, u64::MAX),
                };
                history.push(Event {
                    key,
                    op: Op::Cas {
                        expected,
                        new,
                        result,
                    },
                    call,
                    ret,
                });
            }
        }
    }
    history
}

async fn run_seed(seed: u64) {
    let mut c = Cluster::start_with(3, lin_config).await;
    c.wait_leader(&[1, 2, 3], Duration::from_secs(15)).await;
    let handles = Arc::new(Mutex::new(
        (1..=3)
            .map(|i| (i, c.handle(i)))
            .collect::<BTreeMap<_, _>>(),
    ));
    let start = Instant::now();
    let until = start + Duration::from_secs(6);
    let clients: Vec<_> = (0..4)
        .map(|i| tokio::spawn(client(i, seed, handles.clone(), start, until)))
        .collect();
    // Nemesis: every ~1.2 s, kill the leader (restarting it later) or isolate a node.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = 0;
    while Instant::now() + Duration::from_millis(1500) < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..800))).await;
        let statuses = c.statuses().await;
        let leader = statuses.iter().find_map(|s| s.leader).unwrap_or(1);
        if rng.random_bool(0.5) {
            if c.nodes.contains_key(&leader) && c.nodes.len() == 3 {
                handles.lock().unwrap().remove(&leader);
                c.kill(leader).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(200..900))).await;
                c.start_node(leader, Bootstrap::Voters(vec![1, 2, 3])).await;
                handles.lock().unwrap().insert(leader, c.handle(leader));
                faults += 1;
            }
        } else {
            let victim = rng.random_range(1..=3u64);
            let rest: Vec<u64> = (1..=3).filter(|i| *i != victim).collect();
            c.partition(&[victim], &rest);
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
            c.heal();
            faults += 1;
        }
    }
    let mut history = Vec::new();
    for cl in clients {
        history.extend(cl.await.unwrap());
    }
    let completed = history.iter().filter(|e| e.ret != u64::MAX).count();
    assert!(
        completed > 20,
        "seed {seed}: only {completed} operations completed under {faults} faults"
    );
    if let Err(e) = check(&history) {
        panic!("seed {seed}: {e}");
    }
    eprintln!(
        "seed {seed}: {} operations ({completed} completed) under {faults} faults: linearizable",
        history.len()
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_leader_kills_and_partitions_are_linearizable() {
    let seeds: u64 = std::env::var("ARBOR_LIN_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    for seed in 1..=seeds {
        run_seed(seed).await;
    }
}
