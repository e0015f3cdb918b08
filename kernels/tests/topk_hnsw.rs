//! The HNSW index against the exact scan: recall@10 on a seeded clustered dataset, removal,
//! upsert and filtering.

use std::collections::HashSet;

use arbor_kernels::hnsw::{HnswIndex, HnswParams};
use arbor_kernels::topk::{CpuIndex, Hit, Metric, VectorIndex};

/// Gaussian-ish clusters: `clusters` centres, points spread around them. Seeded.
fn clustered(n: usize, d: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let centres: Vec<f32> = (0..clusters * d).map(|_| uniform() * 4.0).collect();
    (0..n)
        .flat_map(|i| {
            let c = (i * 7919) % clusters;
            let centre = centres[c * d..(c + 1) * d].to_vec();
            let noise: Vec<f32> = (0..d).map(|_| uniform() + uniform() + uniform()).collect();
            centre
                .into_iter()
                .zip(noise)
                .map(|(c, e)| c + e)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn recall(approx: &[Vec<Hit>], exact: &[Vec<Hit>]) -> f64 {
    let mut found = 0;
    let mut total = 0;
    for (a, e) in approx.iter().zip(exact) {
        let truth: HashSet<u64> = e.iter().map(|h| h.id).collect();
        found += a.iter().filter(|h| truth.contains(&h.id)).count();
        total += e.len();
    }
    found as f64 / total as f64
}

const D: usize = 32;

#[test]
fn recall_at_10_against_exact_is_high_for_every_metric() {
    let n = 4000;
    let rows = clustered(n, D, 40, 11);
    let queries = clustered(100, D, 40, 99);
    let ids: Vec<u64> = (0..n as u64).map(|i| i * 2 + 1).collect();
    for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
        let exact = CpuIndex::from_rows(D, metric, &ids, &rows).unwrap();
        let mut hnsw = HnswIndex::new(D, metric, HnswParams::default()).unwrap();
        hnsw.upsert(&ids, &rows).unwrap();
        assert_eq!(hnsw.len(), n);
        let want = exact.search(&queries, 10).unwrap();
        let got = hnsw.search(&queries, 10).unwrap();
        let r = recall(&got, &want);
        eprintln!("{metric}: recall@10 = {r:.4}");
        assert!(r >= 0.9, "{metric}: recall@10 {r} below 0.9");
        for hits in &got {
            assert_eq!(hits.len(), 10);
            for pair in hits.windows(2) {
                assert!(arbor_kernels::topk::compare(metric, &pair[0], &pair[1]).is_lt());
            }
        }
    }
}

#[test]
fn builds_are_deterministic() {
    let rows = clustered(500, D, 5, 3);
    let ids: Vec<u64> = (0..500).collect();
    let queries = clustered(10, D, 5, 4);
    let build = || {
        let mut h = HnswIndex::new(D, Metric::L2, HnswParams::default()).unwrap();
        h.upsert(&ids, &rows).unwrap();
        h.search(&queries, 5).unwrap()
    };
    assert_eq!(build(), build());
}

#[test]
fn removed_and_filtered_rows_are_never_returned() {
    let n = 2000;
    let rows = clustered(n, D, 20, 5);
    let ids: Vec<u64> = (0..n as u64).collect();
    let queries = clustered(30, D, 20, 6);
    let mut hnsw = HnswIndex::new(D, Metric::Cosine, HnswParams::default()).unwrap();
    hnsw.upsert(&ids, &rows).unwrap();
    let mut exact = CpuIndex::from_rows(D, Metric::Cosine, &ids, &rows).unwrap();

    let gone: Vec<u64> = (0..n as u64).filter(|i| i % 3 == 0).collect();
    assert_eq!(hnsw.remove(&gone).unwrap(), gone.len());
    exact.remove(&gone).unwrap();
    assert_eq!(hnsw.len(), n - gone.len());
    let even = |id: u64| id.is_multiple_of(2);
    let got = hnsw.search_filtered(&queries, 10, Some(&even)).unwrap();
    let want = exact.search_filtered(&queries, 10, Some(&even)).unwrap();
    for hits in &got {
        assert_eq!(hits.len(), 10);
        assert!(
            hits.iter()
                .all(|h| !h.id.is_multiple_of(3) && h.id.is_multiple_of(2)),
            "{hits:?}"
        );
    }
    let r = recall(&got, &want);
    assert!(r >= 0.85, "filtered recall@10 {r}");

    // A filter that admits only three rows still finds all three (exact fallback).
    let few = |id: u64| [1, 5, 7].contains(&id);
    let got = hnsw.search_filtered(&queries[..D], 10, Some(&few)).unwrap();
    let mut found: Vec<u64> = got[0].iter().map(|h| h.id).collect();
    found.sort();
    assert_eq!(found, [1, 5, 7]);

    // Upserting an id moves it: search for its new vector finds it first.
    let target = queries[..D].to_vec();
    hnsw.upsert(&[1], &target).unwrap();
    let top = hnsw.search(&target, 1).unwrap();
    assert_eq!(top[0][0].id, 1);
    assert!((top[0][0].score - 1.0).abs() < 1e-5);

    // Removing most rows triggers a rebuild; what is left is still searchable.
    let most: Vec<u64> = (0..n as u64).filter(|i| i % 10 != 1).collect();
    hnsw.remove(&most).unwrap();
    let left = hnsw.len();
    assert_eq!(
        left,
        (0..n as u64).filter(|i| i % 10 == 1 && i % 3 != 0).count()
    );
    let all = hnsw.search(&queries[..D], left + 5).unwrap();
    assert_eq!(all[0].len(), left);
    assert!(hnsw.memory().host_bytes > left * D * 4);
}
