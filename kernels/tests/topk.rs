//! Exact top-k on the CPU against the naive reference, and merging of partition results.

use std::collections::HashSet;

use arbor_kernels::Device;
use arbor_kernels::topk::{CpuIndex, ExactIndex, Hit, Metric, VectorIndex, merge, naive_topk};
use proptest::prelude::*;

const METRICS: [Metric; 3] = [Metric::Cosine, Metric::Dot, Metric::L2];

/// Rows with small integer components: every inner product is exact in f32 whatever the
/// order of summation, so dot and L2 results must equal the reference bit for bit, and the
/// many equal scores exercise the tie-break by id.
fn int_rows(n: usize, d: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec((-3i8..=3).prop_map(f32::from), n * d)
}

/// Distinct ids in an order unrelated to the rows', so ties are not broken by row position.
fn ids(n: usize) -> impl Strategy<Value = Vec<u64>> {
    Just((0..n as u64).map(|i| i * 3 + 1).collect::<Vec<_>>()).prop_shuffle()
}

#[derive(Debug, Clone)]
struct Case {
    d: usize,
    ids: Vec<u64>,
    rows: Vec<f32>,
    queries: Vec<f32>,
    k: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..40, 0usize..400, 1usize..7, 0usize..25).prop_flat_map(|(d, n, nq, k)| {
        (ids(n), int_rows(n, d), int_rows(nq, d)).prop_map(move |(ids, rows, queries)| Case {
            d,
            ids,
            rows,
            queries,
            k,
        })
    })
}

