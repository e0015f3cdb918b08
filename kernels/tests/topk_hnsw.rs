//! The HNSW index against the exact scan: recall@10 on a seeded clustered dataset, removal,
//! upsert and filtering.

use std::collections::HashSet;

use arbor_kernels::hnsw::{HnswIndex, HnswParams, HnswReadError};
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

/// A small graph of every metric, with dead nodes, for the persistence tests.
fn small_index(metric: Metric, n: usize, d: usize) -> HnswIndex {
    let rows = clustered(n, d, 4, 21);
    let ids: Vec<u64> = (0..n as u64).map(|i| i * 3 + 7).collect();
    let params = HnswParams {
        m: 4,
        ef_construction: 16,
        ..HnswParams::default()
    };
    let mut h = HnswIndex::new(d, metric, params).unwrap();
    h.upsert(&ids, &rows).unwrap();
    h.remove(&ids[..n / 10]).unwrap();
    h
}

fn saved(h: &HnswIndex) -> Vec<u8> {
    let mut bytes = Vec::new();
    h.write_to(&mut bytes).unwrap();
    bytes
}

#[test]
fn a_saved_graph_loads_and_answers_alike() {
    let queries = clustered(20, D, 40, 77);
    for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
        let n = 3000;
        let rows = clustered(n, D, 40, 11);
        let ids: Vec<u64> = (0..n as u64).map(|i| i * 2 + 1).collect();
        let mut h = HnswIndex::new(D, metric, HnswParams::default()).unwrap();
        h.upsert(&ids, &rows).unwrap();
        h.remove(&[1, 3, 5]).unwrap();
        let bytes = saved(&h);
        let mut loaded = HnswIndex::read_from(&mut bytes.as_slice(), D, metric).unwrap();
        assert_eq!(loaded.len(), h.len());
        assert_eq!(loaded.params(), h.params());
        let even = |id: u64| id % 4 == 1;
        for ef in [10, 64, 200] {
            assert_eq!(
                loaded.search_with_ef(&queries, 10, None, Some(ef)).unwrap(),
                h.search_with_ef(&queries, 10, None, Some(ef)).unwrap(),
                "{metric}, ef {ef}"
            );
            assert_eq!(
                loaded
                    .search_with_ef(&queries, 10, Some(&even), Some(ef))
                    .unwrap(),
                h.search_with_ef(&queries, 10, Some(&even), Some(ef))
                    .unwrap(),
            );
        }
        // Writing the loaded graph again gives the same bytes; it stays writable.
        assert_eq!(saved(&loaded), bytes);
        loaded.upsert(&[1], &queries[..D]).unwrap();
        assert_eq!(loaded.search(&queries[..D], 1).unwrap()[0][0].id, 1);
    }
    // An empty index round-trips too.
    let empty = HnswIndex::new(D, Metric::L2, HnswParams::default()).unwrap();
    let loaded = HnswIndex::read_from(&mut saved(&empty).as_slice(), D, Metric::L2).unwrap();
    assert_eq!(loaded.len(), 0);
    assert!(loaded.search(&queries[..D], 3).unwrap()[0].is_empty());
}

