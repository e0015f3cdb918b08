//! Scalar-quantized vectors: the kernel against its reference, recall after rescoring against
//! the exact index on clustered data, memory per row, clamping, and hostile quantizer bytes.

use std::collections::{HashMap, HashSet};

use arbor_kernels::quant::{
    self, PreparedQuery, QuantError, QuantizedRows, ScalarQuantizer, TrainOptions,
};
use arbor_kernels::topk::{CpuIndex, Hit, Metric, VectorIndex, compare};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const METRICS: [Metric; 3] = [Metric::Cosine, Metric::Dot, Metric::L2];

/// A standard normal draw (Box-Muller), so the tests need no distribution crate.
fn normal(rng: &mut StdRng) -> f32 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    let v: f64 = rng.random();
    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
}

/// Clustered rows like embeddings: `clusters` centres, each row a centre plus noise. The
/// dimensions differ in spread (0.2 to 2) and in offset, so that per-dimension ranges matter,
/// and the noise is large enough that a query's neighbours are close calls.
struct Clustered {
    dim: usize,
    centres: Vec<f32>,
    spread: Vec<f32>,
    noise: f32,
}

impl Clustered {
    fn new(dim: usize, clusters: usize, noise: f32, rng: &mut StdRng) -> Self {
        let spread: Vec<f32> = (0..dim).map(|_| rng.random_range(0.2..2.0)).collect();
        let offset: Vec<f32> = (0..dim).map(|_| rng.random_range(-0.5..0.5)).collect();
        let centres = (0..clusters * dim)
            .map(|i| offset[i % dim] + spread[i % dim] * normal(rng))
            .collect();
        Clustered {
            dim,
            centres,
            spread,
            noise,
        }
    }

    fn rows(&self, n: usize, rng: &mut StdRng) -> Vec<f32> {
        let d = self.dim;
        let clusters = self.centres.len() / d;
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let c = rng.random_range(0..clusters);
            for j in 0..d {
                out.push(self.centres[c * d + j] + self.noise * self.spread[j] * normal(rng));
            }
        }
        out
    }
}

fn ids(hits: &[Hit]) -> Vec<u64> {
    hits.iter().map(|h| h.id).collect()
}

#[test]
fn score_matches_the_reference_on_awkward_sizes() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut dims: Vec<usize> = vec![1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 384];
    dims.extend((0..20).map(|_| rng.random_range(1..700)));
    for d in dims {
        for metric in METRICS {
            let sample: Vec<f32> = (0..100 * d).map(|_| normal(&mut rng)).collect();
            let q = ScalarQuantizer::train(d, metric, &sample, &TrainOptions::default()).unwrap();
            let query: Vec<f32> = (0..d).map(|_| 3.0 * normal(&mut rng)).collect();
            let prepared = q.prepare(&query).unwrap();
            let mut p = query.clone();
            if metric == Metric::Cosine {
                arbor_kernels::topk::normalize(&mut p);
            }
            for _ in 0..8 {
                let code: Vec<u8> = (0..d).map(|_| rng.random()).collect();
                let got = quant::score(&prepared, &code);
                let want = quant::score_reference(&prepared, &code);
                assert_eq!(got, prepared.score(&code));
                // Rounding is bounded relative to the sum of the terms' magnitudes.
                let magnitude: f32 = (0..d)
                    .map(|i| {
                        let (lo, s, c) = (q.lower()[i], q.scale()[i], f32::from(code[i]));
                        match metric {
                            Metric::L2 => ((p[i] - lo).abs() + s * c).powi(2),
                            _ => (p[i] * lo).abs() + (p[i] * s * c).abs(),
                        }
                    })
                    .sum();
                let tol = 1e-5 * magnitude + 1e-6;
                assert!(
                    (got - want).abs() <= tol,
                    "{} {metric} d={d}: {got} vs {want}",
                    quant::kernel_name()
                );
            }
        }
    }
}

/// The decoded row is within half a step of the prepared row in every dimension.
#[test]
fn codes_decode_to_within_half_a_step() {
    let mut rng = StdRng::seed_from_u64(2);
    let d = 37;
    for metric in METRICS {
        let sample: Vec<f32> = (0..2000 * d).map(|_| normal(&mut rng)).collect();
        let q = ScalarQuantizer::train(d, metric, &sample, &TrainOptions { clip: 0.0 }).unwrap();
        let mut code = vec![0u8; d];
        let mut decoded = vec![0.0f32; d];
        for row in sample.chunks_exact(d).take(100) {
            assert_eq!(
                q.encode(row, &mut code).unwrap(),
                0,
                "min/max clamps nothing"
            );
            q.decode(&code, &mut decoded).unwrap();
            let mut prepared = row.to_vec();
            if metric == Metric::Cosine {
                arbor_kernels::topk::normalize(&mut prepared);
            }
            for j in 0..d {
                let err = (prepared[j] - decoded[j]).abs();
                assert!(
                    err <= q.scale()[j] * 0.5001 + 1e-6,
                    "{metric} dim {j}: {err}"
                );
            }
        }
    }
}

