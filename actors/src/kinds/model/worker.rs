//! The thread that owns the model and batches generations continuously.
//!
//! A forward pass is seconds of blocking math, so it never runs on a tokio thread. The worker
//! keeps up to `max_batch` sequences going; between two steps it admits waiting requests into
//! free slots (a new sequence's whole prompt is fed by its first step, in the same forward pass
//! as the other sequences' next tokens: `Llama::step` takes a ragged batch), ends the ones that
//! were cancelled, and hands each token's text to its generation's [`Stream`].

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use arbor_kernels::llama::{GenerateError, Llama, Sequence};
use serde::Serialize;

use super::protocol::{Checked, Finished, Prompt, reason_name};
use super::streams::Stream;

/// One accepted request, waiting for a batch slot.
pub(crate) struct Job {
    pub checked: Checked,
    pub stream: Arc<Stream>,
    /// When the replica accepted it: time to first token counts from here.
    pub accepted: Instant,
}

/// The deployment's series on `/metrics`.
pub(crate) struct Meters {
    tokens: metrics::Counter,
    first_token: metrics::Histogram,
    active: metrics::Gauge,
    queued: metrics::Gauge,
}

impl Meters {
    pub fn of(deployment: &str) -> Meters {
        let d = deployment.to_owned();
        Meters {
            tokens: metrics::counter!("arbor_model_tokens_total", "deployment" => d.clone()),
            first_token: metrics::histogram!(
                "arbor_model_time_to_first_token_seconds",
                "deployment" => d.clone()
            ),
            active: metrics::gauge!("arbor_model_active_generations", "deployment" => d.clone()),
            queued: metrics::gauge!("arbor_deployment_queue_depth", "deployment" => d),
        }
    }
}

/// Requests waiting for a slot, shared by the actor (which adds) and the worker (which takes).
#[derive(Default)]
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the worker when it sleeps with nothing to do.
    wake: Condvar,
}

#[derive(Default)]
struct QueueState {
    waiting: VecDeque<Job>,
    shutdown: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a job, unless `max_queue` jobs already wait: then the caller is told at once
    /// how many (an overloaded replica must push back, not queue without bound).
    pub fn push(&self, job: Job, max_queue: usize) -> Result<(), u32> {
        let mut q = self.lock();
        if q.shutdown {
            return Err(0);
        }
        if q.waiting.len() >= max_queue {
            return Err(u32::try_from(q.waiting.len()).unwrap_or(u32::MAX));
        }
        q.waiting.push_back(job);
        self.wake.notify_one();
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Makes the worker fail what it holds and exit at its next round.
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.wake.notify_all();
    }
}

/// Counters the worker keeps, read through the generic `Call` with `{"stats": true}`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub steps: AtomicU64,
    /// The most sequences one step advanced together: shows that batching happens.
    pub max_batch_seen: AtomicU64,
    pub tokens: AtomicU64,
    pub active: AtomicU64,
    pub started: AtomicU64,
    pub finished: AtomicU64,
    /// Generations dropped unfinished because nobody polled them.
    pub abandoned: AtomicU64,
}

/// A copy of [`Stats`] at one moment, as JSON.
#[derive(Debug, Serialize)]
pub(crate) struct StatsSnapshot {
    pub steps: u64,
    pub max_batch_seen: u64,
    pub tokens: u64,
    pub active: u64,
    pub queued: u64,
    pub started: u64,
    pub finished: u64,
    pub abandoned: u64,
    pub generations: u64,
}

impl Stats {
    pub fn snapshot(&self, queued: usize, generations: usize) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            steps: get(&self.steps),
            max_batch_seen: get(&self.max_batch_seen),
            tokens: get(&self.tokens),
            active: get(&self.active),
            queued: queued as u64,
            started: get(&self.started),
            finished: get(&self.finished),
            abandoned: get(&self.abandoned),
            generations: generations as u64,
        }
    }
}

/// A sequence in the batch and where its text goes.
struct Slot {
    stream: Arc<Stream>,
    /// Bytes of text handed to the stream so far.
    streamed: usize,
    /// When the request was accepted, until its first token is out.
    waiting_since: Option<Instant>,
}

