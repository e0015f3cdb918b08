//! Exact top-10 over 100k × 384 and 1M × 384 vectors for 1, 32 and 128 queries: CPU f32 and
//! GPU fp16 (skipped, with the reason printed, where there is no usable GPU). Also this
//! machine's memory bandwidth, measured by summing a buffer far larger than the caches, so
//! the scan's bytes/s can be compared with it.
//!
//! Throughput is reported as bytes of stored vectors scanned per second (f32 on the CPU, fp16
//! on the GPU). The GPU is also timed with 1,024 queries.

use std::hint::black_box;
use std::time::Duration;

use arbor_kernels::topk::{CpuIndex, CudaIndex, Metric, VectorIndex};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use rayon::prelude::*;

const DIM: usize = 384;
const K: usize = 10;
const ROWS: [usize; 2] = [100_000, 1_000_000];
const QUERIES: [usize; 3] = [1, 32, 128];
/// The GPU is also timed with a large batch, where tiling the score matrix matters.
const GPU_QUERIES: [usize; 4] = [1, 32, 128, 1024];

/// Uniform values in [-0.5, 0.5) from a fixed-seed xorshift generator (fast to fill 1.5 GB).
fn random_rows(n: usize, seed: u64) -> Vec<f32> {
    let mut out = vec![0.0f32; n * DIM];
    out.par_chunks_mut(DIM * 1024)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut s = seed ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for x in chunk {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *x = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            }
        });
    out
}

fn sum_lanes(buf: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for c in buf.chunks_exact(16) {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum()
}

fn bandwidth(c: &mut Criterion) {
    let buf = random_rows((1 << 28) / DIM, 1); // 1 GiB of f32
    let mut g = c.benchmark_group("memory_bandwidth");
    g.throughput(Throughput::Bytes((buf.len() * 4) as u64));
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.bench_function("sum_1GiB_one_thread", |b| {
        b.iter(|| black_box(sum_lanes(&buf)))
    });
    g.bench_function("sum_1GiB_all_threads", |b| {
        b.iter(|| black_box(buf.par_chunks(1 << 20).map(sum_lanes).sum::<f32>()))
    });
    g.finish();
}

/// Builds an index over ids and rows, or says why it cannot (and returns None).
type Build = dyn Fn(&[u64], &[f32]) -> Option<Box<dyn VectorIndex>>;

/// Times `build`'s index for each row count and batch size. Throughput counts the bytes of
/// stored vectors (`bytes_per_value` each) scanned per second.
fn exact(c: &mut Criterion, name: &str, batches: &[usize], bytes_per_value: usize, build: &Build) {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(4));
    for rows in ROWS {
        let data = random_rows(rows, rows as u64);
        let ids: Vec<u64> = (0..rows as u64).collect();
        let Some(index) = build(&ids, &data) else {
            return;
        };
        drop(data);
        g.throughput(Throughput::Bytes((rows * DIM * bytes_per_value) as u64));
        for &nq in batches {
            let queries = random_rows(nq, 7);
            g.bench_with_input(
                BenchmarkId::new(format!("{rows}x{DIM}"), nq),
                &queries,
                |b, q| b.iter(|| black_box(index.search(q, K).unwrap())),
            );
        }
    }
    g.finish();
}

fn cpu(c: &mut Criterion) {
    exact(c, "exact_top10_cpu_f32", &QUERIES, 4, &|ids, data| {
        Some(Box::new(
            CpuIndex::from_rows(DIM, Metric::Dot, ids, data).unwrap(),
        ))
    });
}

fn gpu(c: &mut Criterion) {
    exact(
        c,
        "exact_top10_gpu_fp16",
        &GPU_QUERIES,
        2,
        &|ids, data| match CudaIndex::new(DIM, Metric::Dot, 0) {
            Ok(mut index) => {
                index.upsert(ids, data).unwrap();
                Some(Box::new(index))
            }
            Err(e) => {
                eprintln!("exact_top10_gpu_fp16 skipped: {e}");
                None
            }
        },
    );
}

criterion_group!(benches, bandwidth, cpu, gpu);
criterion_main!(benches);
