//! Exact similarity top-k over a matrix of vectors, on the CPU or on a CUDA GPU.
//!
//! One API for every index: [`VectorIndex`]. An index holds rows of `dim` f32 components, each
//! under a caller-chosen `u64` id, and answers a batch of queries (`n × dim`, row-major) with
//! the `k` best rows for each query. [`ExactIndex`] scans every row (on the device chosen when
//! it is built); [`crate::hnsw::HnswIndex`] answers approximately from a graph.
//!
//! # Scores and order
//! A [`Hit`]'s score is the metric's natural value: the cosine similarity for
//! [`Metric::Cosine`], the inner product for [`Metric::Dot`], and the **squared** Euclidean
//! distance for [`Metric::L2`]. Hits come best first: highest score first for cosine and dot,
//! smallest distance first for L2. Equal scores are ordered by id ascending, so results are
//! deterministic and lists from different partitions merge into the same answer as one scan
//! over all of them (see [`merge`]).

mod cpu;
mod cuda;
mod dot;
mod merge;
mod naive;
pub(crate) mod select;

use std::cmp::Ordering;

pub use cpu::CpuIndex;
pub use cuda::CudaIndex;
pub use dot::{dot, kernel_name, score_tile};
pub use merge::merge;
pub use naive::naive_topk;

use crate::device::{Device, NoGpu};

/// How a query and a row are compared (defined in `arbor-proto`, where the control plane and
/// the gateway also find it).
pub use arbor_proto::Metric;

/// Orders two hits best first under `metric`: by score in the metric's direction, then by id
/// ascending.
pub fn compare(metric: Metric, a: &Hit, b: &Hit) -> Ordering {
    // IEEE comparison, so that -0.0 and 0.0 tie (scores are never NaN: input is checked).
    let by_score = if metric.lower_is_better() {
        a.score.partial_cmp(&b.score)
    } else {
        b.score.partial_cmp(&a.score)
    };
    let by_score = by_score.unwrap_or(Ordering::Equal);
    by_score.then(a.id.cmp(&b.id))
}

/// Prepares a row or query for the scan: cosine normalizes it in place.
pub(crate) fn prepare(metric: Metric, v: &mut [f32]) {
    if metric == Metric::Cosine {
        normalize(v);
    }
}

/// Turns a scan key (higher is better, see [`select::Candidate`]) into the hit's score.
/// For L2 the key is `2 q·v − |v|²`, so the distance is `|q|² − key`.
pub(crate) fn score_from_key(metric: Metric, key: f32, query_sq_norm: f32) -> f32 {
    match metric {
        Metric::Cosine | Metric::Dot => key,
        Metric::L2 => (query_sq_norm - key).max(0.0),
    }
}

/// Scales `v` to unit length; a zero vector stays zero.
pub fn normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// One result: a row's id and its score under the index's metric.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hit {
    pub id: u64,
    pub score: f32,
}

/// What an index occupies, for placement and reporting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    pub host_bytes: usize,
    pub device_bytes: usize,
}

impl MemoryUsage {
    /// The bytes a `std::collections::HashMap` with room for `capacity` entries of
    /// `entry_bytes` each holds: its table has a power of two of buckets, at most 7/8 full,
    /// and one control byte per bucket (so a million entries take two million buckets).
    pub fn hash_map_bytes(capacity: usize, entry_bytes: usize) -> usize {
        if capacity == 0 {
            return 0;
        }
        let buckets = if capacity < 8 {
            if capacity < 4 { 4 } else { 8 }
        } else {
            (capacity * 8 / 7).next_power_of_two()
        };
        buckets * (entry_bytes + 1)
    }
}

/// A metadata filter: a row takes part in a search only when this returns true for its id.
/// It is called from several threads at once.
pub type Filter<'a> = &'a (dyn Fn(u64) -> bool + Sync);