/// Runs the batching loop until the queue is shut down; meant for a thread of its own.
pub(crate) fn run(
    llama: Llama,
    queue: Arc<Queue>,
    stats: Arc<Stats>,
    meters: Meters,
    max_batch: usize,
) {
    let mut seqs: Vec<Sequence> = Vec::new();
    let mut slots: Vec<Slot> = Vec::new();
    loop {
        let jobs: Vec<Job> = {
            let mut q = queue.lock();
            while seqs.is_empty() && q.waiting.is_empty() && !q.shutdown {
                q = queue.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.shutdown {
                let waiting: Vec<Job> = q.waiting.drain(..).collect();
                drop(q);
                let gone = "the model replica stopped";
                waiting.iter().for_each(|j| fail(&j.stream, gone));
                slots.iter().for_each(|s| fail(&s.stream, gone));
                stats.active.store(0, Ordering::Relaxed);
                return;
            }
            let free = max_batch.saturating_sub(seqs.len()).min(q.waiting.len());
            let jobs = q.waiting.drain(..free).collect();
            meters.queued.set(q.waiting.len() as f64);
            jobs
        };
        for job in jobs {
            match start(&llama, job.checked) {
                Ok(seq) => {
                    stats.started.fetch_add(1, Ordering::Relaxed);
                    seqs.push(seq);
                    slots.push(Slot {
                        stream: job.stream,
                        streamed: 0,
                        waiting_since: Some(job.accepted),
                    });
                }
                Err(e) => fail(&job.stream, &e.to_string()),
            }
        }
        for (seq, slot) in seqs.iter_mut().zip(&slots) {
            if slot.stream.lock().cancel {
                seq.cancel();
            }
        }
        let running = seqs.iter().filter(|s| !s.is_finished()).count() as u64;
        stats.active.store(running, Ordering::Relaxed);
        if running > 0 {
            stats.max_batch_seen.fetch_max(running, Ordering::Relaxed);
            let stepped = llama.step(&mut seqs, |i, event| {
                if let Some(slot) = slots.get_mut(i) {
                    slot.stream.lock().texts.push(event.text.clone());
                    slot.streamed += event.text.len();
                    if let Some(since) = slot.waiting_since.take() {
                        meters.first_token.record(since.elapsed().as_secs_f64());
                    }
                }
                ControlFlow::Continue(())
            });
            stats.steps.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = stepped {
                // A failed forward pass leaves the caches in an unknown state: end them all.
                tracing::error!(error = %e, "model step failed; failing its batch");
                slots.iter().for_each(|s| fail(&s.stream, &e.to_string()));
                seqs.clear();
                slots.clear();
                continue;
            }
            stats.tokens.fetch_add(running, Ordering::Relaxed);
            meters.tokens.increment(running);
            slots.iter().for_each(|s| s.stream.wake());
        }
        retire(&mut seqs, &mut slots, &stats);
        stats.active.store(seqs.len() as u64, Ordering::Relaxed);
        meters.active.set(seqs.len() as f64);
    }
}

/// The sequence for a request: a chat is rendered with the model's own template.
fn start(llama: &Llama, checked: Checked) -> Result<Sequence, GenerateError> {
    let prompt = match checked.prompt {
        Prompt::Raw(text) => text,
        Prompt::Chat(messages) => llama.chat_template().render(&messages)?,
    };
    llama.sequence(&prompt, checked.params)
}

/// Publishes the end of every finished sequence and takes it out of the batch.
fn retire(seqs: &mut Vec<Sequence>, slots: &mut Vec<Slot>, stats: &Stats) {
    let mut i = 0;
    while i < seqs.len() {
        if !seqs[i].is_finished() {
            i += 1;
            continue;
        }
        let seq = seqs.remove(i);
        let slot = slots.remove(i);
        let result = seq.result();
        // Counted before the end is published, so that whoever sees the end also sees it
        // counted in the stats.
        stats.finished.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = slot.stream.lock();
            // A cancelled sequence may hold back text (a possible stop string, a partial
            // character) that its result still has: hand it over as a last piece.
            if let Some(rest) = result.text.get(slot.streamed..).filter(|r| !r.is_empty()) {
                st.texts.push(rest.to_owned());
            }
            st.finished = Some(Finished {
                reason: reason_name(result.finish_reason).to_owned(),
                prompt_tokens: u32::try_from(result.prompt_tokens).unwrap_or(u32::MAX),
                generated_tokens: u32::try_from(result.token_ids.len()).unwrap_or(u32::MAX),
            });
        }
        slot.stream.wake();
    }
}

fn fail(stream: &Stream, why: &str) {
    stream.lock().error = Some(why.to_owned());
    stream.wake();
}
