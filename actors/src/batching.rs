//! Dynamic batching: which waiting requests run together, and when.
//!
//! A model runs many texts in one forward pass for about the cost of a few, so a replica
//! collects requests for a short while and runs them together. Three limits bound a batch:
//! its number of texts (`max_batch`), its word pieces (`token_budget`, which bounds the
//! attention's memory and the latency of the pass), and how long the oldest request may wait
//! for company (`max_wait`). A bounded queue in front of it answers "overloaded" at once
//! rather than letting latency grow without end.
//!
//! Everything here is pure data: the current [`Instant`] is passed in, never read, so tests
//! drive time by hand. The worker that owns a [`BatchQueue`] decides with [`BatchQueue::due`]
//! when to call [`BatchQueue::take_batch`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};

/// The batching limits of one replica; part of a kind's JSON config as `"batching"`.
///
/// ```json
/// {"max_batch": 32, "max_wait_ms": 0, "token_budget": 8192, "queue_capacity": 1024}
/// ```
/// Every field is optional (the defaults are shown); an unknown one is an error.
///
/// `max_wait_ms` defaults to 0 because the worker runs one batch at a time: requests that
/// arrive while a batch runs already form the next one, so under load batches fill without
/// any wait, and a lone request on an idle replica (a user's query) runs at once instead of
/// paying the wait for company that is not coming. A wait helps only where a bigger batch is
/// nearly free and arrivals are bursty (a GPU replica behind many clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchPolicy {
    /// Most texts in one batch (texts, not requests: a request of 3 texts takes 3).
    pub max_batch: usize,
    /// Longest time the oldest waiting request waits for more to join it. JSON:
    /// `max_wait_ms`, in milliseconds.
    #[serde(rename = "max_wait_ms", deserialize_with = "millis")]
    pub max_wait: Duration,
    /// Most word pieces (padding not counted) in one batch.
    pub token_budget: usize,
    /// Most requests waiting; one more is refused at once with [`QueueFull`].
    pub queue_capacity: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_batch: 32,
            max_wait: Duration::ZERO,
            token_budget: 8192,
            queue_capacity: 1024,
        }
    }
}

fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