/// Checks `got` against `want` where scores may differ by rounding: same length, the scores
/// at each position agree within `tol`, and every hit's id really has (within `tol`) the
/// score it is reported with. Rows whose scores are within `tol` may trade places.
fn assert_equivalent(
    metric: Metric,
    got: &[Hit],
    want: &[Hit],
    true_score: impl Fn(u64) -> f32,
    tol: f32,
) {
    assert_eq!(got.len(), want.len(), "got {got:?}\nwant {want:?}");
    let unique: HashSet<u64> = got.iter().map(|h| h.id).collect();
    assert_eq!(unique.len(), got.len(), "duplicate ids in {got:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g.score - w.score).abs() <= tol,
            "{metric}: got {got:?}\nwant {want:?}"
        );
        assert!(
            (true_score(g.id) - g.score).abs() <= tol,
            "{metric}: {g:?} misreported"
        );
    }
    for pair in got.windows(2) {
        assert!(
            arbor_kernels::topk::compare(metric, &pair[0], &pair[1]).is_lt(),
            "{metric}: out of order {got:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn cpu_equals_naive(c in case()) {
        for metric in METRICS {
            let index = CpuIndex::from_rows(c.d, metric, &c.ids, &c.rows).unwrap();
            let got = index.search(&c.queries, c.k).unwrap();
            let want = naive_topk(metric, c.d, &c.ids, &c.rows, &c.queries, c.k, None);
            prop_assert_eq!(got.len(), c.queries.len() / c.d);
            for (q, (g, w)) in got.iter().zip(&want).enumerate() {
                if metric == Metric::Cosine {
                    let all = naive_topk(metric, c.d, &c.ids, &c.rows, &c.queries[q * c.d..(q + 1) * c.d], usize::MAX, None);
                    let score = |id| all[0].iter().find(|h| h.id == id).unwrap().score;
                    assert_equivalent(metric, g, w, score, 1e-5);
                } else {
                    prop_assert_eq!(g, w);
                }
            }
        }
    }

    #[test]
    fn filtered_search_equals_naive(c in case(), modulus in 1u64..5) {
        for metric in [Metric::Dot, Metric::L2] {
            let index = CpuIndex::from_rows(c.d, metric, &c.ids, &c.rows).unwrap();
            let keep = |id: u64| id.is_multiple_of(modulus);
            let got = index.search_filtered(&c.queries, c.k, Some(&keep)).unwrap();
            let want = naive_topk(metric, c.d, &c.ids, &c.rows, &c.queries, c.k, Some(&keep));
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn upserts_and_removals_equal_naive_on_what_is_left(
        c in case(),
        removed in prop::collection::vec(any::<prop::sample::Index>(), 0..50),
        replaced in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        prop_assume!(!c.ids.is_empty());
        let metric = Metric::L2;
        let d = c.d;
        let mut index = CpuIndex::from_rows(d, metric, &c.ids, &c.rows).unwrap();
        let mut live: Vec<(u64, Vec<f32>)> =
            c.ids.iter().copied().zip(c.rows.chunks_exact(d).map(<[f32]>::to_vec)).collect();
        // Replace some rows with their negation, then remove some.
        for r in &replaced {
            let (id, row) = &mut live[r.index(c.ids.len())];
            row.iter_mut().for_each(|x| *x = -*x);
            index.upsert(&[*id], row).unwrap();
        }
        let gone: HashSet<u64> = removed.iter().map(|r| c.ids[r.index(c.ids.len())]).collect();
        let gone_ids: Vec<u64> = gone.iter().copied().collect();
        prop_assert_eq!(index.remove(&gone_ids).unwrap(), gone.len());
        prop_assert_eq!(index.remove(&gone_ids).unwrap(), 0);
        live.retain(|(id, _)| !gone.contains(id));
        prop_assert_eq!(index.len(), live.len());

        let ids: Vec<u64> = live.iter().map(|(id, _)| *id).collect();
        let rows: Vec<f32> = live.iter().flat_map(|(_, r)| r.clone()).collect();
        let got = index.search(&c.queries, c.k).unwrap();
        let want = naive_topk(metric, d, &ids, &rows, &c.queries, c.k, None);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn merged_partitions_equal_the_global_top_k(
        c in case(),
        parts in 1usize..6,
        seed in any::<u64>(),
    ) {
        for metric in METRICS {
            // Spread the rows over partitions by a hash of their id.
            let part_of = |id: u64| ((id ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % parts;
            let mut partitions: Vec<CpuIndex> =
                (0..parts).map(|_| CpuIndex::new(c.d, metric).unwrap()).collect();
            for (id, row) in c.ids.iter().zip(c.rows.chunks_exact(c.d)) {
                partitions[part_of(*id)].upsert(&[*id], row).unwrap();
            }
            let global = CpuIndex::from_rows(c.d, metric, &c.ids, &c.rows).unwrap();
            let want = global.search(&c.queries, c.k).unwrap();
            let per_part: Vec<Vec<Vec<Hit>>> =
                partitions.iter().map(|p| p.search(&c.queries, c.k).unwrap()).collect();
            for (q, want) in want.iter().enumerate() {
                let merged = merge(metric, c.k, per_part.iter().map(|p| p[q].as_slice()));
                prop_assert_eq!(&merged, want);
            }
        }
    }
}

#[test]
fn float_data_matches_naive_within_rounding() {
    // Random real-valued rows: the scan sums in a different order than the reference.
    let (n, d, nq, k) = (3000, 384, 9, 10);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let rows: Vec<f32> = (0..n * d).map(|_| next()).collect();
    let queries: Vec<f32> = (0..nq * d).map(|_| next()).collect();
    let ids: Vec<u64> = (0..n as u64).map(|i| i * 7 + 3).collect();
    for metric in METRICS {
        let index = CpuIndex::from_rows(d, metric, &ids, &rows).unwrap();
        let got = index.search(&queries, k).unwrap();
        let want = naive_topk(metric, d, &ids, &rows, &queries, k, None);
        for (q, (g, w)) in got.iter().zip(&want).enumerate() {
            let all = naive_topk(
                metric,
                d,
                &ids,
                &rows,
                &queries[q * d..(q + 1) * d],
                n,
                None,
            );
            let score = |id| all[0].iter().find(|h| h.id == id).unwrap().score;
            assert_equivalent(metric, g, w, score, 1e-4);
        }
    }
}

#[test]
fn edge_cases_have_documented_answers() {
    let mut index = ExactIndex::new(2, Metric::Cosine, Device::Cpu).unwrap();
    assert_eq!(index.device(), Device::Cpu);
    // Empty index and k = 0 give one empty list per query.
    assert_eq!(
        index.search(&[1.0, 0.0, 0.0, 1.0], 3).unwrap(),
        vec![vec![]; 2]
    );
    index
        .upsert(&[10, 11, 12], &[1.0, 0.0, 0.0, 2.0, 0.0, 0.0])
        .unwrap();
    assert_eq!(index.search(&[1.0, 0.0], 0).unwrap(), vec![vec![]]);
    // k larger than the index returns every row; the zero vector scores 0.
    let hits = index.search(&[3.0, 0.0], 10).unwrap();
    let ids: Vec<u64> = hits[0].iter().map(|h| h.id).collect();
    assert_eq!(ids, [10, 11, 12]);
    assert_eq!(hits[0][0].score, 1.0);
    assert_eq!(hits[0][2].score, 0.0);
    // Upserting an existing id replaces its row.
    index.upsert(&[12], &[5.0, 0.0]).unwrap();
    assert_eq!(index.len(), 3);
    let top = index.search(&[1.0, 0.0], 2).unwrap();
    assert_eq!(top[0].iter().map(|h| h.id).collect::<Vec<_>>(), [10, 12]);
    assert!(index.memory().host_bytes >= 3 * 2 * 4);
    assert_eq!(index.memory().device_bytes, 0);
    // Bad input is refused and leaves the index as it was.
    assert!(index.upsert(&[1, 2], &[1.0, 2.0, 3.0]).is_err());
    assert!(index.upsert(&[1], &[f32::NAN, 0.0]).is_err());
    assert!(index.search(&[1.0, 2.0, 3.0], 1).is_err());
    assert_eq!(index.len(), 3);
    assert!(CpuIndex::new(0, Metric::Dot).is_err());
}

#[test]
fn reserving_a_known_load_holds_exactly_its_rows() {
    let (d, n) = (16, 10_000);
    let ids: Vec<u64> = (0..n as u64).collect();
    let rows: Vec<f32> = (0..n * d).map(|i| (i % 7) as f32).collect();
    let mut index = CpuIndex::new(d, Metric::Dot).unwrap();
    index.reserve(n).unwrap();
    for (ids, rows) in ids.chunks(512).zip(rows.chunks(512 * d)) {
        index.upsert(ids, rows).unwrap();
    }
    let vectors_and_ids = n * (d * 4 + 8);
    let host = index.memory().host_bytes;
    // The id map is the only other cost; growth by doubling would have added up to 2×.
    assert!(host >= vectors_and_ids);
    assert!(host < vectors_and_ids + n * 40, "{host} bytes for {n} rows");
}
