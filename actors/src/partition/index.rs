//! A partition's in-memory index, as its collection asks: the exact scan (on the CPU, or the
//! replica's GPU) or an HNSW graph (on the CPU), over f32 rows or int8 codes. Each holds the
//! rows the store holds. The f32 kinds answer with the scores and order of
//! `arbor_kernels::topk`; the int8 kinds answer with approximate scores, and the partition
//! rescores their best candidates with the f32 rows it reads from disk
//! ([`PartitionIndex::rescored`]). HNSW is approximate and walks a filter during the search,
//! falling back to an exact scan of the allowed rows when the walk finds fewer than `k`.

use std::thread::JoinHandle;

use arbor_kernels::device::Device;
use arbor_kernels::hnsw::{HnswIndex, HnswParams, QuantizedHnsw};
use arbor_kernels::quant::{QuantError, QuantizedRows, ScalarQuantizer};
use arbor_kernels::topk::{ExactIndex, Filter, Hit, MemoryUsage, Metric, TopKError, VectorIndex};
use arbor_proto::{HnswSpec, IndexSpec, Quantization};

/// What a collection asks of its partitions' indexes: the search structure and how vectors
/// are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexConfig {
    pub spec: IndexSpec,
    pub quantization: Quantization,
}

impl From<IndexSpec> for IndexConfig {
    fn from(spec: IndexSpec) -> Self {
        IndexConfig {
            spec,
            quantization: Quantization::None,
        }
    }
}

/// Why an index refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    TopK(#[from] TopKError),
    #[error(transparent)]
    Quant(#[from] QuantError),
}

/// The index of one partition replica.
pub enum PartitionIndex {
    /// f32 rows, every one scored.
    Exact(ExactIndex),
    /// An HNSW graph over f32 rows.
    Hnsw(HnswIndex),
    /// int8 codes, every one scored; the best candidates are rescored.
    Codes(QuantizedRows),
    /// An HNSW graph over int8 codes; the best candidates are rescored.
    CodeGraph(QuantizedHnsw),
}

impl PartitionIndex {
    /// An empty f32 index of `spec`'s kind. The exact scan runs on `device` (the CPU when
    /// that GPU cannot be used); HNSW always runs on the CPU. (An int8 index needs a trained
    /// quantizer: see [`PartitionIndex::quantized`].)
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

    /// An empty int8 index whose rows are encoded with `quantizer`: an exact scan of the
    /// codes (a graph over them is built from it, see [`GraphBuild::over_codes`]).
    pub fn quantized(quantizer: ScalarQuantizer) -> PartitionIndex {
        PartitionIndex::Codes(QuantizedRows::new(quantizer))
    }

    /// Where searches run.
    pub fn device(&self) -> Device {
        match self {
            PartitionIndex::Exact(index) => index.device(),
            _ => Device::Cpu,
        }
    }