#[test]
fn a_file_for_another_index_is_refused() {
    let bytes = saved(&small_index(Metric::Cosine, 100, 8));
    let err = HnswIndex::read_from(&mut bytes.as_slice(), 9, Metric::Cosine).unwrap_err();
    assert!(
        matches!(
            err,
            HnswReadError::DimensionMismatch {
                found: 8,
                expected: 9
            }
        ),
        "{err}"
    );
    let err = HnswIndex::read_from(&mut bytes.as_slice(), 8, Metric::L2).unwrap_err();
    assert!(matches!(err, HnswReadError::MetricMismatch { .. }), "{err}");
    assert!(err.to_string().contains("cosine"), "{err}");
    let err = HnswIndex::read_from(&mut &b"not a graph at all"[..], 8, Metric::L2).unwrap_err();
    assert!(matches!(err, HnswReadError::BadMagic), "{err}");
    let mut newer = bytes.clone();
    newer[8] = 99;
    let err = HnswIndex::read_from(&mut newer.as_slice(), 8, Metric::Cosine).unwrap_err();
    assert!(
        matches!(err, HnswReadError::UnsupportedVersion { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn every_truncation_of_a_graph_file_is_refused() {
    for metric in [Metric::Cosine, Metric::L2] {
        let bytes = saved(&small_index(metric, 60, 5));
        for len in 0..bytes.len() {
            match HnswIndex::read_from(&mut &bytes[..len], 5, metric) {
                Err(HnswReadError::Truncated) => {}
                other => panic!("{metric}: truncated to {len}: {other:?}"),
            }
        }
        assert!(HnswIndex::read_from(&mut bytes.as_slice(), 5, metric).is_ok());
    }
}

#[test]
fn every_flipped_byte_of_a_graph_file_is_refused() {
    let bytes = saved(&small_index(Metric::Dot, 60, 5));
    for at in 0..bytes.len() {
        for bit in [0, 3, 7] {
            let mut bad = bytes.clone();
            bad[at] ^= 1 << bit;
            let err = match HnswIndex::read_from(&mut bad.as_slice(), 5, Metric::Dot) {
                Err(e) => e,
                Ok(_) => panic!("byte {at} bit {bit} flipped was accepted"),
            };
            // Each refusal says what is wrong.
            assert!(!err.to_string().is_empty());
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Garbage after a valid header, or a valid file with a stretch overwritten by random
    /// bytes: refused with an error (the reader never panics nor trusts the garbage).
    #[test]
    fn garbage_is_refused_without_panicking(
        start in 0usize..2000,
        junk in proptest::collection::vec(proptest::num::u8::ANY, 1..64),
    ) {
        let bytes = saved(&small_index(Metric::L2, 40, 4));
        let mut bad = bytes.clone();
        let start = start % bad.len();
        let end = (start + junk.len()).min(bad.len());
        bad[start..end].copy_from_slice(&junk[..end - start]);
        let result = HnswIndex::read_from(&mut bad.as_slice(), 4, Metric::L2);
        if bad != bytes {
            proptest::prop_assert!(result.is_err());
        }
        let mut tail = bytes[..88.min(bytes.len())].to_vec();
        tail.extend_from_slice(&junk);
        proptest::prop_assert!(HnswIndex::read_from(&mut tail.as_slice(), 4, Metric::L2).is_err());
    }
}

#[test]
fn a_parallel_build_is_as_good_and_well_formed() {
    let n = 4000;
    let rows = clustered(n, D, 40, 11);
    let queries = clustered(100, D, 40, 99);
    let ids: Vec<u64> = (0..n as u64).map(|i| i * 2 + 1).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    for metric in [Metric::Cosine, Metric::L2] {
        let exact = CpuIndex::from_rows(D, metric, &ids, &rows).unwrap();
        let mut h = HnswIndex::new(D, metric, HnswParams::default()).unwrap();
        // In two batches, the second upserting some ids of the first again.
        pool.install(|| h.upsert_parallel(&ids[..n / 2], &rows[..n / 2 * D]))
            .unwrap();
        pool.install(|| h.upsert_parallel(&ids[n / 4..], &rows[n / 4 * D..]))
            .unwrap();
        assert_eq!(h.len(), n);
        let want = exact.search(&queries, 10).unwrap();
        let got = h.search(&queries, 10).unwrap();
        let r = recall(&got, &want);
        eprintln!("{metric}: parallel build recall@10 = {r:.4}");
        assert!(r >= 0.9, "{metric}: recall@10 {r} below 0.9");
        // Reading checks every link: the graph the threads made is well formed.
        let loaded = HnswIndex::read_from(&mut saved(&h).as_slice(), D, metric).unwrap();
        assert_eq!(loaded.search(&queries, 10).unwrap(), got);
    }
    // With one thread it is the sequential build exactly.
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut a = HnswIndex::new(D, Metric::L2, HnswParams::default()).unwrap();
    one.install(|| a.upsert_parallel(&ids, &rows)).unwrap();
    let mut b = HnswIndex::new(D, Metric::L2, HnswParams::default()).unwrap();
    b.upsert(&ids, &rows).unwrap();
    assert_eq!(saved(&a), saved(&b));
}
