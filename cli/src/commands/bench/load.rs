//! The load a scenario puts on the gateway, on each of its connections:
//!
//! - **closed loop** (no `--rate`): the connection keeps `in_flight` jobs submitted, and
//!   submits the next as soon as one ends;
//! - **open loop** (`--rate R`, jobs/s over all connections): jobs are submitted on a fixed
//!   schedule whatever the answers, and each job's latency counts from when it was *meant* to
//!   be sent, so a stall shows in full instead of delaying the jobs behind it out of the
//!   measurement (no coordinated omission, as in wrk2).
//!
//! A `--ramp` before the warm-up brings the load up gradually: the connections start one after
//! another over it (closed loop), or the rate rises linearly from zero to its full value (open
//! loop). Nothing in the ramp or the warm-up is measured.
//!
//! Every job that ends in the measured window is a [`Sample`]: when it ended, how long it
//! took, and its error code if it failed.

use std::collections::HashMap;
use std::time::Duration;

use arbor_client::{ClientError, GatewayClient};
use arbor_proto::JobId;
use arbor_proto::gateway::{ClientMsg, JobSpec, JobState, ServerMsg};
use tokio::time::Instant;

/// The shape of the load.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    pub connections: usize,
    /// Jobs each connection keeps submitted (closed loop).
    pub in_flight: usize,
    /// Jobs per second over all connections (open loop); `None`: closed loop.
    #[serde(default)]
    pub rate: Option<f64>,
    /// How long the load takes to rise to its full level, before the warm-up.
    #[serde(default, with = "humantime_serde")]
    pub ramp: Duration,
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

impl Shape {
    /// "4 connections, closed loop, 1 in flight each" or "4 connections, open loop at 500
    /// jobs/s": how the lines and the page name the load.
    pub fn describe(&self) -> String {
        let shape = match self.rate {
            Some(rate) => format!("open loop at {rate} jobs/s"),
            None => format!("closed loop, {} in flight each", self.in_flight),
        };
        format!("{} connections, {shape}", self.connections)
    }
}

/// One job that ended in the measured window.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When it ended, from the start of the measured window.
    pub at: Duration,
    pub latency: Duration,
    /// The error code of a job that failed or was refused.
    pub error: Option<String>,
}

/// The job to submit, by its number (unique in the run: a scenario that writes derives its
/// ids from it).
pub type Jobs = dyn Fn(u64) -> JobSpec + Send + Sync;

/// How long a connection waits for its last jobs once the window has closed.
const DRAIN: Duration = Duration::from_secs(10);

/// The jobs of one connection, from submit to end.
struct Tracker {
    window: (Instant, Instant),
    /// Which connection this is: job numbers are unique across connections.
    connection: u64,
    /// Whether the control plane records each job.
    record: bool,
    next_ref: u64,
    /// Sent, not yet accepted, by reference: when each counts from.
    sent: HashMap<String, Instant>,
    /// Accepted: when it counts from, and the error code it was given.
    running: HashMap<JobId, (Instant, Option<String>)>,
    samples: Vec<Sample>,
}

impl Tracker {
    fn outstanding(&self) -> usize {
        self.sent.len() + self.running.len()
    }

    async fn submit(
        &mut self,
        client: &mut GatewayClient,
        job: &Jobs,
        counts_from: Instant,
    ) -> Result<(), ClientError> {
        let reference = self.next_ref.to_string();
        let msg = ClientMsg::Submit {
            reference: Some(reference.clone()),
            record: self.record,
            job: job(self.connection << 32 | self.next_ref),
        };
        self.next_ref += 1;
        client.send_raw(&msg).await?;
        self.sent.insert(reference, counts_from);
        Ok(())
    }

    fn ended(&mut self, counts_from: Instant, error: Option<String>) {
        let now = Instant::now();
        let (from, until) = self.window;
        if now >= from && now <= until {
            self.samples.push(Sample {
                at: now - from,
                latency: now.saturating_duration_since(counts_from),
                error,
            });
        }
    }

