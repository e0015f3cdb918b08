//! `spin`: burns CPU for the requested time, then says how long it spun.
//!
//! Used to check load spreading and that a replica keeps answering while work is under way:
//! the busy loop runs on tokio's blocking pool and the reply is sent from that task, so the
//! actor's mailbox is never held up by a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ractor::RpcReplyPort;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::{Handled, Kind, Me, ReplicaContext, ReplicaKind, Started, parse_config};
use crate::replica::{CallFailure, CallReply, ReplicaMsg, decode_request};
use crate::wire::Wire;

/// The longest spin one request may ask for, in milliseconds.
pub const MAX_SPIN_MS: u64 = 60_000;

/// `spin` takes no configuration; unknown fields are still rejected, so a typo is noticed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpinConfig {}

/// A spin request: `{"ms": N}` (a bare integer `N` is accepted too), or `{"ms": N, "sleep":
/// true}` to hold the request that long without using the CPU (a request that waits on I/O:
/// load for the autoscaler that a 2-core machine can afford).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpinRequest {
    pub ms: u64,
    #[serde(default)]
    pub sleep: bool,
}

#[derive(Serialize)]
struct SpinReply {
    spun_ms: u64,
}

impl SpinRequest {
    /// Parses a request payload; the error says what a valid one looks like.
    pub fn parse(payload: &[u8]) -> Result<SpinRequest, String> {
        const USAGE: &str = "a spin payload is {\"ms\": N} or an integer N (milliseconds)";
        let text = std::str::from_utf8(payload)
            .map_err(|e| format!("{USAGE}; got bytes that are not UTF-8: {e}"))?
            .trim();
        let request = match text.parse::<u64>() {
            Ok(ms) => SpinRequest { ms, sleep: false },
            Err(_) => serde_json::from_str::<SpinRequest>(text)
                .map_err(|e| format!("{USAGE}; got {:?}: {e}", truncate(text, 80)))?,
        };
        if request.ms > MAX_SPIN_MS {
            return Err(format!(
                "spin of {} ms asked for; at most {MAX_SPIN_MS} ms is allowed",
                request.ms
            ));
        }
        Ok(request)
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// The `spin` actor.
pub struct SpinReplica;

/// Work in flight. Dropping it (the actor stopped, or was killed) aborts the reply tasks,
/// so callers see the replica gone instead of an answer from a dead actor, and stops the
/// busy loops early.
pub struct SpinState {
    ctx: ReplicaContext,
    tasks: JoinSet<()>,
    cancelled: Arc<AtomicBool>,
}

impl Drop for SpinState {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.tasks.abort_all();
    }
}

impl ReplicaKind for SpinReplica {
    type State = SpinState;

    async fn start(&self, _myself: Me, ctx: ReplicaContext) -> Started<Self::State> {
        let _config: SpinConfig = parse_config(Kind::Spin, &ctx)?;
        Ok(SpinState {
            ctx,
            tasks: JoinSet::new(),
            cancelled: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn handle(&self, msg: ReplicaMsg, state: &mut Self::State) -> Handled {
        // Reap finished tasks so the set does not grow with every request.
        while state.tasks.try_join_next().is_some() {}
        match msg {
            ReplicaMsg::Call(request, reply) => {
                let parsed = decode_request(request)
                    .and_then(|r| SpinRequest::parse(&r.payload).map_err(CallFailure::Invalid));
                match parsed {
                    Ok(request) => {
                        let cancelled = state.cancelled.clone();
                        state.tasks.spawn(spin_and_reply(request, cancelled, reply));
                    }
                    Err(why) => {
                        let _ = reply.send(Wire::new(Err(why)));
                    }
                }
            }
            // Requests for other kinds are refused with what this replica is.
            other => crate::replica::refuse(Kind::Spin, &state.ctx.actor_id, other),
        }
        Ok(())
    }
}

async fn spin_and_reply(
    request: SpinRequest,
    cancelled: Arc<AtomicBool>,
    reply: RpcReplyPort<Wire<CallReply>>,
) {
    let ms = request.ms;
    let spun = if request.sleep {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    } else {
        tokio::task::spawn_blocking(move || busy_wait(Duration::from_millis(ms), &cancelled)).await
    };
    let answer = match spun {
        Ok(()) => serde_json::to_vec(&SpinReply { spun_ms: ms })
            .map_err(|e| CallFailure::Failed(format!("could not encode the spin reply: {e}"))),
        Err(e) => Err(CallFailure::Failed(format!("spin task failed: {e}"))),
    };
    let _ = reply.send(Wire::new(answer));
}

/// Keeps one core busy for `duration`, or until `cancelled`.
fn busy_wait(duration: Duration, cancelled: &AtomicBool) {
    let start = Instant::now();
    let mut spins: u64 = 0;
    while start.elapsed() < duration {
        if cancelled.load(Ordering::Relaxed) {
            return;
        }
        spins = std::hint::black_box(spins.wrapping_add(1));
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(
            SpinRequest::parse(b"25"),
            Ok(SpinRequest {
                ms: 25,
                sleep: false
            })
        );
        assert_eq!(
            SpinRequest::parse(b" 7\n"),
            Ok(SpinRequest {
                ms: 7,
                sleep: false
            })
        );
        assert_eq!(
            SpinRequest::parse(br#"{"ms": 40}"#),
            Ok(SpinRequest {
                ms: 40,
                sleep: false
            })
        );
        assert_eq!(
            SpinRequest::parse(br#"{"ms": 40, "sleep": true}"#),
            Ok(SpinRequest {
                ms: 40,
                sleep: true
            })
        );
        for bad in [
            &b"{\"ms\": -1}"[..],
            b"soon",
            b"{\"sec\": 1}",
            b"\xff\xfe",
            b"",
        ] {
            let err = SpinRequest::parse(bad).unwrap_err();
            assert!(err.contains("a spin payload is"), "{err}");
        }
        let err = SpinRequest::parse(b"60001").unwrap_err();
        assert!(err.contains("at most 60000"), "{err}");
    }
}
