//! Per-generation buffers, shared by the worker (which appends token texts), the pollers
//! (which wait for them) and the reaper (which drops generations nobody reads).
//!
//! Polls must never hold up the actor's mailbox, so a poll is answered from a task of its
//! own that waits on the generation's [`Notify`]; any number of them wait at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::protocol::{Finished, ModelAnswer, ModelFailure, ModelReply};

/// One generation's output so far.
#[derive(Debug)]
pub(crate) struct Stream {
    state: Mutex<StreamState>,
    /// Woken when texts are appended, the generation ends or fails.
    changed: Notify,
}

#[derive(Debug)]
pub(crate) struct StreamState {
    /// One text per generated token (a last extra one may carry held-back text).
    pub texts: Vec<String>,
    pub finished: Option<Finished>,
    /// Set when the generation failed in the model: polls answer with it.
    pub error: Option<String>,
    /// Asked to stop (by the caller, or because nobody read it): the worker ends it at its
    /// next step.
    pub cancel: bool,
    /// Polls in flight: while one waits, the caller is alive.
    pub pollers: u32,
    /// When the caller was last heard from (start, or a poll that ended).
    pub last_seen: Instant,
}

impl StreamState {
    fn is_over(&self) -> bool {
        self.finished.is_some() || self.error.is_some()
    }
}

impl Stream {
    pub fn new() -> Arc<Self> {
        Arc::new(Stream {
            state: Mutex::new(StreamState {
                texts: Vec::new(),
                finished: None,
                error: None,
                cancel: false,
                pollers: 0,
                last_seen: Instant::now(),
            }),
            changed: Notify::new(),
        })
    }

    /// The state; a poisoned lock (a panic elsewhere while holding it) still yields the data,
    /// which every writer leaves consistent between statements.
    pub fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every waiting poll; call after changing the state.
    pub fn wake(&self) {
        self.changed.notify_waiters();
    }

    pub fn cancel(&self) {
        self.lock().cancel = true;
    }

    /// Waits until there is a text at `from` or beyond, or the generation is over, or
    /// `wait` has passed, and answers with what there is then.
    pub async fn poll(&self, id: u64, from: u32, wait: Duration) -> ModelReply {
        {
            let mut st = self.lock();
            if from as usize > st.texts.len() {
                return Err(ModelFailure::Invalid(format!(
                    "from: position {from} is past the {} tokens of generation {id}",
                    st.texts.len()
                )));
            }
            st.pollers += 1;
            st.last_seen = Instant::now();
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so a wake between the look and the wait is not lost.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let ready = {
                let st = self.lock();
                st.texts.len() > from as usize || st.is_over()
            };
            if ready || tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let mut st = self.lock();
        st.pollers = st.pollers.saturating_sub(1);
        st.last_seen = Instant::now();
        if let Some(error) = &st.error {
            return Err(ModelFailure::Model(error.clone()));
        }
        let start = (from as usize).min(st.texts.len());
        let texts = st.texts[start..].to_vec();
        Ok(ModelAnswer::Tokens {
            next: u32::try_from(st.texts.len()).unwrap_or(u32::MAX),
            finished: st.finished.clone(),
            texts,
        })
    }

    /// Waits for the end and returns the whole text, for callers that want no stream.
    pub async fn wait_all(&self) -> Result<(String, Finished), String> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                if let Some(error) = &st.error {
                    return Err(error.clone());
                }
                if let Some(finished) = &st.finished {
                    return Ok((st.texts.concat(), finished.clone()));
                }
            }
            notified.await;
        }
    }
}

/// The generations a replica knows by id.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    streams: Mutex<HashMap<u64, Arc<Stream>>>,
}

impl Registry {
    fn map(&self) -> MutexGuard<'_, HashMap<u64, Arc<Stream>>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, id: u64, stream: Arc<Stream>) {
        self.map().insert(id, stream);
    }

    pub fn get(&self, id: u64) -> Option<Arc<Stream>> {
        self.map().get(&id).cloned()
    }

    pub fn remove(&self, id: u64) {
        self.map().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Forgets generations whose caller has been silent (no poll in flight, none ended) for
    /// `idle`, and asks the worker to stop those still running: a caller that died must not
    /// keep the model busy. Returns how many unfinished ones were dropped.
    pub fn reap(&self, idle: Duration) -> usize {
        let mut abandoned = 0;
        self.map().retain(|_, stream| {
            let mut st = stream.lock();
            let silent = st.pollers == 0 && st.last_seen.elapsed() >= idle;
            if silent && !st.is_over() {
                st.cancel = true;
                abandoned += 1;
            }
            !silent
        });
        abandoned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_poll_waits_for_a_token_and_times_out_empty() {
        let stream = Stream::new();
        let empty = stream.poll(1, 0, Duration::from_millis(20)).await;
        assert_eq!(
            empty,
            Ok(ModelAnswer::Tokens {
                texts: vec![],
                next: 0,
                finished: None
            })
        );
        let waiting = {
            let stream = stream.clone();
            tokio::spawn(async move { stream.poll(1, 0, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        stream.lock().texts.push("Hi".into());
        stream.wake();
        let got = waiting.await.unwrap();
        assert!(matches!(got, Ok(ModelAnswer::Tokens { next: 1, .. })));
        let past = stream.poll(1, 5, Duration::ZERO).await;
        assert!(matches!(past, Err(ModelFailure::Invalid(w)) if w.starts_with("from")));
    }

    #[test]
    fn reaping_spares_callers_that_poll() {
        let registry = Registry::default();
        let (quiet, busy) = (Stream::new(), Stream::new());
        registry.insert(1, quiet.clone());
        registry.insert(2, busy.clone());
        busy.lock().pollers = 1;
        assert_eq!(registry.reap(Duration::ZERO), 1);
        assert!(quiet.lock().cancel);
        assert!(registry.get(1).is_none());
        assert!(registry.get(2).is_some());
    }
}