/// Recall@10 of `scan(candidates(10))` then `rescore`, against the exact index, on 20k
/// clustered 384-d rows, for every metric. Also prints recall of the codes alone and at other
/// oversampling factors, for the record.
#[test]
fn recall_after_rescoring_reaches_097_on_clustered_data() {
    // Tight clusters, and clusters so loose that neighbours are close calls.
    for noise in [0.35, 1.0] {
        recall_at_10(noise);
    }
}

fn recall_at_10(noise: f32) {
    const N: usize = 20_000;
    const D: usize = 384;
    const K: usize = 10;
    const QUERIES: usize = 100;
    let mut rng = StdRng::seed_from_u64(3);
    let data = Clustered::new(D, 64, noise, &mut rng);
    let rows = data.rows(N, &mut rng);
    let queries = data.rows(QUERIES, &mut rng);
    let row_ids: Vec<u64> = (0..N as u64).map(|i| i * 7 + 3).collect();
    let by_id: HashMap<u64, usize> = row_ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();

    for metric in METRICS {
        let exact = CpuIndex::from_rows(D, metric, &row_ids, &rows).unwrap();
        let truth = exact.search(&queries, K).unwrap();
        let sample = &rows[..10_000 * D];
        let q = ScalarQuantizer::train(D, metric, sample, &TrainOptions::default()).unwrap();
        let mut store = QuantizedRows::new(q);
        store.reserve(N);
        store.upsert(&row_ids, &rows).unwrap();

        let mut report = String::new();
        for factor in [1usize, 2, 4] {
            let n = if factor == 4 {
                quant::candidates(K)
            } else {
                K * factor
            };
            let candidates = store.scan(&queries, n, None).unwrap();
            let mut found = 0;
            for (qi, (cands, want)) in candidates.iter().zip(&truth).enumerate() {
                assert_eq!(cands.len(), n);
                for pair in cands.windows(2) {
                    assert!(compare(metric, &pair[0], &pair[1]).is_lt(), "scan order");
                }
                let cand_ids = ids(cands);
                let vectors: Vec<f32> = cand_ids
                    .iter()
                    .flat_map(|id| &rows[by_id[id] * D..(by_id[id] + 1) * D])
                    .copied()
                    .collect();
                let query = &queries[qi * D..(qi + 1) * D];
                let got = store.rescore(query, &cand_ids, &vectors, K).unwrap();
                assert_eq!(got.len(), K);
                let want_ids: HashSet<u64> = want.iter().map(|h| h.id).collect();
                found += got.iter().filter(|h| want_ids.contains(&h.id)).count();
                // Rescored scores are exact: they agree with the exact index's.
                for (g, w) in got.iter().zip(want) {
                    if g.id == w.id {
                        assert!((g.score - w.score).abs() <= 1e-3 * w.score.abs().max(1.0));
                    }
                }
            }
            let codes_only: usize = candidates
                .iter()
                .zip(&truth)
                .map(|(c, w)| {
                    let w: HashSet<u64> = ids(w).into_iter().collect();
                    c[..K].iter().filter(|h| w.contains(&h.id)).count()
                })
                .sum();
            let recall = found as f64 / (QUERIES * K) as f64;
            report += &format!(
                " | {n} candidates: recall@10 {recall:.4} (codes alone {:.4})",
                codes_only as f64 / (QUERIES * K) as f64
            );
            if factor == 4 {
                assert!(recall >= 0.97, "{metric}: recall@10 {recall} < 0.97");
            }
        }
        eprintln!(
            "noise {noise} {metric} ({} kernel, clamp fraction {:.2e}){report}",
            quant::kernel_name(),
            store.clamp_stats().fraction()
        );
    }
}

