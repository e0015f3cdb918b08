//! What the benches that drive a 3-node cluster over the gateway share: a raw WebSocket
//! connection that pipelines jobs (the benches measure the gateway too, so they speak its
//! protocol directly), the cluster's start, rows that bring their own vectors, percentiles.

#![allow(dead_code)] // each bench uses part of it

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::NodeProc;

/// One finished job: submit → its last event, submit → its first token, its final result.
pub struct Done {
    pub latency: Duration,
    pub first_token: Option<Duration>,
    pub data: Value,
}

pub struct Conn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr, token: &str) -> Conn {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .unwrap();
        let mut c = Conn { ws };
        c.send(json!({"type": "auth", "v": 1, "token": token}).to_string())
            .await;
        let m = c.recv().await;
        assert_eq!(m["type"], "authenticated", "{m}");
        c
    }

    pub async fn send(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn recv(&mut self) -> Value {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    }

    /// Runs one job; its final result, or why it failed.
    pub async fn try_job(&mut self, job: &Value) -> Result<Value, String> {
        self.send(json!({"type": "submit", "job": job}).to_string())
            .await;
        let mut data = Value::Null;
        loop {
            let m = self.recv().await;
            match m["type"].as_str() {
                Some("error") => return Err(m["message"].as_str().unwrap_or("").to_owned()),
                Some("result") if m["final"] == true => data = m["data"].clone(),
                Some("event") if m["state"] == "succeeded" => return Ok(data),
                Some("event") if m["state"] != "running" => {
                    return Err(format!("{}: {}", m["state"], m["reason"]));
                }
                _ => {}
            }
        }
    }

    pub async fn job(&mut self, job: Value) -> Value {
        let text = job.to_string();
        self.try_job(&job)
            .await
            .unwrap_or_else(|e| panic!("{text:.200}: {e}"))
    }

    /// Runs `n` jobs (`job(i)`: the job object as JSON text), `depth` in flight at a time;
    /// panics if one fails. In the order they finished.
    pub async fn pipeline(
        &mut self,
        n: usize,
        depth: usize,
        mut job: impl FnMut(usize) -> String,
    ) -> Vec<Done> {
        let mut sent = 0;
        let mut done = Vec::with_capacity(n);
        // ref → submit time; job id → (submit time, first token, final data).
        let mut submitted: HashMap<String, Instant> = HashMap::new();
        let mut running: HashMap<String, (Instant, Option<Duration>, Value)> = HashMap::new();
        while done.len() < n {
            while sent < n && sent - done.len() < depth {
                let text = format!(r#"{{"type":"submit","ref":"{sent}","job":{}}}"#, job(sent));
                submitted.insert(sent.to_string(), Instant::now());
                self.send(text).await;
                sent += 1;
            }
            let m = self.recv().await;
            let id = m["job"].as_str().unwrap_or_default().to_owned();
            match m["type"].as_str() {
                Some("accepted") => {
                    let at = submitted.remove(m["ref"].as_str().unwrap()).unwrap();
                    running.insert(id, (at, None, Value::Null));
                }
                Some("error") => panic!("a submit was refused: {m}"),
                Some("token") => {
                    if let Some((at, first @ None, _)) = running.get_mut(&id) {
                        *first = Some(at.elapsed());
                    }
                }
                Some("result") if m["final"] == true => {
                    if let Some((_, _, data)) = running.get_mut(&id) {
                        *data = m["data"].clone();
                    }
                }
                Some("event") if m["state"] != "running" => {
                    assert_eq!(m["state"], "succeeded", "{m}");
                    let (at, first_token, data) = running.remove(&id).unwrap();
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
pub async fn start(dir: &Path, name: &str, secret: &str) -> (Vec<NodeProc>, SocketAddr, String) {
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
    let addr: SocketAddr = text
        .lines()
        .find_map(|l| l.strip_prefix("gateway = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .parse()
        .unwrap();
    // Until the control plane has a leader and sees 3 nodes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Ok((ws, _))) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio_tungstenite::connect_async(format!("ws://{addr}/")),
        )
        .await
        {
            drop(ws);
            let mut c = Conn::open(addr, &token).await;
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
    (nodes, addr, token)
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
#[derive(Serialize)]
pub struct Row<'a> {
    pub id: String,
    pub title: String,
    pub text: &'a str,
    pub metadata: Value,
    pub vector: Vec<f32>,
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
