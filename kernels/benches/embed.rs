//! Embedding speed of all-MiniLM-L6-v2 on the CPU: sentences per second for batches of 1, 32
//! and 128 sentences of 12 words. Compare with scripts/bench-embed-pytorch.py (the same
//! sentences, sentence-transformers on PyTorch) on the same machine. Needs
//! scripts/fetch-models.sh.

use arbor_kernels::Device;
use arbor_kernels::embed::Embedder;
use arbor_kernels::models::models_dir;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Keep in step with scripts/bench-embed-pytorch.py (`WORDS`, `sentence`).
const WORDS: &str = "the a cluster node model vector query shard runs fast small large every new old data \
    store reads writes text answer token batch memory disk network leader follower replica \
    search index score rank close far similar meaning language system user request time \
    second minute result error retry during after before while since with";

fn sentence(words: &[&str], i: usize) -> String {
    let picked: Vec<&str> = (0..12)
        .map(|j| words[(i * 7 + j * 5 + j * j) % words.len()])
        .collect();
    format!("{}.", picked.join(" "))
}

fn embed(c: &mut Criterion) {
    let embedder = Embedder::load(models_dir(None), Device::Cpu)
        .unwrap_or_else(|e| panic!("{e} (run scripts/fetch-models.sh first)"));
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    assert_eq!(
        words.len(),
        53,
        "the word list must match the PyTorch script"
    );
    let mut group = c.benchmark_group("embed_cpu");
    group.sample_size(10);
    for batch in [1usize, 32, 128] {
        let texts: Vec<String> = (0..batch).map(|i| sentence(&words, i)).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &texts, |b, texts| {
            b.iter(|| embedder.embed(texts).expect("embeds"))
        });
    }
    group.finish();
}

criterion_group!(benches, embed);
criterion_main!(benches);