#[test]
fn memory_per_row_fits_the_target() {
    // 1M × 384 computed, not allocated: at most 0.45 GB per partition replica.
    let million = QuantizedRows::memory_bytes_for(1_000_000, 384);
    eprintln!(
        "1M x 384: {million} bytes ({:.1} per row); f32 would be {}",
        million as f64 / 1e6,
        1_000_000 * 384 * 4
    );
    assert!(million <= 450_000_000, "{million} bytes");

    // A real store of 100k rows holds exactly what the estimate says, and that is the codes
    // plus a small overhead per row.
    let d = 384;
    let n = 100_000;
    let q = ScalarQuantizer::from_ranges(Metric::L2, &vec![-1.0; d], &vec![1.0; d]).unwrap();
    let mut store = QuantizedRows::new(q);
    store.reserve(n);
    let mut rng = StdRng::seed_from_u64(4);
    for batch in 0..10 {
        let ids: Vec<u64> = (batch * 10_000..(batch + 1) * 10_000).collect();
        let rows: Vec<f32> = (0..10_000 * d)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        store.upsert(&ids, &rows).unwrap();
    }
    assert_eq!(store.len(), n);
    assert_eq!(store.memory_bytes(), QuantizedRows::memory_bytes_for(n, d));
    assert_eq!(store.memory().host_bytes, store.memory_bytes());
    let per_row = store.memory_bytes() as f64 / n as f64;
    eprintln!(
        "100k x 384 store: {} bytes, {per_row:.1} per row",
        store.memory_bytes()
    );
    assert!(per_row < 384.0 + 48.0, "{per_row} bytes per row");
}

