//! Generated tokens per second through a `model` replica (start + long polls, continuous
//! batching), with 1 and 8 concurrent generations, against `Llama::generate_batch` called
//! directly with the same prompts: what the actor, the polling and the worker thread cost.
//!
//! `cargo bench -p arbor-actors --bench model` (needs scripts/fetch-models.sh first;
//! `ARBOR_BENCH_DEVICE=cuda` runs the model on GPU 0).

#[path = "../tests/common/mod.rs"]
mod common;

use common::Parent;
use std::ops::ControlFlow;
use std::time::Duration;

use arbor_actors::kinds::model::GenerateSpec;
use arbor_actors::kinds::{Kind, ReplicaContext, spawn_replica};
use arbor_actors::replica::ReplicaMsg;
use arbor_actors::stream::generate_stream;
use arbor_kernels::Device;
use arbor_kernels::llama::{GenerateParams, Llama, Message};
use arbor_kernels::models::{SMOLLM2_GGUF, models_dir};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ractor::{Actor, ActorRef};

const NEW_TOKENS: u32 = 16;
const QUESTIONS: [&str; 8] = [
    "Tell me a story about a dragon.",
    "Explain how a bicycle works.",
    "Describe the sea at night.",
    "Why is the sky blue?",
    "Write a poem about autumn.",
    "What do bees do all day?",
    "Describe a busy market.",
    "How do airplanes fly?",
];

fn device() -> (Device, &'static str) {
    match std::env::var("ARBOR_BENCH_DEVICE").as_deref() {
        Ok("cuda") => (Device::Cuda(0), "cuda"),
        _ => (Device::Cpu, "cpu"),
    }
}

/// Runs `prompts` through the replica at once; returns the tokens generated.
async fn through_actor(replica: &ActorRef<ReplicaMsg>, prompts: &[String]) -> u64 {
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (replica, spec) = (replica.clone(), GenerateSpec::prompt(p, NEW_TOKENS));
            tokio::spawn(async move {
                generate_stream(replica, spec, |_| {}, Duration::from_secs(5)).await
            })
        })
        .collect();
    let mut tokens = 0;
    for task in tasks {
        let finished = task.await.expect("task").expect("generates");
        tokens += u64::from(finished.generated_tokens);
    }
    tokens
}

fn direct(llama: &Llama, prompts: &[String]) -> u64 {
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let params = GenerateParams::greedy(NEW_TOKENS as usize);
    let out = llama
        .generate_batch(&prompts, &params, |_, _| ControlFlow::Continue(()))
        .expect("generates");
    out.iter().map(|g| g.token_ids.len() as u64).sum()
}

fn bench(c: &mut Criterion) {
    let (device, device_name) = device();
    let dir = models_dir(None);
    let llama = Llama::load(dir.join(SMOLLM2_GGUF), device).expect("run scripts/fetch-models.sh");
    let prompts: Vec<String> = QUESTIONS
        .iter()
        .map(|q| {
            llama
                .chat_template()
                .render(&[Message::user(*q)])
                .expect("renders")
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (replica, parent) = rt.block_on(async {
        let (parent, _) = Actor::spawn(None, Parent, ()).await.expect("parent");
        let ctx = ReplicaContext {
            actor_id: "bench".into(),
            deployment: "bench".into(),
            generation: 1,
            devices: vec![0],
            config: format!(r#"{{"device": "{device_name}", "max_batch": 8}}"#),
            data_dir: std::env::temp_dir(),
            models_dir: dir.clone(),
            scope: String::new(),
            control: arbor_actors::control::memory::MemoryControl::new().control(),
        };
        let replica = spawn_replica(Kind::Model, ctx, parent.get_cell())
            .await
            .expect("replica starts");
        (replica, parent)
    });

    let mut group = c.benchmark_group(format!("model_{device_name}"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for n in [1usize, 8] {
        let batch = &prompts[..n];
        // Greedy, so every run generates the same number of tokens: count them once.
        let tokens = direct(&llama, batch);
        group.throughput(Throughput::Elements(tokens));
        group.bench_function(format!("direct_generate_batch/{n}"), |b| {
            b.iter(|| direct(&llama, batch))
        });
        group.bench_function(format!("actor_streams/{n}"), |b| {
            b.to_async(&rt).iter(|| through_actor(&replica, batch))
        });
    }
    group.finish();
    replica.stop(None);
    parent.stop(None);
}

criterion_group!(benches, bench);
criterion_main!(benches);