    /// "exact", "hnsw", "exact+int8" or "hnsw+int8", as the partition's stats say it.
    /// Whether searches walk a graph (which is what a partition saves beside its store).
    pub fn is_graph(&self) -> bool {
        matches!(self, PartitionIndex::Hnsw(_) | PartitionIndex::CodeGraph(_))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            PartitionIndex::Exact(_) => "exact",
            PartitionIndex::Hnsw(_) => "hnsw",
            PartitionIndex::Codes(_) => "exact+int8",
            PartitionIndex::CodeGraph(_) => "hnsw+int8",
        }
    }

    /// Whether hits are approximate candidates the partition must rescore on f32 rows.
    pub fn rescored(&self) -> bool {
        matches!(
            self,
            PartitionIndex::Codes(_) | PartitionIndex::CodeGraph(_)
        )
    }

    /// Whether int8 codes drifted from the quantizer's ranges enough that it should be
    /// trained again (see `arbor_kernels::quant::QuantizedRows::should_retrain`).
    pub fn should_retrain(&self) -> bool {
        match self {
            PartitionIndex::Codes(rows) => rows.should_retrain(),
            PartitionIndex::CodeGraph(graph) => graph.should_retrain(),
            _ => false,
        }
    }

    /// The `k` best rows per query (`n` candidates of approximate score for an int8 index,
    /// see [`PartitionIndex::rescored`]), with `ef` candidates for an HNSW walk instead of
    /// the collection's `ef_search` (an exact scan has no use for it).
    pub fn search_ef(
        &self,
        queries: &[f32],
        k: usize,
        filter: Option<Filter<'_>>,
        ef: Option<usize>,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        Ok(match self {
            PartitionIndex::Exact(index) => index.search_filtered(queries, k, filter)?,
            PartitionIndex::Hnsw(index) => index.search_with_ef(queries, k, filter, ef)?,
            PartitionIndex::Codes(rows) => rows.scan(queries, k, filter)?,
            PartitionIndex::CodeGraph(graph) => graph.search_with_ef(queries, k, filter, ef)?,
        })
    }

    pub fn len(&self) -> usize {
        match self {
            PartitionIndex::Exact(index) => index.len(),
            PartitionIndex::Hnsw(index) => index.len(),
            PartitionIndex::Codes(rows) => rows.len(),
            PartitionIndex::CodeGraph(graph) => graph.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces rows. A graph takes a batch of [`PARALLEL_ROWS`] or more on every
    /// thread of the shared pool, as a build does: a bulk load's batches, and the writes a
    /// restart replays into a saved graph, are inserts one after another otherwise.
    pub fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), IndexError> {
        let parallel = ids.len() >= PARALLEL_ROWS;
        match self {
            PartitionIndex::Exact(index) => index.upsert(ids, vectors)?,
            PartitionIndex::Hnsw(graph) if parallel => graph.upsert_parallel(ids, vectors)?,
            PartitionIndex::Hnsw(graph) => graph.upsert(ids, vectors)?,
            PartitionIndex::Codes(rows) => rows.upsert(ids, vectors)?,
            PartitionIndex::CodeGraph(graph) if parallel => graph.upsert_parallel(ids, vectors)?,
            PartitionIndex::CodeGraph(graph) => graph.upsert(ids, vectors)?,
        }
        Ok(())
    }

    pub fn remove(&mut self, ids: &[u64]) -> Result<usize, IndexError> {
        Ok(match self {
            PartitionIndex::Exact(index) => index.remove(ids)?,
            PartitionIndex::Hnsw(index) => index.remove(ids)?,
            PartitionIndex::Codes(rows) => rows.remove(ids),
            PartitionIndex::CodeGraph(graph) => graph.remove(ids)?,
        })
    }

    /// Makes room for `additional` rows exactly.
    pub fn reserve(&mut self, additional: usize) -> Result<(), IndexError> {
        match self {
            PartitionIndex::Exact(index) => index.reserve(additional)?,
            PartitionIndex::Hnsw(index) => index.reserve(additional)?,
            PartitionIndex::Codes(rows) => rows.reserve(additional),
            PartitionIndex::CodeGraph(graph) => graph.reserve(additional)?,
        }
        Ok(())
    }

    /// What the index holds in memory.
    pub fn memory(&self) -> MemoryUsage {
        match self {
            PartitionIndex::Exact(index) => index.memory(),
            PartitionIndex::Hnsw(index) => index.memory(),
            PartitionIndex::Codes(rows) => rows.memory(),
            PartitionIndex::CodeGraph(graph) => graph.memory(),
        }
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

/// Fewest rows of one write that a graph inserts on several threads (below it, handing the
/// inserts to the pool costs more than it saves).
pub const PARALLEL_ROWS: usize = 256;

/// An empty graph of `spec`'s settings.
fn graph(dim: usize, metric: Metric, spec: HnswSpec) -> Result<HnswIndex, TopKError> {
    HnswIndex::new(dim, metric, params(spec))
}

/// An HNSW graph being built on a thread of its own, while the partition serves from an
/// exact scan (of f32 rows, or of int8 codes). Writes made meanwhile are kept ([`Pending`])
/// and replayed into the graph before it replaces the scan.
pub struct GraphBuild(JoinHandle<Result<PartitionIndex, IndexError>>);

impl GraphBuild {
    /// Starts building the f32 graph of `spec` over these rows.
    pub fn start(
        dim: usize,
        metric: Metric,
        spec: HnswSpec,
        ids: Vec<u64>,
        vectors: Vec<f32>,
    ) -> GraphBuild {
        GraphBuild::run(ids.len(), move || {
            let mut graph = graph(dim, metric, spec)?;
            // On the threads of the shared pool: a partition waits for its graph, and the
            // exact scan serving meanwhile uses the same pool only for searches.
            graph.upsert_parallel(&ids, &vectors)?;
            Ok(PartitionIndex::Hnsw(graph))
        })
    }

    /// Starts building the graph of `spec` over a copy of these codes (a quarter of the f32
    /// rows' size: the copy is what the build costs beside the codes serving meanwhile).
    pub fn over_codes(rows: QuantizedRows, spec: HnswSpec) -> GraphBuild {
        GraphBuild::run(rows.len(), move || {
            let graph = QuantizedHnsw::build_from(&rows, params(spec))?;
            Ok(PartitionIndex::CodeGraph(graph))
        })
    }

    fn run(
        rows: usize,
        build: impl FnOnce() -> Result<PartitionIndex, IndexError> + Send + 'static,
    ) -> GraphBuild {
        GraphBuild(std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let built = build()?;
            tracing::info!(
                rows,
                kind = built.kind(),
                seconds = started.elapsed().as_secs_f64(),
                "HNSW graph built"
            );
            Ok(built)
        }))
    }

    /// The graph, once built.
    pub fn wait(self) -> Result<PartitionIndex, String> {
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

/// `index` with `pending` replayed into it, in order.
pub fn catch_up(
    mut index: PartitionIndex,
    pending: Vec<Pending>,
) -> Result<PartitionIndex, IndexError> {
    for change in pending {
        match change {
            Pending::Upsert { ids, vectors } => index.upsert(&ids, &vectors)?,
            Pending::Remove(ids) => {
                index.remove(&ids)?;
            }
        }
    }
    Ok(index)
}
