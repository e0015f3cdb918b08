//! The closed-loop load: each connection keeps `in_flight` jobs submitted, sending the next
//! as soon as one ends, for a warm-up and then a measured duration. Every job that ends in the
//! measured window is a [`Sample`]: when it ended, how long it took from its submit, and its
//! error code if it failed.

use std::collections::HashMap;
use std::time::Duration;

use arbor_client::GatewayClient;
use arbor_proto::JobId;
use arbor_proto::gateway::{ClientMsg, JobSpec, JobState, ServerMsg};
use tokio::time::Instant;

/// The shape of the load.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    pub connections: usize,
    /// Jobs each connection keeps submitted.
    pub in_flight: usize,
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
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

/// How long a connection waits for its last jobs once the window has closed.
const DRAIN: Duration = Duration::from_secs(10);

/// Runs `job` on `client` in a closed loop: the samples of the jobs that ended in the window
/// (`measure_from` + `shape.duration`). Submissions stop when the window closes.
pub async fn closed_loop(
    client: &mut GatewayClient,
    job: &JobSpec,
    shape: Shape,
    measure_from: Instant,
) -> Result<Vec<Sample>, arbor_client::ClientError> {
    let until = measure_from + shape.duration;
    let mut samples = Vec::new();
    let mut next_ref: u64 = 0;
    // Sent, not yet accepted: by reference. Accepted: by job id.
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut running: HashMap<JobId, (Instant, Option<String>)> = HashMap::new();
    let submit = |n: u64| ClientMsg::Submit {
        reference: Some(n.to_string()),
        record: false,
        job: job.clone(),
    };
    for _ in 0..shape.in_flight.max(1) {
        client.send_raw(&submit(next_ref)).await?;
        sent.insert(next_ref.to_string(), Instant::now());
        next_ref += 1;
    }
    let mut record = |started: Instant, error: Option<String>| {
        let now = Instant::now();
        if now >= measure_from && now <= until {
            samples.push(Sample {
                at: now - measure_from,
                latency: now - started,
                error,
            });
        }
    };
    loop {
        let outstanding = sent.len() + running.len();
        if outstanding == 0 {
            break;
        }
        let deadline = if Instant::now() < until {
            until + DRAIN
        } else {
            Instant::now().max(until) + DRAIN
        };
        let msg = match tokio::time::timeout_at(deadline, client.recv_raw()).await {
            Ok(msg) => msg?,
            Err(_) => break,
        };
        let ended = match msg {
            ServerMsg::Accepted {
                reference: Some(r),
                job: id,
                ..
            } => {
                if let Some(at) = sent.remove(&r) {
                    running.insert(id, (at, None));
                }
                false
            }
            ServerMsg::Error {
                reference: Some(r),
                job: None,
                code,
                ..
            } => match sent.remove(&r) {
                // Refused before it started: it ends here.
                Some(at) => {
                    record(at, Some(code.as_str().to_owned()));
                    true
                }
                None => false,
            },
            ServerMsg::Error {
                job: Some(id),
                code,
                ..
            } => {
                if let Some((_, error)) = running.get_mut(&id) {
                    *error = Some(code.as_str().to_owned());
                }
                false
            }
            ServerMsg::Event { job: id, state, .. } if state.is_finished() => {
                match running.remove(&id) {
                    Some((at, error)) => {
                        let error = match state {
                            JobState::Succeeded => None,
                            JobState::Cancelled => Some("cancelled".to_owned()),
                            _ => Some(error.unwrap_or_else(|| "job_failed".to_owned())),
                        };
                        record(at, error);
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        };
        if ended && Instant::now() < until {
            client.send_raw(&submit(next_ref)).await?;
            sent.insert(next_ref.to_string(), Instant::now());
            next_ref += 1;
        }
    }
    Ok(samples)
}