/// Why an index refused a request.
#[derive(Debug, thiserror::Error)]
pub enum TopKError {
    #[error("vector dimension must be at least 1")]
    ZeroDimension,
    #[error(
        "{ids} ids were given with {values} values, which is not {ids} rows of dimension {dim}"
    )]
    RowsMismatch {
        ids: usize,
        values: usize,
        dim: usize,
    },
    #[error("{values} query values are not a whole number of queries of dimension {dim}")]
    RaggedQueries { values: usize, dim: usize },
    #[error("vector {id} has a non-finite component at position {position}")]
    NonFinite { id: u64, position: usize },
    #[error("query {query} has a non-finite component at position {position}")]
    NonFiniteQuery { query: usize, position: usize },
    #[error("vector {id} has a component ({value}) outside the fp16 range kept on the GPU")]
    OutOfHalfRange { id: u64, value: f32 },
    #[error("query {query} has a component ({value}) outside the fp16 range used on the GPU")]
    QueryOutOfHalfRange { query: usize, value: f32 },
    #[error("k = {k} is more than this index supports ({max})")]
    KTooLarge { k: usize, max: usize },
    #[error("the index holds {len} rows, more than it can address ({max})")]
    TooManyRows { len: usize, max: usize },
    #[error("no GPU: {0}")]
    NoGpu(#[from] NoGpu),
    #[error("CUDA failed while {context}: {message}")]
    Cuda {
        context: &'static str,
        message: String,
    },
}

/// The search API every index answers.
pub trait VectorIndex: Send + Sync {
    /// Components per vector.
    fn dim(&self) -> usize;
    /// How rows are scored.
    fn metric(&self) -> Metric;
    /// Rows currently searchable.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Adds rows (`vectors` is `ids.len() × dim`, row-major), replacing any row that already
    /// has one of the ids. Nothing is changed when the input is refused.
    fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), TopKError>;
    /// Removes the rows with these ids; ids not present are ignored. Returns how many went.
    fn remove(&mut self, ids: &[u64]) -> Result<usize, TopKError>;
    /// Makes room for `additional` more rows at once, exactly, so that loading `n` known rows
    /// costs `n` rows of memory rather than the next doubling (a million 384-d rows would
    /// otherwise take up to twice their 1.5 GB). Indexes without preallocation ignore it.
    fn reserve(&mut self, additional: usize) -> Result<(), TopKError> {
        let _ = additional;
        Ok(())
    }
    /// The `k` best rows for each query, best first (see the module docs for the order).
    fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>, TopKError> {
        self.search_filtered(queries, k, None)
    }
    /// Like [`VectorIndex::search`], over only the rows whose id passes `filter`.
    fn search_filtered(
        &self,
        queries: &[f32],
        k: usize,
        filter: Option<Filter<'_>>,
    ) -> Result<Vec<Vec<Hit>>, TopKError>;
    /// Bytes held on the host and on the device.
    fn memory(&self) -> MemoryUsage;
}

/// An exact (brute-force) index on the device chosen when it is built.
pub enum ExactIndex {
    Cpu(CpuIndex),
    Cuda(CudaIndex),
}

impl ExactIndex {
    /// Builds an empty index. `Device::Cuda` fails with an error (never a panic) when this
    /// machine has no usable CUDA driver or GPU; see [`ExactIndex::new_or_cpu`].
    pub fn new(dim: usize, metric: Metric, device: Device) -> Result<Self, TopKError> {
        Ok(match device {
            Device::Cpu => ExactIndex::Cpu(CpuIndex::new(dim, metric)?),
            Device::Cuda(ordinal) => ExactIndex::Cuda(CudaIndex::new(dim, metric, ordinal)?),
        })
    }

    /// Builds on `device`, or on the CPU when the GPU cannot be used (logged as a warning).
    pub fn new_or_cpu(dim: usize, metric: Metric, device: Device) -> Result<Self, TopKError> {
        match Self::new(dim, metric, device) {
            Err(e @ (TopKError::NoGpu(_) | TopKError::Cuda { .. })) => {
                tracing::warn!(%device, error = %e, "exact top-k falls back to the CPU");
                Self::new(dim, metric, Device::Cpu)
            }
            other => other,
        }
    }

    /// Where the scan runs.
    pub fn device(&self) -> Device {
        match self {
            ExactIndex::Cpu(_) => Device::Cpu,
            ExactIndex::Cuda(index) => Device::Cuda(index.ordinal()),
        }
    }

