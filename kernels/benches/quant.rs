//! The scan over int8 codes against the exact f32 scan, over 100k × 384 rows, for 1 and 32
//! queries: exact top-10 on f32 (`CpuIndex`), the code scan for `candidates(10)` = 40, and the
//! code scan followed by rescoring the 40 from f32 rows held in memory (on a partition they
//! come from disk, whose cost is not counted here).
//!
//! Throughput is reported in rows scanned per second.

use std::hint::black_box;
use std::time::Duration;

use arbor_kernels::quant::{self, QuantizedRows, ScalarQuantizer, TrainOptions};
use arbor_kernels::topk::{CpuIndex, Metric, VectorIndex};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};

const DIM: usize = 384;
const ROWS: usize = 100_000;
const K: usize = 10;
const QUERIES: [usize; 2] = [1, 32];

/// Uniform values in [-0.5, 0.5) from a fixed-seed xorshift generator.
fn random_rows(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n * DIM)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn scan(c: &mut Criterion) {
    eprintln!("quantized kernel: {}", quant::kernel_name());
    let data = random_rows(ROWS, 1);
    let ids: Vec<u64> = (0..ROWS as u64).collect();
    let mut g = c.benchmark_group(format!("quant_vs_f32_{ROWS}x{DIM}"));
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(ROWS as u64));
    for metric in [Metric::Dot, Metric::L2] {
        let exact = CpuIndex::from_rows(DIM, metric, &ids, &data).unwrap();
        let quantizer =
            ScalarQuantizer::train(DIM, metric, &data[..10_000 * DIM], &TrainOptions::default())
                .unwrap();
        let mut codes = QuantizedRows::new(quantizer);
        codes.reserve(ROWS);
        codes.upsert(&ids, &data).unwrap();
        let n = quant::candidates(K);
        for nq in QUERIES {
            let queries = random_rows(nq, 7 + nq as u64);
            g.bench_with_input(
                BenchmarkId::new(format!("{metric}/f32_exact_top{K}"), nq),
                &queries,
                |b, q| b.iter(|| black_box(exact.search(q, K).unwrap())),
            );
            g.bench_with_input(
                BenchmarkId::new(format!("{metric}/codes_scan_{n}"), nq),
                &queries,
                |b, q| b.iter(|| black_box(codes.scan(q, n, None).unwrap())),
            );
            g.bench_with_input(
                BenchmarkId::new(format!("{metric}/codes_scan_{n}_rescore_top{K}"), nq),
                &queries,
                |b, q| {
                    b.iter(|| {
                        let candidates = codes.scan(q, n, None).unwrap();
                        let mut rows = Vec::with_capacity(n * DIM);
                        let out: Vec<_> = candidates
                            .iter()
                            .zip(q.chunks_exact(DIM))
                            .map(|(hits, query)| {
                                rows.clear();
                                let cand: Vec<u64> = hits.iter().map(|h| h.id).collect();
                                for &id in &cand {
                                    let i = id as usize;
                                    rows.extend_from_slice(&data[i * DIM..(i + 1) * DIM]);
                                }
                                codes.rescore(query, &cand, &rows, K).unwrap()
                            })
                            .collect();
                        black_box(out)
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
