//! A partition's in-memory index, as its collection asks: the exact scan (on the CPU, or the
//! replica's GPU) or an HNSW graph (on the CPU). Both hold the rows the store holds and answer
//! with the same scores and order (see `arbor_kernels::topk`); HNSW is approximate and walks
//! a filter during the search, falling back to an exact scan of the allowed rows when the
//! walk finds fewer than `k`.

use arbor_kernels::device::Device;
use arbor_kernels::hnsw::{HnswIndex, HnswParams};
use arbor_kernels::topk::{ExactIndex, Filter, Hit, MemoryUsage, Metric, TopKError, VectorIndex};
use arbor_proto::IndexSpec;

/// The index of one partition replica.
#[expect(
    clippy::large_enum_variant,
    reason = "one per partition replica, moved once: its size does not matter"
)]
pub enum PartitionIndex {
    Exact(ExactIndex),
    Hnsw(HnswIndex),
}

impl PartitionIndex {
    /// An empty index of `spec`'s kind. The exact scan runs on `device` (the CPU when that GPU
    /// cannot be used); HNSW always runs on the CPU.
    pub fn new(
        dim: usize,
        metric: Metric,
        device: Device,
        spec: IndexSpec,
    ) -> Result<PartitionIndex, TopKError> {
        Ok(match spec {
            IndexSpec::Exact => PartitionIndex::Exact(ExactIndex::new_or_cpu(dim, metric, device)?),
            IndexSpec::Hnsw(h) => PartitionIndex::Hnsw(HnswIndex::new(
                dim,
                metric,
                HnswParams {
                    m: h.m as usize,
                    ef_construction: h.ef_construction as usize,
                    ef_search: h.ef_search as usize,
                    ..HnswParams::default()
                },
            )?),
        })
    }

    /// Where searches run.
    pub fn device(&self) -> Device {
        match self {
            PartitionIndex::Exact(index) => index.device(),
            PartitionIndex::Hnsw(_) => Device::Cpu,
        }
    }

    /// "exact" or "hnsw", as the partition's stats say it.
    pub fn kind(&self) -> &'static str {
        match self {
            PartitionIndex::Exact(_) => "exact",
            PartitionIndex::Hnsw(_) => "hnsw",
        }
    }

    /// [`VectorIndex::search_filtered`], with `ef` candidates for an HNSW walk instead of the
    /// collection's `ef_search` (an exact scan has no use for it).
    pub fn search_ef(
        &self,
        queries: &[f32],
        k: usize,
        filter: Option<Filter<'_>>,
        ef: Option<usize>,
    ) -> Result<Vec<Vec<Hit>>, TopKError> {
        match self {
            PartitionIndex::Exact(index) => index.search_filtered(queries, k, filter),
            PartitionIndex::Hnsw(index) => index.search_with_ef(queries, k, filter, ef),
        }
    }

    fn inner(&self) -> &dyn VectorIndex {
        match self {
            PartitionIndex::Exact(index) => index,
            PartitionIndex::Hnsw(index) => index,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn VectorIndex {
        match self {
            PartitionIndex::Exact(index) => index,
            PartitionIndex::Hnsw(index) => index,
        }
    }
}

impl VectorIndex for PartitionIndex {
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