impl BatchPolicy {
    /// Checks the limits that would make a queue useless (nothing could ever be queued or
    /// batched); the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("max_batch", self.max_batch),
            ("token_budget", self.token_budget),
            ("queue_capacity", self.queue_capacity),
        ] {
            if value == 0 {
                return Err(format!("batching.{name} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// What one request costs a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    pub texts: usize,
    pub tokens: usize,
}

/// A request refused because the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("embedder queue is full ({queued} requests waiting); retry later or add replicas")]
pub struct QueueFull {
    pub queued: usize,
}

/// A refused request, handed back so that the caller can answer it.
#[derive(Debug)]
pub struct Refused<T> {
    pub item: T,
    pub error: QueueFull,
}

/// When the next batch should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing is waiting.
    Idle,
    /// Not yet: wait until then (or until more requests arrive).
    At(Instant),
    /// A batch is ready.
    Now,
}

#[derive(Debug)]
struct Queued<T> {
    item: T,
    cost: Cost,
    arrived: Instant,
}

/// Requests waiting to be batched, oldest first.
#[derive(Debug)]
pub struct BatchQueue<T> {
    policy: BatchPolicy,
    waiting: VecDeque<Queued<T>>,
    /// Totals over `waiting`, kept so that `due` does not walk the queue.
    texts: usize,
    tokens: usize,
}

impl<T> BatchQueue<T> {
    pub fn new(policy: BatchPolicy) -> Self {
        BatchQueue {
            policy,
            waiting: VecDeque::new(),
            texts: 0,
            tokens: 0,
        }
    }

    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Queues a request that arrived at `now`, or hands it back at once when
    /// `queue_capacity` requests are already waiting.
    pub fn offer(&mut self, item: T, cost: Cost, now: Instant) -> Result<(), Refused<T>> {
        if self.waiting.len() >= self.policy.queue_capacity {
            return Err(Refused {
                item,
                error: QueueFull {
                    queued: self.waiting.len(),
                },
            });
        }
        self.texts += cost.texts;
        self.tokens += cost.tokens;
        self.waiting.push_back(Queued {
            item,
            cost,
            arrived: now,
        });
        Ok(())
    }

    /// Whether a batch should run at `now`: when the waiting requests fill a batch (by texts
    /// or by tokens), or the oldest has waited `max_wait`.
    pub fn due(&self, now: Instant) -> Due {
        let Some(oldest) = self.waiting.front() else {
            return Due::Idle;
        };
        if self.texts >= self.policy.max_batch || self.tokens >= self.policy.token_budget {
            return Due::Now;
        }
        let deadline = oldest
            .arrived
            .checked_add(self.policy.max_wait)
            .unwrap_or(now);
        if now >= deadline {
            Due::Now
        } else {
            Due::At(deadline)
        }
    }

    /// Removes and returns the next batch: the longest run of oldest requests within
    /// `max_batch` texts and `token_budget` tokens, and always at least one request (one
    /// that alone exceeds a limit runs alone). Empty only when nothing waits.
    pub fn take_batch(&mut self) -> Vec<T> {
        let n = batch_len(&self.policy, self.waiting.iter().map(|q| q.cost));
        let batch: Vec<Queued<T>> = self.waiting.drain(..n).collect();
        for q in &batch {
            self.texts -= q.cost.texts;
            self.tokens -= q.cost.tokens;
        }
        batch.into_iter().map(|q| q.item).collect()
    }
}

/// How many of the leading `costs` (oldest first) form the next batch under `policy`: as
/// many as fit in both limits, at least one if there is any.
pub fn batch_len(policy: &BatchPolicy, costs: impl IntoIterator<Item = Cost>) -> usize {
    let (mut n, mut texts, mut tokens) = (0usize, 0usize, 0usize);
    for cost in costs {
        let (t, k) = (texts + cost.texts, tokens + cost.tokens);
        if n > 0 && (t > policy.max_batch || k > policy.token_budget) {
            break;
        }
        (n, texts, tokens) = (n + 1, t, k);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(max_batch: usize, token_budget: usize, queue_capacity: usize) -> BatchPolicy {
        BatchPolicy {
            max_batch,
            max_wait: Duration::from_millis(5),
            token_budget,
            queue_capacity,
        }
    }

    fn cost(texts: usize, tokens: usize) -> Cost {
        Cost { texts, tokens }
    }

    #[test]
    fn config_defaults_and_errors() {
        let p: BatchPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, BatchPolicy::default());
        let p: BatchPolicy =
            serde_json::from_str(r#"{"max_wait_ms": 40, "max_batch": 8}"#).unwrap();
        assert_eq!(p.max_wait, Duration::from_millis(40));
        assert_eq!(p.max_batch, 8);
        assert_eq!(p.queue_capacity, 1024);
        let err = serde_json::from_str::<BatchPolicy>(r#"{"max_wait": 4}"#).unwrap_err();
        assert!(err.to_string().contains("max_wait"), "{err}");
        let err = policy(1, 0, 1).validate().unwrap_err();
        assert!(err.contains("token_budget"), "{err}");
        assert!(BatchPolicy::default().validate().is_ok());
    }

    #[test]
    fn waits_for_company_until_max_wait() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(policy(4, 100, 10));
        assert_eq!(q.due(t0), Due::Idle);
        q.offer('a', cost(1, 10), t0).unwrap();
        let deadline = t0 + Duration::from_millis(5);
        assert_eq!(q.due(t0), Due::At(deadline));
        q.offer('b', cost(1, 10), t0 + Duration::from_millis(3))
            .unwrap();
        // The oldest request sets the deadline.
        assert_eq!(q.due(t0 + Duration::from_millis(4)), Due::At(deadline));
        assert_eq!(q.due(deadline), Due::Now);
        assert_eq!(q.take_batch(), vec!['a', 'b']);
        assert_eq!(q.due(deadline), Due::Idle);
    }

    #[test]
    fn full_by_texts_or_tokens_is_due_at_once() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(policy(4, 100, 10));
        q.offer('a', cost(3, 10), t0).unwrap();
        assert!(matches!(q.due(t0), Due::At(_)));
        q.offer('b', cost(1, 10), t0).unwrap();
        assert_eq!(q.due(t0), Due::Now);
        assert_eq!(q.take_batch(), vec!['a', 'b']);

        q.offer('c', cost(1, 100), t0).unwrap();
        assert_eq!(q.due(t0), Due::Now);
        assert_eq!(q.take_batch(), vec!['c']);
    }

    #[test]
    fn batches_stop_at_either_limit_and_oversized_requests_run_alone() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(policy(4, 100, 10));
        for (item, c) in [
            ('a', cost(2, 10)),
            ('b', cost(2, 10)),
            ('c', cost(1, 10)),  // would make 5 texts
            ('d', cost(1, 95)),  // would make 105 tokens
            ('e', cost(9, 10)),  // over max_batch alone
            ('f', cost(1, 500)), // over the budget alone
        ] {
            q.offer(item, c, t0).unwrap();
        }
        assert_eq!(q.take_batch(), vec!['a', 'b']);
        assert_eq!(q.take_batch(), vec!['c']);
        assert_eq!(q.take_batch(), vec!['d']);
        assert_eq!(q.take_batch(), vec!['e']);
        assert_eq!(q.take_batch(), vec!['f']);
        assert!(q.take_batch().is_empty());
        assert_eq!((q.texts, q.tokens), (0, 0));
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_says_how_full() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(policy(4, 100, 2));
        q.offer(1, cost(1, 1), t0).unwrap();
        q.offer(2, cost(1, 1), t0).unwrap();
        let refused = q.offer(3, cost(1, 1), t0).unwrap_err();
        assert_eq!(refused.item, 3);
        assert_eq!(
            refused.error.to_string(),
            "embedder queue is full (2 requests waiting); retry later or add replicas"
        );
        q.take_batch();
        q.offer(4, cost(1, 1), t0).unwrap();
    }

    proptest! {
        #[test]
        fn batches_keep_limits_order_and_every_request(
            max_batch in 1usize..8,
            token_budget in 1usize..60,
            capacity in 1usize..12,
            // Each step: a request's cost, and whether a batch is taken after offering it.
            steps in prop::collection::vec(((1usize..6, 0usize..40), any::<bool>()), 0..60),
        ) {
            let p = policy(max_batch, token_budget, capacity);
            let t0 = Instant::now();
            let mut q = BatchQueue::new(p);
            let mut costs = Vec::new();
            let (mut accepted, mut refused, mut served) = (Vec::new(), Vec::new(), Vec::new());
            let check = |batch: Vec<usize>, costs: &[Cost], served: &mut Vec<usize>| {
                if batch.len() > 1 {
                    let texts: usize = batch.iter().map(|&i| costs[i].texts).sum();
                    let tokens: usize = batch.iter().map(|&i| costs[i].tokens).sum();
                    prop_assert!(texts <= max_batch, "{texts} texts in {batch:?}");
                    prop_assert!(tokens <= token_budget, "{tokens} tokens in {batch:?}");
                }
                served.extend(batch);
                Ok(())
            };
            for (i, ((texts, tokens), take)) in steps.into_iter().enumerate() {
                costs.push(cost(texts, tokens));
                match q.offer(i, costs[i], t0) {
                    Ok(()) => accepted.push(i),
                    Err(r) => {
                        prop_assert_eq!(r.item, i);
                        prop_assert_eq!(r.error.queued, capacity);
                        refused.push(i);
                    }
                }
                prop_assert!(q.len() <= capacity);
                if take {
                    let batch = q.take_batch();
                    prop_assert_eq!(batch.is_empty(), accepted.len() == served.len());
                    check(batch, &costs, &mut served)?;
                }
            }
            while !q.is_empty() {
                let batch = q.take_batch();
                prop_assert!(!batch.is_empty());
                check(batch, &costs, &mut served)?;
            }
            // FIFO, nothing lost, nothing twice.
            prop_assert_eq!(&served, &accepted);
            prop_assert_eq!(accepted.len() + refused.len(), costs.len());
        }
    }
}
