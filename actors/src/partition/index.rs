//! A partition's in-memory index, as its collection asks: the exact scan (on the CPU, or the
//! replica's GPU) or an HNSW graph (on the CPU). Both hold the rows the store holds and answer
//! with the same scores and order (see `arbor_kernels::topk`); HNSW is approximate and walks
//! a filter during the search, falling back to an exact scan of the allowed rows when the
//! walk finds fewer than `k`.

use std::thread::JoinHandle;

use arbor_kernels::device::Device;
use arbor_kernels::hnsw::{HnswIndex, HnswParams};
use arbor_kernels::topk::{ExactIndex, Filter, Hit, MemoryUsage, Metric, TopKError, VectorIndex};
use arbor_proto::{HnswSpec, IndexSpec};

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
            IndexSpec::Hnsw(h) => PartitionIndex::Hnsw(graph(dim, metric, h)?),
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

/// The graph settings of `spec`.
pub fn params(spec: HnswSpec) -> HnswParams {
    HnswParams {
        m: spec.m as usize,
        ef_construction: spec.ef_construction as usize,
        ef_search: spec.ef_search as usize,
        ..HnswParams::default()
    }
}

/// An empty graph of `spec`'s settings.
fn graph(dim: usize, metric: Metric, spec: HnswSpec) -> Result<HnswIndex, TopKError> {
    HnswIndex::new(dim, metric, params(spec))
}

/// An HNSW graph being built on a thread of its own from the rows a partition loaded, while
/// the partition serves from an exact scan. Writes made meanwhile are kept ([`Pending`]) and
/// replayed into the graph before it replaces the scan.
pub struct GraphBuild(JoinHandle<Result<HnswIndex, TopKError>>);

impl GraphBuild {
    /// Starts building the graph of `spec` over these rows.
    pub fn start(
        dim: usize,
        metric: Metric,
        spec: HnswSpec,
        ids: Vec<u64>,
        vectors: Vec<f32>,
    ) -> GraphBuild {
        GraphBuild(std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut graph = graph(dim, metric, spec)?;
            // On the threads of the shared pool: a partition waits for its graph, and the
            // exact scan serving meanwhile uses the same pool only for searches.
            graph.upsert_parallel(&ids, &vectors)?;
            tracing::info!(
                rows = ids.len(),
                seconds = started.elapsed().as_secs_f64(),
                "HNSW graph built"
            );
            Ok(graph)
        }))
    }

    /// The graph, once built.
    pub fn wait(self) -> Result<HnswIndex, String> {
        match self.0.join() {
            Ok(built) => built.map_err(|e| e.to_string()),
            Err(_) => Err("the thread building the HNSW graph panicked".into()),
        }
    }
}

/// A change made to the rows while a graph was being built.
#[derive(Debug)]
pub enum Pending {
    Upsert { ids: Vec<u64>, vectors: Vec<f32> },
    Remove(Vec<u64>),
}

/// `graph` with `pending` replayed into it, in order.
pub fn catch_up(mut graph: HnswIndex, pending: Vec<Pending>) -> Result<HnswIndex, TopKError> {
    for change in pending {
        match change {
            Pending::Upsert { ids, vectors } => graph.upsert(&ids, &vectors)?,
            Pending::Remove(ids) => {
                graph.remove(&ids)?;
            }
        }
    }
    Ok(graph)
}