    fn inner(&self) -> &dyn VectorIndex {
        match self {
            ExactIndex::Cpu(index) => index,
            ExactIndex::Cuda(index) => index,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn VectorIndex {
        match self {
            ExactIndex::Cpu(index) => index,
            ExactIndex::Cuda(index) => index,
        }
    }
}

impl VectorIndex for ExactIndex {
    fn dim(&self) -> usize {
        self.inner().dim()
    }
    fn metric(&self) -> Metric {
        self.inner().metric()
    }
    fn len(&self) -> usize {
        self.inner().len()
    }
    fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), TopKError> {
        self.inner_mut().upsert(ids, vectors)
    }
    fn remove(&mut self, ids: &[u64]) -> Result<usize, TopKError> {
        self.inner_mut().remove(ids)
    }
    fn reserve(&mut self, additional: usize) -> Result<(), TopKError> {
        self.inner_mut().reserve(additional)
    }
    fn search_filtered(
        &self,
        queries: &[f32],
        k: usize,
        filter: Option<Filter<'_>>,
    ) -> Result<Vec<Vec<Hit>>, TopKError> {
        self.inner().search_filtered(queries, k, filter)
    }
    fn memory(&self) -> MemoryUsage {
        self.inner().memory()
    }
}

/// Checks a batch of rows for an upsert: its shape and that every component is finite.
pub(crate) fn check_rows(dim: usize, ids: &[u64], vectors: &[f32]) -> Result<(), TopKError> {
    if ids.len().checked_mul(dim) != Some(vectors.len()) {
        return Err(TopKError::RowsMismatch {
            ids: ids.len(),
            values: vectors.len(),
            dim,
        });
    }
    for (&id, row) in ids.iter().zip(vectors.chunks_exact(dim)) {
        if let Some(position) = row.iter().position(|x| !x.is_finite()) {
            return Err(TopKError::NonFinite { id, position });
        }
    }
    Ok(())
}

/// Checks a batch of queries and returns how many there are.
pub(crate) fn check_queries(dim: usize, queries: &[f32]) -> Result<usize, TopKError> {
    if !queries.len().is_multiple_of(dim) {
        return Err(TopKError::RaggedQueries {
            values: queries.len(),
            dim,
        });
    }
    if let Some(bad) = queries.iter().position(|x| !x.is_finite()) {
        return Err(TopKError::NonFiniteQuery {
            query: bad / dim,
            position: bad % dim,
        });
    }
    Ok(queries.len() / dim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_order_is_best_first_then_id() {
        let a = Hit { id: 2, score: 1.0 };
        let b = Hit { id: 1, score: 1.0 };
        let c = Hit { id: 0, score: 0.5 };
        let mut hits = [c, a, b];
        hits.sort_by(|x, y| compare(Metric::Dot, x, y));
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), [1, 2, 0]);
        hits.sort_by(|x, y| compare(Metric::L2, x, y));
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        assert!(matches!(
            check_rows(3, &[1, 2], &[0.0; 5]),
            Err(TopKError::RowsMismatch {
                ids: 2,
                values: 5,
                dim: 3
            })
        ));
        assert!(matches!(
            check_rows(2, &[7, 8], &[0.0, 1.0, f32::NAN, 0.0]),
            Err(TopKError::NonFinite { id: 8, position: 0 })
        ));
        assert!(matches!(
            check_queries(2, &[0.0; 3]),
            Err(TopKError::RaggedQueries { values: 3, dim: 2 })
        ));
        assert!(matches!(
            check_queries(2, &[0.0, 0.0, 1.0, f32::INFINITY]),
            Err(TopKError::NonFiniteQuery {
                query: 1,
                position: 1
            })
        ));
    }

    #[test]
    fn cuda_constructor_errors_without_a_driver_and_falls_back() {
        if crate::device::cuda_driver().is_ok() {
            eprintln!("skipped: a CUDA driver is present, the no-driver path cannot be exercised");
            return;
        }
        assert!(matches!(
            ExactIndex::new(4, Metric::Dot, Device::Cuda(0)),
            Err(TopKError::NoGpu(_))
        ));
        let index = ExactIndex::new_or_cpu(4, Metric::Dot, Device::Cuda(0)).unwrap();
        assert_eq!(index.device(), Device::Cpu);
    }
}