    /// Takes in one message; whether it ended a job.
    fn take(&mut self, msg: ServerMsg) -> bool {
        match msg {
            ServerMsg::Accepted {
                reference: Some(r),
                job,
                ..
            } => {
                if let Some(at) = self.sent.remove(&r) {
                    self.running.insert(job, (at, None));
                }
                false
            }
            // Refused before it started: it ends here.
            ServerMsg::Error {
                reference: Some(r),
                job: None,
                code,
                ..
            } => match self.sent.remove(&r) {
                Some(at) => {
                    self.ended(at, Some(code.as_str().to_owned()));
                    true
                }
                None => false,
            },
            ServerMsg::Error {
                job: Some(id),
                code,
                ..
            } => {
                if let Some((_, error)) = self.running.get_mut(&id) {
                    *error = Some(code.as_str().to_owned());
                }
                false
            }
            ServerMsg::Event { job, state, .. } if state.is_finished() => {
                match self.running.remove(&job) {
                    Some((at, error)) => {
                        let error = match state {
                            JobState::Succeeded => None,
                            JobState::Cancelled => Some("cancelled".to_owned()),
                            _ => Some(error.unwrap_or_else(|| "job_failed".to_owned())),
                        };
                        self.ended(at, error);
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }
}

/// Runs `job`'s jobs on `client`, connection number `connection`, under `shape` (this
/// connection's share of it), recorded by the control plane when `record` says so: the samples of the
/// jobs that ended in the window (`measure_from` + `shape.duration`). Submissions stop when
/// the window closes; jobs still out are waited for a while, then dropped.
pub async fn drive(
    client: &mut GatewayClient,
    connection: u64,
    job: &Jobs,
    record: bool,
    shape: Shape,
    measure_from: Instant,
) -> Result<Vec<Sample>, ClientError> {
    let until = measure_from + shape.duration;
    let mut t = Tracker {
        window: (measure_from, until),
        connection,
        record,
        next_ref: 0,
        sent: HashMap::new(),
        running: HashMap::new(),
        samples: Vec::new(),
    };
    // When the ramp began: the window opens after it and the warm-up.
    let start = measure_from
        .checked_sub(shape.ramp + shape.warmup)
        .unwrap_or(measure_from);
    match shape.rate {
        None => {
            let connections = shape.connections.max(1) as u32;
            let offset = shape.ramp * (connection as u32 % connections) / connections;
            tokio::time::sleep_until(start + offset).await;
            for _ in 0..shape.in_flight.max(1) {
                t.submit(client, job, Instant::now()).await?;
            }
            while t.outstanding() > 0 {
                let deadline = Instant::now().max(until) + DRAIN;
                let Ok(msg) = tokio::time::timeout_at(deadline, client.recv_raw()).await else {
                    break;
                };
                if t.take(msg?) && Instant::now() < until {
                    t.submit(client, job, Instant::now()).await?;
                }
            }
        }
        Some(rate) => {
            let per_connection = (rate / shape.connections.max(1) as f64).max(1e-3);
            let mut sent = 0u64;
            let mut next = start;
            loop {
                let sending = next < until;
                if !sending && t.outstanding() == 0 {
                    break;
                }
                let wait_until = if sending {
                    next
                } else {
                    Instant::now().max(until) + DRAIN
                };
                match tokio::time::timeout_at(wait_until, client.recv_raw()).await {
                    Ok(msg) => {
                        t.take(msg?);
                    }
                    Err(_) if sending => {
                        // Late or not, it counts from when it was due.
                        t.submit(client, job, next).await?;
                        sent += 1;
                        next = start + due(sent, per_connection, shape.ramp);
                    }
                    Err(_) => break,
                }
            }
        }
    }
    Ok(t.samples)
}

/// When job `n` of an open loop at `rate` jobs/s is due, from the start of a `ramp` over which
/// the rate rises linearly from zero (then stays at `rate`). Pure.
///
/// Over the ramp the jobs sent by `t` are `rate * t² / (2 * ramp)`, so job `n` is due at
/// `sqrt(2 * n * ramp / rate)`; after it, `n / rate + ramp / 2`.
pub fn due(n: u64, rate: f64, ramp: Duration) -> Duration {
    let (n, ramp_s) = (n as f64, ramp.as_secs_f64());
    let seconds = if n < rate * ramp_s / 2.0 {
        (2.0 * n * ramp_s / rate).sqrt()
    } else {
        n / rate + ramp_s / 2.0
    };
    Duration::from_secs_f64(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_ramp_jobs_are_due_at_the_rate() {
        let at = |n| due(n, 100.0, Duration::ZERO).as_secs_f64();
        assert_eq!(at(0), 0.0);
        assert!((at(1) - 0.01).abs() < 1e-12);
        assert!((at(250) - 2.5).abs() < 1e-12);
    }

    #[test]
    fn a_ramp_rises_to_the_rate_without_a_jump() {
        let (rate, ramp) = (100.0, Duration::from_secs(4));
        let at = |n| due(n, rate, ramp).as_secs_f64();
        // Half the ramp's area: 200 jobs by its end, at 4 s, then 100/s.
        assert!((at(200) - 4.0).abs() < 1e-9, "{}", at(200));
        assert!((at(300) - 5.0).abs() < 1e-9);
        // Slow at first: 50 jobs take the ramp's first half (a quarter of its area).
        assert!((at(50) - 2.0).abs() < 1e-9, "{}", at(50));
        // Never out of order, and the gaps shrink to 1/rate.
        let times: Vec<f64> = (0..400).map(at).collect();
        assert!(times.windows(2).all(|w| w[1] > w[0]));
        let gap = times[399] - times[398];
        assert!((gap - 0.01).abs() < 1e-9, "{gap}");
    }
}
