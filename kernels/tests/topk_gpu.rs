//! The CUDA exact index against the CPU one. Skips (with the reason printed) on machines
//! without a usable CUDA driver; on a GPU machine it must pass.

use std::collections::HashMap;

use arbor_kernels::Device;
use arbor_kernels::topk::{CpuIndex, CudaIndex, ExactIndex, Hit, Metric, TopKError, VectorIndex};
use proptest::prelude::*;

/// Opens the GPU index, or says why the test cannot run here.
fn gpu(dim: usize, metric: Metric) -> Option<CudaIndex> {
    match CudaIndex::new(dim, metric, 0) {
        Ok(index) => Some(index),
        Err(TopKError::NoGpu(reason)) => {
            eprintln!("skipped: no GPU here ({reason})");
            None
        }
        Err(e) => panic!("a CUDA driver is present but the GPU index failed: {e}"),
    }
}

fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// GPU hits equal CPU hits up to fp16 near-ties: the scores at each position agree within
/// `tol`, and every GPU hit's true (CPU) score is within `tol` of the CPU's score at that
/// position, so only rows whose scores are that close may trade places.
fn assert_near(metric: Metric, gpu: &[Hit], cpu: &[Hit], all: &HashMap<u64, f32>, tol: f32) {
    assert_eq!(gpu.len(), cpu.len(), "gpu {gpu:?}\ncpu {cpu:?}");
    for (g, c) in gpu.iter().zip(cpu) {
        assert!(
            (g.score - c.score).abs() <= tol,
            "{metric}: gpu {gpu:?}\ncpu {cpu:?}"
        );
        assert!(
            (all[&g.id] - c.score).abs() <= tol,
            "{metric}: gpu {gpu:?}\ncpu {cpu:?}"
        );
    }
}

fn compare(metric: Metric, d: usize, n: usize, nq: usize, k: usize, seed: u64) {
    let Some(mut gpu) = gpu(d, metric) else {
        return;
    };
    let rows = uniform(n * d, seed);
    let queries = uniform(nq * d, seed + 1);
    let ids: Vec<u64> = (0..n as u64).map(|i| i * 5 + 2).collect();
    gpu.upsert(&ids, &rows).unwrap();
    let cpu = CpuIndex::from_rows(d, metric, &ids, &rows).unwrap();
    let got = gpu.search(&queries, k).unwrap();
    let want = cpu.search(&queries, k).unwrap();
    let every = cpu.search(&queries, n).unwrap();
    // fp16 rows and queries: about 1e-3 relative on each product, summed over d.
    let tol = 2e-3 * (d as f32).sqrt() * if metric == Metric::Cosine { 0.2 } else { 1.0 };
    for q in 0..nq {
        let all: HashMap<u64, f32> = every[q].iter().map(|h| (h.id, h.score)).collect();
        assert_near(metric, &got[q], &want[q], &all, tol);
    }
}

#[test]
fn gpu_equals_cpu_on_a_large_index_with_several_tiles() {
    // 70k rows: more than one 2,048-row chunk and, for 600 queries, several score tiles.
    compare(Metric::Dot, 384, 70_000, 600, 10, 1);
}

#[test]
fn gpu_follows_upserts_removals_and_filters() {
    let d = 64;
    let Some(mut gpu) = gpu(d, Metric::L2) else {
        return;
    };
    let n = 5000;
    let rows = uniform(n * d, 9);
    let ids: Vec<u64> = (0..n as u64).collect();
    gpu.upsert(&ids, &rows).unwrap();
    let mut cpu = CpuIndex::from_rows(d, Metric::L2, &ids, &rows).unwrap();
    // Grow past the initial capacity, replace some rows and remove others.
    let more = uniform(3000 * d, 10);
    let more_ids: Vec<u64> = (n as u64..n as u64 + 3000).collect();
    gpu.upsert(&more_ids, &more).unwrap();
    cpu.upsert(&more_ids, &more).unwrap();
    let replaced = uniform(100 * d, 11);
    let replaced_ids: Vec<u64> = (0..100).map(|i| i * 7).collect();
    gpu.upsert(&replaced_ids, &replaced).unwrap();
    cpu.upsert(&replaced_ids, &replaced).unwrap();
    let gone: Vec<u64> = (0..8000).filter(|i| i % 4 == 1).collect();
    assert_eq!(gpu.remove(&gone).unwrap(), cpu.remove(&gone).unwrap());
    assert_eq!(gpu.len(), cpu.len());
    assert!(gpu.memory().device_bytes >= gpu.len() * d * 2);

    let queries = uniform(20 * d, 12);
    let odd = |id: u64| id % 2 == 1;
    let got = gpu.search_filtered(&queries, 25, Some(&odd)).unwrap();
    let want = cpu.search_filtered(&queries, 25, Some(&odd)).unwrap();
    let every = cpu
        .search_filtered(&queries, usize::MAX, Some(&odd))
        .unwrap();
    for q in 0..20 {
        assert!(got[q].iter().all(|h| odd(h.id) && h.id % 4 != 1));
        let all: HashMap<u64, f32> = every[q].iter().map(|h| (h.id, h.score)).collect();
        assert_near(Metric::L2, &got[q], &want[q], &all, 0.05);
    }
    assert!(matches!(
        gpu.search(&queries, 10_000),
        Err(TopKError::KTooLarge { .. })
    ));
}

#[test]
fn exact_index_on_cuda_or_its_cpu_fallback_answers() {
    let index = ExactIndex::new_or_cpu(8, Metric::Cosine, Device::Cuda(0)).unwrap();
    let mut index = index;
    index.upsert(&[1, 2], &[1.0; 16]).unwrap();
    let hits = index.search(&[1.0; 8], 2).unwrap();
    assert_eq!(hits[0].iter().map(|h| h.id).collect::<Vec<_>>(), [1, 2]);
    assert!((hits[0][0].score - 1.0).abs() < 1e-3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn gpu_top_k_equals_cpu_top_k_up_to_fp16_near_ties(
        d in 1usize..200,
        n in 1usize..5000,
        nq in 1usize..40,
        k in 1usize..50,
        seed in any::<u64>(),
        metric in prop_oneof![Just(Metric::Cosine), Just(Metric::Dot), Just(Metric::L2)],
    ) {
        compare(metric, d, n, nq, k, seed);
    }
}
