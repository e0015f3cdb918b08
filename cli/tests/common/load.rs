//! What the benches that drive a 3-node cluster over the gateway share: a connection that
//! pipelines jobs (through `arbor-client`, whose raw send and receive keep many jobs in
//! flight), the cluster's start, rows that bring their own vectors.

#![allow(dead_code)] // each bench uses part of it

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use arbor_client::GatewayClient;
use arbor_proto::JobId;
use arbor_proto::gateway::{ClientMsg, Document, JobSpec, JobState, ServerMsg};
use serde_json::{Value, json};

use super::NodeProc;
pub use super::support::Endpoint;

/// One finished job: submit → its last event, submit → its first token, its final result.
pub struct Done {
    pub latency: Duration,
    pub first_token: Option<Duration>,
    pub data: Value,
}

/// A job written as JSON (`{"kind": ...}`), typed as the client sends it.
pub fn spec(job: Value) -> JobSpec {
    let text = job.to_string();
    serde_json::from_value(job).unwrap_or_else(|e| panic!("{text:.200}: {e}"))
}

pub struct Conn {
    client: GatewayClient,
}

impl Conn {
    pub async fn open(at: &Endpoint, token: &str) -> Conn {
        let client = GatewayClient::connect(&[at.addr], &at.trust, token, Duration::from_secs(5))
            .await
            .unwrap();
        Conn { client }
    }

    /// Runs one job; its final result, or why it failed.
    pub async fn try_job(&mut self, job: &Value) -> Result<Value, String> {
        let outcome = self
            .client
            .run(spec(job.clone()), |_| {})
            .await
            .map_err(|e| e.to_string())?;
        outcome.into_data().map_err(|e| e.to_string())
    }

    pub async fn job(&mut self, job: Value) -> Value {
        let text = job.to_string();
        self.try_job(&job)
            .await
            .unwrap_or_else(|e| panic!("{text:.200}: {e}"))
    }

    /// Runs `n` jobs (`job(i)`), `depth` in flight at a time; panics if one fails. In the
    /// order they finished.
    pub async fn pipeline(
        &mut self,
        n: usize,
        depth: usize,
        mut job: impl FnMut(usize) -> JobSpec,
    ) -> Vec<Done> {
        let mut sent = 0;
        let mut done = Vec::with_capacity(n);
        // ref → submit time; job id → (submit time, first token, final data).
        let mut submitted: HashMap<String, Instant> = HashMap::new();
        let mut running: HashMap<JobId, (Instant, Option<Duration>, Value)> = HashMap::new();
        while done.len() < n {
            while sent < n && sent - done.len() < depth {
                let msg = ClientMsg::Submit {
                    reference: Some(sent.to_string()),
                    record: false,
                    job: job(sent),
                };
                submitted.insert(sent.to_string(), Instant::now());
                self.client.send_raw(&msg).await.unwrap();
                sent += 1;
            }
            match self.client.recv_raw().await.unwrap() {
                ServerMsg::Accepted { reference, job, .. } => {
                    let at = submitted.remove(&reference.unwrap()).unwrap();
                    running.insert(job, (at, None, Value::Null));
                }
                m @ ServerMsg::Error { .. } => panic!("a submit was refused: {m:?}"),
                ServerMsg::Token { job, .. } => {
                    if let Some((at, first @ None, _)) = running.get_mut(&job) {
                        *first = Some(at.elapsed());
                    }
                }
                ServerMsg::Result {
                    job,
                    data: d,
                    last: true,
                } => {
                    if let Some((_, _, data)) = running.get_mut(&job) {
                        *data = d;
                    }
                }
                ServerMsg::Event { job, state, reason } if state != JobState::Running => {
                    assert_eq!(state, JobState::Succeeded, "job {job}: {reason:?}");
                    let (at, first_token, data) = running.remove(&job).unwrap();
                    done.push(Done {
                        latency: at.elapsed(),
                        first_token,
                        data,
                    });
                }
                _ => {}
            }
        }
        done
    }
}

/// Starts 3 nodes in `dir`; their processes, node 1's gateway and an admin token.
pub async fn start(dir: &Path, name: &str, secret: &str) -> (Vec<NodeProc>, Endpoint, String) {
    let config = dir.join("cluster.toml");
    // Room for every replica on any node (the scheduler counts, nothing is enforced), and
    // for the bench's connections and jobs in flight.
    let text = super::support::cluster_toml(name, 3, dir, None)
        .replace(
            "cpu = \"1\"\nmemory = \"1GiB\"",
            "cpu = \"16\"\nmemory = \"64GiB\"",
        )
        .replacen(
            "\n[[nodes]]",
            "\n[gateway]\nmax_jobs_per_token = 4096\n\n[[nodes]]",
            1,
        );
    std::fs::write(&config, &text).unwrap();
    let token = super::create_token(&config, "admin");
    let nodes: Vec<NodeProc> = (1..=3)
        .map(|id| NodeProc::start(&config, id, secret))
        .collect();
    let at = super::support::endpoint(&arbor_node::ClusterConfig::load(&config).unwrap(), 0);
    // Until the control plane has a leader and sees 3 nodes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(client) =
            GatewayClient::connect(&[at.addr], &at.trust, &token, Duration::from_secs(1)).await
        {
            let mut c = Conn { client };
            if let Ok(s) = c.try_job(&json!({"kind": "status"})).await
                && !s["leader"].is_null()
                && s["nodes"].as_array().is_some_and(|n| n.len() == 3)
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the cluster never answered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    (nodes, at, token)
}

/// A unit vector of `dim` values, the same for the same seed.
pub fn unit_vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= norm);
    v
}

/// A document that brings its own vector, as an `ingest` job carries it.
pub fn row(i: usize, text: &str, vector: Vec<f32>) -> Document {
    let serde_json::Value::Object(metadata) = json!({"n": i, "source": "synthetic"}) else {
        unreachable!()
    };
    Document {
        id: format!("row-{i}"),
        title: Some(format!("Synthetic document {i}")),
        text: text.to_owned(),
        metadata,
        vector: Some(vector),
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
