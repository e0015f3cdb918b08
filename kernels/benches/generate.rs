//! Greedy decoding speed of SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to f32) on the CPU:
//! tokens per second at batch 1 and batch 8. The prompts are prefilled outside the timed part;
//! each timed iteration generates `STEPS` tokens per sequence. Compare with
//! scripts/bench-generate-pytorch.py on the same machine. Needs scripts/fetch-models.sh.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use arbor_kernels::Device;
use arbor_kernels::llama::{GenerateParams, Llama, Message};
use arbor_kernels::models::{SMOLLM2_GGUF, models_dir};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Tokens generated per sequence in one timed iteration.
const STEPS: usize = 32;

/// Requests for long answers, so that no sequence ends before `STEPS` tokens.
const TOPICS: [&str; 8] = [
    "the history of the printing press",
    "how volcanoes form",
    "the life cycle of stars",
    "why the sky is blue",
    "the rules of chess",
    "how bread is made",
    "the water cycle",
    "the invention of the telephone",
];

fn prompts(llama: &Llama, batch: usize) -> Vec<String> {
    TOPICS[..batch]
        .iter()
        .map(|t| {
            let question = Message::user(format!("Write a long, detailed essay about {t}."));
            llama
                .chat_template()
                .render(&[question])
                .expect("template renders")
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let path = models_dir(None).join(SMOLLM2_GGUF);
    if !path.exists() {
        eprintln!(
            "{} is missing: run scripts/fetch-models.sh; skipping the generation bench",
            path.display()
        );
        return;
    }
    let llama = Llama::load(&path, Device::Cpu).expect("the model loads");
    let mut group = c.benchmark_group("generate_greedy_cpu");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(2));
    for batch in [1usize, 8] {
        let prompts = prompts(&llama, batch);
        group.throughput(Throughput::Elements((batch * STEPS) as u64));
        group.bench_function(BenchmarkId::new("tokens", batch), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut seqs: Vec<_> = prompts
                        .iter()
                        // One more token than timed: the first comes from the untimed prefill.
                        .map(|p| {
                            llama
                                .sequence(p, GenerateParams::greedy(STEPS + 1))
                                .expect("sequence")
                        })
                        .collect();
                    llama
                        .step(&mut seqs, |_, _| ControlFlow::Continue(()))
                        .expect("prefill");
                    let start = Instant::now();
                    for _ in 0..STEPS {
                        llama
                            .step(&mut seqs, |_, _| ControlFlow::Continue(()))
                            .expect("step");
                    }
                    total += start.elapsed();
                    for s in &seqs {
                        assert_eq!(
                            s.generated().len(),
                            STEPS + 1,
                            "a sequence ended early: pick longer prompts"
                        );
                    }
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
