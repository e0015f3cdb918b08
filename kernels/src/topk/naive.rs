//! The reference top-k: score every row the obvious way, sort, cut. Slow and plainly right;
//! the fast paths are tested against it.

use super::{Filter, Hit, Metric, normalize};

/// Exact top-k by brute force. `vectors` is `ids.len() × dim`, `queries` is `n × dim`.
pub fn naive_topk(
    metric: Metric,
    dim: usize,
    ids: &[u64],
    vectors: &[f32],
    queries: &[f32],
    k: usize,
    filter: Option<Filter<'_>>,
) -> Vec<Vec<Hit>> {
    let unit = |v: &[f32]| {
        let mut v = v.to_vec();
        normalize(&mut v);
        v
    };
    queries
        .chunks_exact(dim)
        .map(|q| {
            let mut hits: Vec<Hit> = ids
                .iter()
                .zip(vectors.chunks_exact(dim))
                .filter(|(id, _)| filter.is_none_or(|f| f(**id)))
                .map(|(&id, v)| {
                    let score = match metric {
                        Metric::Dot => q.iter().zip(v).map(|(a, b)| a * b).sum(),
                        Metric::Cosine => unit(q).iter().zip(unit(v)).map(|(a, b)| a * b).sum(),
                        Metric::L2 => q.iter().zip(v).map(|(a, b)| (a - b) * (a - b)).sum(),
                    };
                    Hit { id, score }
                })
                .collect();
            hits.sort_by(|a, b| crate::topk::compare(metric, a, b));
            hits.truncate(k);
            hits
        })
        .collect()
}