#[test]
fn out_of_range_components_are_clamped_and_counted() {
    let d = 8;
    let mut rng = StdRng::seed_from_u64(5);
    let sample: Vec<f32> = (0..1000 * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let q = ScalarQuantizer::train(d, Metric::Dot, &sample, &TrainOptions { clip: 0.0 }).unwrap();
    assert_eq!(q.sample_clamp_fraction(), 0.0);
    let clipped =
        ScalarQuantizer::train(d, Metric::Dot, &sample, &TrainOptions { clip: 0.01 }).unwrap();
    let f = clipped.sample_clamp_fraction();
    assert!(
        (0.005..=0.03).contains(&f),
        "clipping 1% at each end clamps about 2%: {f}"
    );

    let mut store = QuantizedRows::new(q.clone());
    store
        .upsert(&[1, 2], &[[0.5; 8], [0.0; 8]].concat())
        .unwrap();
    assert_eq!(store.clamp_stats().components_clamped, 0);

    // Far outside: stored at the range's ends, and counted.
    let mut wild = vec![0.0f32; d];
    wild[0] = 50.0;
    wild[3] = -50.0;
    store.upsert(&[3], &wild).unwrap();
    let stats = store.clamp_stats();
    assert_eq!(
        (stats.rows, stats.rows_clamped, stats.components_clamped),
        (3, 1, 2)
    );
    assert_eq!(stats.components, 24);
    let code = store.code(3).unwrap();
    assert_eq!((code[0], code[3]), (255, 0));
    let mut decoded = vec![0.0; d];
    q.decode(code, &mut decoded).unwrap();
    assert!((decoded[0] - q.lower()[0] - 255.0 * q.scale()[0]).abs() < 1e-6);
    assert_eq!(decoded[3], q.lower()[3]);
    assert_eq!(q.clamp_fraction(&wild).unwrap(), 2.0 / 8.0);

    // Drift: many rows outside the range ask for retraining; in-range ones do not.
    assert!(!store.should_retrain());
    let shifted: Vec<f32> = (0..2000 * d).map(|_| rng.random_range(0.5..1.5)).collect();
    let ids: Vec<u64> = (100..2100).collect();
    store.upsert(&ids, &shifted).unwrap();
    assert!(store.should_retrain(), "{:?}", store.clamp_stats());
    // Retraining on the new data is a new store built from the f32 rows.
    let retrained =
        ScalarQuantizer::train(d, Metric::Dot, &shifted, &TrainOptions::default()).unwrap();
    assert!(retrained.clamp_fraction(&shifted).unwrap() < 1e-3);
}

#[test]
fn quantizer_bytes_round_trip_and_hostile_bytes_are_errors() {
    let mut rng = StdRng::seed_from_u64(6);
    for metric in METRICS {
        let d = 13;
        let sample: Vec<f32> = (0..500 * d).map(|_| normal(&mut rng)).collect();
        let q = ScalarQuantizer::train(d, metric, &sample, &TrainOptions { clip: 0.01 }).unwrap();
        let bytes = q.to_bytes();
        let back = ScalarQuantizer::from_bytes(&bytes).unwrap();
        assert_eq!(back, q);
        assert_eq!(back.metric(), metric);

        // Every truncation is an error.
        for len in 0..bytes.len() {
            assert!(
                ScalarQuantizer::from_bytes(&bytes[..len]).is_err(),
                "{len} bytes accepted"
            );
        }
        // Trailing bytes are refused.
        let mut long = bytes.clone();
        long.push(0);
        assert!(ScalarQuantizer::from_bytes(&long).is_err());
        // Every single-byte corruption either fails or yields a valid quantizer: no panic.
        for i in 0..bytes.len() {
            for v in [0u8, 0x7f, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[i] = v;
                if let Ok(q) = ScalarQuantizer::from_bytes(&bad) {
                    assert!(q.lower().iter().all(|x| x.is_finite()));
                    assert!(q.scale().iter().all(|x| x.is_finite() && *x >= 0.0));
                }
            }
        }
    }

    let q = ScalarQuantizer::from_ranges(Metric::Dot, &[0.0, -1.0], &[1.0, 1.0]).unwrap();
    let good = q.to_bytes();
    let corrupt = |at: usize, with: &[u8]| {
        let mut b = good.clone();
        b[at..at + with.len()].copy_from_slice(with);
        ScalarQuantizer::from_bytes(&b)
    };
    assert!(matches!(corrupt(0, b"XXXX"), Err(QuantError::Invalid(_))));
    assert!(matches!(corrupt(4, &[9]), Err(QuantError::Invalid(_))));
    assert!(matches!(corrupt(5, &[3]), Err(QuantError::Invalid(_))));
    assert!(matches!(corrupt(6, &[1]), Err(QuantError::Invalid(_))));
    assert!(matches!(
        corrupt(8, &[0, 0, 0, 0]),
        Err(QuantError::Invalid(_))
    ));
    // A huge claimed dimension is truncated input, not an allocation.
    assert!(matches!(
        corrupt(8, &[0xff, 0xff, 0xff, 0xff]),
        Err(QuantError::Truncated { .. })
    ));
    assert!(corrupt(16, &f32::NAN.to_le_bytes()).is_err());
    assert!(corrupt(24, &f32::INFINITY.to_le_bytes()).is_err());
    assert!(corrupt(24, &(-1.0f32).to_le_bytes()).is_err());
    assert!(corrupt(12, &2.0f32.to_le_bytes()).is_err());
    assert!(matches!(
        ScalarQuantizer::from_bytes(&[]),
        Err(QuantError::Truncated { got: 0, .. })
    ));
}

#[test]
fn bad_input_is_refused_without_changes() {
    let q = ScalarQuantizer::from_ranges(Metric::L2, &[-1.0; 4], &[1.0; 4]).unwrap();
    let mut store = QuantizedRows::new(q.clone());
    store.upsert(&[1], &[0.1, 0.2, 0.3, 0.4]).unwrap();
    let before = store.codes().to_vec();
    assert!(store.upsert(&[2, 3], &[0.0; 7]).is_err());
    assert!(
        store
            .upsert(&[2, 3], &[0.0, 0.0, 0.0, 0.0, f32::NAN, 0.0, 0.0, 0.0])
            .is_err()
    );
    assert_eq!((store.len(), store.codes()), (1, &before[..]));
    assert!(store.scan(&[0.0; 5], 3, None).is_err());
    assert!(
        store
            .scan(&[0.0, f32::INFINITY, 0.0, 0.0], 3, None)
            .is_err()
    );
    assert!(q.prepare(&[0.0; 3]).is_err());
    assert!(q.encode(&[0.0; 4], &mut [0u8; 3]).is_err());
    assert!(quant::rescore(Metric::L2, &[0.0; 4], &[1, 2], &[0.0; 4], 2).is_err());
    assert!(store.rescore(&[0.0; 3], &[1], &[0.0; 3], 1).is_err());
    assert!(ScalarQuantizer::train(0, Metric::Dot, &[], &TrainOptions::default()).is_err());
    assert!(ScalarQuantizer::train(4, Metric::Dot, &[], &TrainOptions::default()).is_err());
    assert!(ScalarQuantizer::train(4, Metric::Dot, &[0.0; 6], &TrainOptions::default()).is_err());
    assert!(
        ScalarQuantizer::train(2, Metric::Dot, &[0.0; 4], &TrainOptions { clip: 0.5 }).is_err()
    );
    assert!(
        ScalarQuantizer::train(2, Metric::Dot, &[0.0, f32::NAN], &TrainOptions::default()).is_err()
    );
    assert_eq!(
        store.scan(&[0.0; 4], 0, None).unwrap(),
        vec![Vec::<Hit>::new()]
    );
}

/// Upserts replace, removals swap the last row in, and a scan over the result equals a scan
/// over a store built from the surviving rows alone; a filter equals leaving rows out.
#[test]
fn upsert_remove_and_filter_keep_the_scan_consistent() {
    let mut rng = StdRng::seed_from_u64(8);
    let d = 21;
    for metric in METRICS {
        let data = Clustered::new(d, 5, 0.5, &mut rng);
        let rows = data.rows(600, &mut rng);
        let q = ScalarQuantizer::train(d, metric, &rows, &TrainOptions::default()).unwrap();
        let ids: Vec<u64> = (0..600).collect();
        let mut store = QuantizedRows::new(q.clone());
        store.upsert(&ids, &rows).unwrap();
        // Replace the first 100 rows with new vectors, remove every third id.
        let replacement = data.rows(100, &mut rng);
        store.upsert(&ids[..100], &replacement).unwrap();
        let gone: Vec<u64> = ids.iter().copied().filter(|i| i % 3 == 0).collect();
        assert_eq!(store.remove(&gone), gone.len());
        assert_eq!(store.remove(&gone), 0);
        assert_eq!(store.len(), 400);
        assert!(!store.contains(3) && store.contains(4));

        let mut fresh = QuantizedRows::new(q.clone());
        for id in (0..600u64).filter(|i| i % 3 != 0) {
            let i = id as usize;
            let row = if i < 100 {
                &replacement[i * d..(i + 1) * d]
            } else {
                &rows[i * d..(i + 1) * d]
            };
            fresh.upsert(&[id], row).unwrap();
        }
        for id in fresh.ids() {
            assert_eq!(store.code(*id), fresh.code(*id));
        }
        let queries = data.rows(4, &mut rng);
        assert_eq!(
            store.scan(&queries, 25, None).unwrap(),
            fresh.scan(&queries, 25, None).unwrap()
        );
        let even = |id: u64| id.is_multiple_of(2);
        let filtered = store.scan(&queries, 25, Some(&even)).unwrap();
        let mut evens = QuantizedRows::new(q);
        for &id in fresh.ids().iter().filter(|&&id| even(id)) {
            let mut row = vec![0.0; d];
            let src = if id < 100 { &replacement } else { &rows };
            row.copy_from_slice(&src[id as usize * d..(id as usize + 1) * d]);
            evens.upsert(&[id], &row).unwrap();
        }
        assert_eq!(filtered, evens.scan(&queries, 25, None).unwrap());
        assert!(filtered.iter().flatten().all(|h| even(h.id)));

        // Asking for more than there are returns them all.
        assert_eq!(store.scan(&queries[..d], 1000, None).unwrap()[0].len(), 400);
    }
}

#[test]
fn equal_scores_come_in_id_order() {
    for metric in METRICS {
        let q = ScalarQuantizer::from_ranges(metric, &[-1.0; 3], &[1.0; 3]).unwrap();
        let mut store = QuantizedRows::new(q);
        store
            .upsert(&[9, 4, 7, 1], &[[0.5, 0.5, 0.0]; 4].concat())
            .unwrap();
        let hits = store.scan(&[1.0, 0.0, 0.0], 3, None).unwrap();
        assert_eq!(ids(&hits[0]), [1, 4, 7]);
        let exact = quant::rescore(metric, &[1.0, 0.0, 0.0], &[9, 4, 7], &[0.5; 9], 2).unwrap();
        assert_eq!(ids(&exact), [4, 7]);
    }
}

/// A prepared query scores a code the same way the scan does (the per-row function a graph
/// index would use).
#[test]
fn per_row_score_equals_the_scan_scores() {
    let mut rng = StdRng::seed_from_u64(9);
    let d = 50;
    for metric in METRICS {
        let rows: Vec<f32> = (0..300 * d).map(|_| normal(&mut rng)).collect();
        let q = ScalarQuantizer::train(d, metric, &rows, &TrainOptions::default()).unwrap();
        let mut store = QuantizedRows::new(q.clone());
        store
            .upsert(&(0..300).collect::<Vec<u64>>(), &rows)
            .unwrap();
        let query: Vec<f32> = (0..d).map(|_| normal(&mut rng)).collect();
        let prepared: PreparedQuery = q.prepare(&query).unwrap();
        assert_eq!(prepared.metric(), metric);
        for hit in &store.scan(&query, 10, None).unwrap()[0] {
            assert_eq!(
                hit.score,
                quant::score(&prepared, store.code(hit.id).unwrap())
            );
        }
    }
}
