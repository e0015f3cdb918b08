//! One vector partition replica: a shard of a collection, durable in redb, searched in memory.
//!
//! Writes go to the [`Store`] first (one fsynced transaction each) and only then to memory, so
//! whatever a caller saw acknowledged is on disk, and memory is always rebuilt from disk on
//! start. Searches run on the collection's [`PartitionIndex`]: an exact scan (CPU, or the
//! replica's GPU) or an HNSW graph, with the metadata filter applied inside the scan or the
//! walk, so a filtered search still returns `k` rows when `k` matching rows exist.
//!
//! Metadata is kept in memory in a compact form ([`metadata::MetadataTable`]: one arena, long
//! strings as hashes) so that filters run inside the scan while a million rows cost tens of
//! MB beside their vectors. Results, and the rare filter memory cannot decide, read the row's
//! metadata from disk.

pub mod filter;
pub mod index;
pub mod messages;
pub mod metadata;
pub mod remote;
pub mod replication;
pub mod rows;
pub mod saved_graph;
pub mod store;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arbor_kernels::device::Device;
use arbor_kernels::quant::{self, QuantizedRows, ScalarQuantizer, TrainOptions};
use arbor_kernels::topk::{Hit, Metric, TopKError};
use arbor_proto::{IndexSpec, Quantization};

pub use filter::{FilterError, MetadataFilter};
use index::Pending;
pub use index::{GraphBuild, IndexConfig, IndexError, PartitionIndex};
pub use messages::{
    MAX_GET_IDS, PartitionAnswer, PartitionFailure, PartitionReply, PartitionRequest,
    PartitionStats, SearchHit, VectorRecord, WriteOp,
};
use metadata::{MetadataTable, Verdict};
pub use rows::{Rows, RowsError};
pub use store::{
    Change, CheckedBatch, History, InvalidInput, Store, StoreError, StoreName, StoredRecord,
    store_path,
};

use crate::wire::MAX_PAYLOAD_BYTES;

/// The most queries one search may carry.
pub const MAX_QUERIES: usize = 1024;
/// The largest `k` a search may ask for (the GPU kernel's limit, so that answers do not
/// depend on where the scan runs).
pub const MAX_K: usize = arbor_proto::MAX_K as usize;
/// Rows handed to the index at a time while loading, so the load never holds a second copy
/// of the whole partition.
const LOAD_CHUNK_ROWS: usize = 4096;
/// fp16's largest finite value: the GPU index keeps rows as fp16.
const HALF_MAX: f32 = 65504.0;
/// Rows an int8 partition holds (as f32) before it trains its quantizer on them. Below it the
/// f32 rows cost little, and a sample this size already sets the ranges well (a later drift
/// retrains, see [`Partition::quantize_if_due`]).
pub const TRAIN_ROWS: usize = 4096;
/// Rows a quantizer is trained on at most, taken evenly through the partition: quant's
/// sample size for ranges clipped at 1 in 10,000.
const SAMPLE_ROWS: usize = 32_768;
/// The fewest rows written between two trainings of a quantizer.
const RETRAIN_MIN_WRITTEN: usize = 1000;
/// Fewest rows written since the last save of a graph that make it worth saving again.
pub const SAVE_AFTER_ROWS: usize = 10_000;

/// Why a partition refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("bad filter: {0}")]
    Filter(#[from] FilterError),
    #[error("bad search: {0}")]
    BadSearch(String),
    #[error("index: {0}")]
    Index(#[from] IndexError),
    /// The write is durable but memory could not follow: memory no longer matches the disk,
    /// and the partition must be loaded again (the actor stops so that it is restarted).
    #[error("write {seq} is durable but could not be applied in memory ({reason}); reload needed")]
    Diverged { seq: u64, reason: String },
}

impl From<TopKError> for PartitionError {
    fn from(e: TopKError) -> Self {
        PartitionError::Index(e.into())
    }
}

impl PartitionError {
    /// True when the partition can no longer be trusted and must be reloaded from disk.
    pub fn is_fatal(&self) -> bool {
        matches!(self, PartitionError::Diverged { .. })
    }
}

/// A write that passed every check, ready to apply.
#[derive(Debug)]
pub enum Prepared {
    Upsert(CheckedBatch),
    Delete(Vec<u64>),
}

/// A write on disk whose in-memory side (index, metadata) is not applied yet: what
/// [`Partition::persist`] returns and [`Partition::reflect_durable`] takes. A follower
/// acknowledges a write once it is durable, then updates its index (holding the partition
/// all along, so no search sees the gap): a graph insert of a large batch on a busy node
/// would otherwise outlast the primary's write deadline, and drop an intact follower from
/// the in-sync set.
#[derive(Debug)]
#[must_use = "the write is on disk but not yet in memory: hand it to reflect_durable"]
pub struct Durable {
    seq: u64,
    /// Rows stored, or rows that were there to remove.
    count: usize,
    write: Prepared,
}

impl Durable {
    /// The write's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// A durable write's sequence number and how many rows it stored or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteAck {
    pub seq: u64,
    pub count: usize,
}

/// One partition replica: its durable store, its index and its metadata.
pub struct Partition {
    store: Store,
    index: PartitionIndex,
    metadata: MetadataTable,
    dim: usize,
    metric: Metric,
    /// What the collection asks of the index.
    config: IndexConfig,
    /// Rows written since the int8 quantizer was last trained.
    written_since_training: usize,
    /// The HNSW graph being built in the background, until [`Partition::take_build`].
    build: Option<GraphBuild>,
    /// While a graph is being built: the changes made since its rows were taken (`None`:
    /// no graph is being built).
    pending: Option<Vec<Pending>>,
    /// Memory still matches the disk: false once a durable write could not be applied in
    /// memory ([`PartitionError::Diverged`]), after which the graph is never saved.
    intact: bool,
    /// Rows written or removed since the graph was last saved: what a restart would replay
    /// into the saved graph (see [`Partition::save_due`]).
    unsaved: AtomicUsize,
    /// A save of the graph was handed to a thread and has not ended.
    saving: AtomicBool,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("store", &self.store)
            .field("rows", &self.index.len())
            .field("device", &self.index.device())
            .finish()
    }
}

impl Partition {
    /// Opens the store at `path` (creating it when new) and loads every row into an index as
    /// `config` asks, on `device` for an exact f32 scan (the CPU when that GPU cannot be used).
    pub fn open(
        path: &Path,
        dim: usize,
        metric: Metric,
        device: Device,
        config: impl Into<IndexConfig>,
    ) -> Result<Self, PartitionError> {
        let config = config.into();
        let int8 = config.quantization == Quantization::Int8;
        let store = Store::open(path, dim, metric)?;
        // Room for exactly the rows stored: growth by doubling would cost up to twice the
        // vectors' memory for a large partition.
        let rows = usize::try_from(store.row_count()?).unwrap_or(usize::MAX);
        // A graph saved beside the store (by the last stop, or once it was built) serves at
        // once, with the writes since replayed into it.
        let saved = match config.spec {
            IndexSpec::Hnsw(h) if rows > 0 => {
                let path = saved_graph::path_of(store.path());
                match saved_graph::load(&path, &store, index::params(h), int8, rows) {
                    Ok(graph) => graph,
                    Err(why) => {
                        tracing::warn!(
                            file = %path.display(),
                            "the saved HNSW graph is not used ({why}); building it again"
                        );
                        saved_graph::discard(&path);
                        None
                    }
                }
            }
            _ => None,
        };
        let loaded = saved.is_some();
        // An int8 partition trains its quantizer on its rows once it has enough of them;
        // until then it holds them as f32 and scans them exactly.
        let quantizer = match int8 && !loaded && rows >= TRAIN_ROWS {
            true => Some(train(&store, rows)?),
            false => None,
        };
        // A graph of many f32 rows takes a while: an exact scan serves until it is built (on
        // a thread of its own, from a copy of the rows), so the partition is up as soon as
        // its rows are read. (An int8 graph is built from the codes, below.)
        let graph = match config.spec {
            IndexSpec::Hnsw(h) if rows > 0 && !loaded && !int8 => Some(h),
            _ => None,
        };
        let mut index = match (saved, quantizer) {
            (Some(saved), _) => saved,
            (None, Some(quantizer)) => PartitionIndex::quantized(quantizer),
            (None, None) if graph.is_some() || int8 => {
                PartitionIndex::new(dim, metric, device, IndexSpec::Exact)?
            }
            (None, None) => PartitionIndex::new(dim, metric, device, config.spec)?,
        };
        let mut copy = graph.map(|_| (Vec::with_capacity(rows), Vec::with_capacity(rows * dim)));
        let mut metadata = MetadataTable::default();
        if !loaded {
            index.reserve(rows)?;
        }
        metadata.reserve(rows);
        let mut ids = Vec::with_capacity(LOAD_CHUNK_ROWS);
        let mut vectors = Vec::with_capacity(LOAD_CHUNK_ROWS * dim);
        store.for_each(|r: StoredRecord| {
            let map =
                store::parse_metadata(r.id, &r.metadata).map_err(|e| StoreError::Corrupt {
                    path: store.path().to_string(),
                    detail: e.to_string(),
                })?;
            metadata.insert(r.id, &map);
            ids.push(r.id);
            vectors.extend_from_slice(&r.vector);
            if let Some((all_ids, all_vectors)) = &mut copy {
                all_ids.push(r.id);
                all_vectors.extend_from_slice(&r.vector);
            }
            if ids.len() == LOAD_CHUNK_ROWS {
                if !loaded {
                    index.upsert(&ids, &vectors)?;
                }
                ids.clear();
                vectors.clear();
            }
            Ok::<_, PartitionError>(())
        })?;
        if !loaded {
            index.upsert(&ids, &vectors)?;
        }
        metadata.shrink_to_fit();
        let build = match (&index, config.spec, graph.zip(copy)) {
            (_, _, Some((h, (ids, vectors)))) => {
                Some(GraphBuild::start(dim, metric, h, ids, vectors))
            }
            (PartitionIndex::Codes(codes), IndexSpec::Hnsw(h), None) => {
                Some(GraphBuild::over_codes(codes.clone(), h))
            }
            _ => None,
        };
        Ok(Partition {
            store,
            index,
            metadata,
            dim,
            metric,
            config,
            written_since_training: 0,
            pending: build.as_ref().map(|_| Vec::new()),
            build,
            intact: true,
            unsaved: AtomicUsize::new(0),
            saving: AtomicBool::new(false),
        })
    }

    /// The graph being built in the background, to wait for and hand to
    /// [`Partition::adopt`] (`None`: none is, or it was taken already). A build may start
    /// after a write too (an int8 partition that trained its quantizer), so a caller that
    /// writes looks for one after each write.
    pub fn take_build(&mut self) -> Option<GraphBuild> {
        self.build.take()
    }

    /// Replaces the exact scan with `built`, once the changes made while it was built are in
    /// it too. A graph that failed leaves the exact scan serving (and says why in the log).
    pub fn adopt(&mut self, built: Result<PartitionIndex, String>) {
        let pending = self.pending.take().unwrap_or_default();
        let caught_up =
            built.and_then(|graph| index::catch_up(graph, pending).map_err(|e| e.to_string()));
        match caught_up {
            Ok(graph) => self.index = graph,
            Err(e) => tracing::error!(
                error = %e,
                "the HNSW graph could not be built; the partition keeps scanning exactly"
            ),
        }
    }

    /// Saves the HNSW graph beside the store, so that the next open loads it instead of
    /// building it (see [`saved_graph`]); `false` when the index is not a graph, or memory
    /// may no longer match the disk.
    pub fn save_graph(&self) -> std::io::Result<bool> {
        // One save at a time: saves run under a read lock, and writes wait for it, so one
        // already under way is saving this very state.
        if !self.intact || self.saving.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        let path = saved_graph::path_of(self.store.path());
        let saved = saved_graph::save(&path, &self.index, self.store.seq(), self.store.history());
        if !matches!(saved, Ok(false)) {
            // Saved, or failed: tried again after as many writes again.
            self.unsaved.store(0, Ordering::Relaxed);
        }
        self.saving.store(false, Ordering::Release);
        saved
    }

    /// Whether the graph should be saved again: as many rows were written since the last
    /// save as it held then (and at least [`SAVE_AFTER_ROWS`]), and no save is under way. A
    /// graph grows by inserts after its build, and a restart replays into the saved graph
    /// every write since, one insert at a time before the replica serves; saving each time
    /// the graph doubled keeps that replay under half the rows (a crash included), and the
    /// bytes written for saves under twice the final file.
    pub fn save_due(&self) -> bool {
        let unsaved = self.unsaved.load(Ordering::Relaxed);
        let saved_rows = self.index.len().saturating_sub(unsaved);
        self.intact
            && self.pending.is_none()
            && self.index.is_graph()
            && unsaved >= saved_rows.max(SAVE_AFTER_ROWS)
            && !self.saving.load(Ordering::Acquire)
    }

    /// Waits for the graph being built, if any, searches on it from now on, and saves it.
    pub fn wait_for_index(&mut self) {
        if let Some(build) = self.take_build() {
            self.adopt(build.wait());
            if let Err(e) = self.save_graph() {
                tracing::warn!(error = %e, "the HNSW graph could not be saved");
            }
        }
    }

    /// An int8 partition's quantizer, trained once it holds [`TRAIN_ROWS`] rows, and again
    /// when the rows written since drifted out of its ranges (see
    /// [`PartitionIndex::should_retrain`]): the codes are encoded again from the f32 rows on
    /// disk, and a graph is built again over them in the background. Memory still matches
    /// the disk when this fails (the old index stays), so a failure is only logged.
    fn quantize_if_due(&mut self, written: usize) {
        if self.config.quantization != Quantization::Int8 || self.pending.is_some() {
            return;
        }
        self.written_since_training = self.written_since_training.saturating_add(written);
        let rows = self.index.len();
        let due = if self.index.rescored() {
            // Retraining costs a read of every row: at most once per quarter of them written.
            self.index.should_retrain()
                && self.written_since_training >= (rows / 4).max(RETRAIN_MIN_WRITTEN)
        } else {
            rows >= TRAIN_ROWS
        };
        if !due {
            return;
        }
        let started = std::time::Instant::now();
        match encode_all(&self.store, rows) {
            Ok(codes) if codes.len() == rows => {
                tracing::info!(
                    store = %self.store.path(),
                    rows,
                    retrained = self.index.rescored(),
                    seconds = started.elapsed().as_secs_f64(),
                    "int8 quantizer trained; the partition now holds codes"
                );
                if let IndexSpec::Hnsw(h) = self.config.spec {
                    self.build = Some(GraphBuild::over_codes(codes.clone(), h));
                    self.pending = Some(Vec::new());
                }
                self.index = PartitionIndex::Codes(codes);
                self.written_since_training = 0;
            }
            Ok(codes) => tracing::error!(
                store = %self.store.path(),
                memory = rows,
                disk = codes.len(),
                "the int8 codes were not adopted: the store and memory hold different counts"
            ),
            Err(e) => tracing::warn!(
                store = %self.store.path(),
                error = %e,
                "the int8 quantizer could not be trained; the partition goes on as it was"
            ),
        }
    }

    /// [`PartitionIndex::upsert`] on the index, kept for the graph being built too.
    fn index_upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), IndexError> {
        if let Err(e) = self.index.upsert(ids, vectors) {
            self.intact = false;
            return Err(e);
        }
        if let Some(pending) = &mut self.pending
            && !ids.is_empty()
        {
            pending.push(Pending::Upsert {
                ids: ids.to_vec(),
                vectors: vectors.to_vec(),
            });
        }
        Ok(())
    }

    /// [`PartitionIndex::remove`] on the index, kept for the graph being built too.
    fn index_remove(&mut self, ids: &[u64]) -> Result<usize, IndexError> {
        let removed = match self.index.remove(ids) {
            Ok(removed) => removed,
            Err(e) => {
                self.intact = false;
                return Err(e);
            }
        };
        if let Some(pending) = &mut self.pending
            && !ids.is_empty()
        {
            pending.push(Pending::Remove(ids.to_vec()));
        }
        Ok(removed)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    pub fn device(&self) -> Device {
        self.index.device()
    }

    /// Rows stored.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The sequence number of the last durable write.
    pub fn seq(&self) -> u64 {
        self.store.seq()
    }

    /// The epochs this replica holds writes of (see [`replication`]).
    pub fn history(&self) -> &History {
        self.store.history()
    }

    /// Whether the file was created when this partition opened it.
    pub fn created(&self) -> bool {
        self.store.created()
    }

    /// Checks a write without doing it: what would refuse it refuses it here, before any
    /// replica is asked to store it. The checked form is what [`Partition::apply`] takes, so
    /// nothing is parsed twice.
    pub fn prepare(&self, op: &WriteOp) -> Result<Prepared, PartitionError> {
        match op {
            WriteOp::Upsert(records) => {
                let batch = CheckedBatch::new(self.dim, records)?;
                self.check_half_range(&batch)?;
                Ok(Prepared::Upsert(batch))
            }
            WriteOp::Delete(ids) => {
                if ids.len() > store::MAX_DELETE_IDS {
                    return Err(InvalidInput::TooManyIds {
                        ids: ids.len(),
                        max: store::MAX_DELETE_IDS,
                    }
                    .into());
                }
                Ok(Prepared::Delete(ids.clone()))
            }
        }
    }

    /// Applies one write as the next sequence number, made in `epoch`.
    pub fn write(&mut self, op: WriteOp, epoch: u64) -> Result<WriteAck, PartitionError> {
        let prepared = self.prepare(&op)?;
        self.apply(prepared, epoch)
    }

    /// Applies a prepared write as the next sequence number, made in `epoch`.
    pub fn apply(&mut self, write: Prepared, epoch: u64) -> Result<WriteAck, PartitionError> {
        let durable = self.persist(write, epoch)?;
        self.reflect_durable(durable)
    }

    /// Makes a prepared write durable as the next sequence number, made in `epoch`; memory
    /// does not have it until [`Partition::reflect_durable`], which must come next.
    pub fn persist(&mut self, write: Prepared, epoch: u64) -> Result<Durable, PartitionError> {
        let (seq, count) = match &write {
            Prepared::Upsert(batch) => (self.store.upsert(batch, epoch)?, batch.len()),
            Prepared::Delete(ids) => self.store.delete(ids, epoch)?,
        };
        Ok(Durable { seq, count, write })
    }

    /// Applies a durable write to the index and the metadata. An error means memory no
    /// longer matches the disk ([`PartitionError::Diverged`]).
    pub fn reflect_durable(&mut self, durable: Durable) -> Result<WriteAck, PartitionError> {
        let Durable { seq, count, write } = durable;
        self.unsaved.fetch_add(count, Ordering::Relaxed);
        let diverged = |e: IndexError| PartitionError::Diverged {
            seq,
            reason: e.to_string(),
        };
        match write {
            Prepared::Upsert(batch) => {
                self.index_upsert(batch.ids(), batch.vectors())
                    .map_err(diverged)?;
                for (id, map) in batch.into_metadata() {
                    self.metadata.insert(id, &map);
                }
                self.quantize_if_due(count);
                Ok(WriteAck { seq, count })
            }
            Prepared::Delete(ids) => {
                self.index_remove(&ids).map_err(diverged)?;
                for &id in &ids {
                    self.metadata.remove(id);
                }
                Ok(WriteAck { seq, count })
            }
        }
    }

    /// Stores rows (replacing rows with the same ids): checked, made durable, then searchable.
    pub fn upsert(
        &mut self,
        records: Vec<VectorRecord>,
        epoch: u64,
    ) -> Result<WriteAck, PartitionError> {
        // A partition's dimension is at most `store::MAX_DIM`.
        let mut rows = Rows::empty(self.dim as u32);
        for r in records {
            let (id, got, dim) = (r.id, r.vector.len(), self.dim);
            rows.push(id, &r.vector, r.metadata)
                .map_err(|_| InvalidInput::WrongDimension { id, got, dim })?;
        }
        self.write(WriteOp::Upsert(rows), epoch)
    }

    /// Removes rows by id (absent ids are fine): made durable, then gone from searches.
    pub fn delete(&mut self, ids: &[u64], epoch: u64) -> Result<WriteAck, PartitionError> {
        self.apply(Prepared::Delete(ids.to_vec()), epoch)
    }

    /// Installs changes copied from the primary (see [`Store::install`]): durable first, then
    /// in memory.
    pub fn install(
        &mut self,
        changes: &[Change],
        seq: u64,
        history: &[(u64, u64)],
    ) -> Result<(), PartitionError> {
        let done = self.store.install(changes, seq, history)?;
        self.reflect(done, seq)
    }

    /// The in-memory side of rows installed in the store (`None`: gone).
    fn reflect(
        &mut self,
        done: Vec<(u64, Option<StoredRecord>)>,
        seq: u64,
    ) -> Result<(), PartitionError> {
        let diverged = |reason: String| PartitionError::Diverged { seq, reason };
        let (mut ids, mut vectors, mut gone) = (Vec::new(), Vec::new(), Vec::new());
        for (id, row) in done {
            match row {
                Some(r) => {
                    let map = match store::parse_metadata(id, &r.metadata) {
                        Ok(map) => map,
                        Err(e) => {
                            self.intact = false;
                            return Err(diverged(e.to_string()));
                        }
                    };
                    self.metadata.insert(id, &map);
                    ids.push(id);
                    vectors.extend_from_slice(&r.vector);
                }
                None => {
                    self.metadata.remove(id);
                    gone.push(id);
                }
            }
        }
        self.unsaved
            .fetch_add(ids.len() + gone.len(), Ordering::Relaxed);
        self.index_upsert(&ids, &vectors)
            .and_then(|()| self.index_remove(&gone).map(|_| ()))
            .map_err(|e| diverged(e.to_string()))?;
        self.quantize_if_due(ids.len());
        Ok(())
    }

    /// Forgets every row (see [`Store::reset`]).
    pub fn reset(&mut self) -> Result<(), PartitionError> {
        let ids = self.store.reset()?;
        self.index_remove(&ids)
            .map_err(|e| PartitionError::Diverged {
                seq: 0,
                reason: e.to_string(),
            })?;
        for id in ids {
            self.metadata.remove(id);
        }
        Ok(())
    }

    /// See [`Store::changes_after`].
    pub fn changes_after(
        &self,
        after: store::Position,
        limit: usize,
        max_bytes: usize,
    ) -> Result<store::ChangesPage, PartitionError> {
        Ok(self.store.changes_after(after, limit, max_bytes)?)
    }

    /// Stored rows with id > `after` (all when `None`), in id order: at most `limit` and about
    /// `max_bytes` of them; the id to read after next (`None`: the end).
    pub fn rows_after(
        &self,
        after: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Change>, Option<u64>), PartitionError> {
        let start = match after {
            None => 0,
            Some(a) => match a.checked_add(1) {
                Some(s) => s,
                None => return Ok((Vec::new(), None)),
            },
        };
        let (rows, more) = self.store.scan(start..=u64::MAX, limit, max_bytes)?;
        let next = if more {
            rows.last().map(|r| r.id)
        } else {
            None
        };
        let rows = rows
            .into_iter()
            .map(|r| Change::Row {
                seq: r.seq,
                record: VectorRecord {
                    id: r.id,
                    vector: r.vector,
                    metadata: r.metadata,
                },
            })
            .collect();
        Ok((rows, next))
    }

    /// See [`Store::tombstones_after`].
    pub fn tombstones_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<store::TombstonesPage, PartitionError> {
        Ok(self.store.tombstones_after(after, limit)?)
    }

    /// See [`Store::versions`].
    pub fn versions(&self, ids: &[u64]) -> Result<Vec<Change>, PartitionError> {
        Ok(self.store.versions(ids)?)
    }

    /// See [`Store::written_after`].
    pub fn written_after(&self, seq: u64) -> Result<Vec<u64>, PartitionError> {
        Ok(self.store.written_after(seq)?)
    }

    /// The GPU keeps rows as fp16: refuse, before anything is written, a row it could not
    /// hold (cosine rows are normalized first, so they always fit).
    fn check_half_range(&self, batch: &CheckedBatch) -> Result<(), InvalidInput> {
        if self.index.device() == Device::Cpu || self.metric == Metric::Cosine {
            return Ok(());
        }
        for (&id, row) in batch
            .ids()
            .iter()
            .zip(batch.vectors().chunks_exact(self.dim))
        {
            if let Some(&value) = row.iter().find(|x| x.abs() > HALF_MAX) {
                return Err(InvalidInput::OutOfHalfRange { id, value });
            }
        }
        Ok(())
    }

    /// The `k` best rows for each query, best first, among the rows that pass `filter`.
    pub fn search(
        &self,
        queries: &[Vec<f32>],
        k: usize,
        filter: Option<&MetadataFilter>,
    ) -> Result<Vec<Vec<SearchHit>>, PartitionError> {
        self.search_ef(queries, k, filter, None)
    }

    /// [`Partition::search`] with `ef` candidates for an HNSW walk instead of the
    /// collection's `ef_search` (ignored by an exact scan).
    pub fn search_ef(
        &self,
        queries: &[Vec<f32>],
        k: usize,
        filter: Option<&MetadataFilter>,
        ef: Option<usize>,
    ) -> Result<Vec<Vec<SearchHit>>, PartitionError> {
        if let Some(ef) = ef
            && !arbor_proto::index::EF_RANGE.contains(&u32::try_from(ef).unwrap_or(u32::MAX))
        {
            return Err(PartitionError::BadSearch(format!(
                "ef = {ef}; it must be in {}..={}",
                arbor_proto::index::EF_RANGE.start(),
                arbor_proto::index::EF_RANGE.end()
            )));
        }
        if queries.len() > MAX_QUERIES {
            return Err(PartitionError::BadSearch(format!(
                "{} queries in one search; at most {MAX_QUERIES} are allowed",
                queries.len()
            )));
        }
        if k > MAX_K {
            return Err(PartitionError::BadSearch(format!(
                "k = {k}; at most {MAX_K} is allowed"
            )));
        }
        let mut flat = Vec::with_capacity(queries.len() * self.dim);
        for (i, q) in queries.iter().enumerate() {
            if q.len() != self.dim {
                return Err(PartitionError::BadSearch(format!(
                    "query {i} has {} components; this partition's dimension is {}",
                    q.len(),
                    self.dim
                )));
            }
            if let Some(position) = q.iter().position(|x| !x.is_finite()) {
                return Err(PartitionError::BadSearch(format!(
                    "query {i} has a non-finite component at position {position}"
                )));
            }
            flat.extend_from_slice(q);
        }
        if let Some(f) = filter {
            f.validate()?;
        }
        if k == 0 || queries.is_empty() {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        // Codes give approximate scores: more candidates are taken, and rescored on f32.
        let n = match self.index.rescored() {
            true => quant::candidates(k),
            false => k,
        };
        let found = match filter {
            None => self.index.search_ef(&flat, n, None, ef)?,
            Some(f) => {
                let compiled = self.metadata.compile(f);
                let pass = |id: u64| match self.metadata.verdict(id, &compiled) {
                    Verdict::Yes => true,
                    Verdict::No => false,
                    Verdict::Check => self.matches_on_disk(id, f),
                };
                self.index.search_ef(&flat, n, Some(&pass), ef)?
            }
        };
        let found = match self.index.rescored() {
            true => self.rescore(&flat, found, k)?,
            false => found,
        };
        self.hits(found)
    }

    /// The best `k` of each query's candidates by their exact scores, from the f32 rows read
    /// from disk (one read transaction for all of them).
    fn rescore(
        &self,
        queries: &[f32],
        found: Vec<Vec<Hit>>,
        k: usize,
    ) -> Result<Vec<Vec<Hit>>, PartitionError> {
        let ids: Vec<u64> = found.iter().flatten().map(|h| h.id).collect();
        let rows = self.store.get(&ids)?;
        let at: std::collections::HashMap<u64, usize> =
            rows.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
        let mut out = Vec::with_capacity(found.len());
        let (mut ids, mut vectors) = (Vec::new(), Vec::new());
        for (query, candidates) in queries.chunks_exact(self.dim).zip(found) {
            ids.clear();
            vectors.clear();
            for hit in candidates {
                // A candidate gone from disk is gone for good (memory follows the disk).
                if let Some(&i) = at.get(&hit.id) {
                    ids.push(hit.id);
                    vectors.extend_from_slice(&rows[i].vector);
                }
            }
            let best = quant::rescore(self.metric, query, &ids, &vectors, k)
                .map_err(|e| PartitionError::Index(e.into()))?;
            out.push(best);
        }
        Ok(out)
    }

    /// Decides a filter memory could not (a long string's hash or a nested value matched)
    /// from the row's metadata on disk. A row that cannot be read is left out, and logged.
    fn matches_on_disk(&self, id: u64, filter: &MetadataFilter) -> bool {
        let text = match self.store.metadata_of(&[id]) {
            Ok(mut texts) => texts.pop().flatten(),
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot read a row's metadata to filter it");
                None
            }
        };
        text.and_then(|t| store::parse_metadata(id, &t).ok())
            .is_some_and(|map| filter.matches(&map))
    }

    /// Attaches metadata, read from disk, to hits, refusing an answer too large to travel.
    fn hits(&self, found: Vec<Vec<Hit>>) -> Result<Vec<Vec<SearchHit>>, PartitionError> {
        let ids: Vec<u64> = found.iter().flatten().map(|h| h.id).collect();
        let mut texts = self.store.metadata_of(&ids)?.into_iter();
        let mut bytes = 0usize;
        let mut out = Vec::with_capacity(found.len());
        for list in found {
            let mut hits = Vec::with_capacity(list.len());
            for Hit { id, score } in list {
                let metadata = texts.next().flatten().unwrap_or_default();
                bytes += metadata.len() + 24;
                hits.push(SearchHit {
                    id,
                    score,
                    metadata,
                });
            }
            out.push(hits);
        }
        // Leave room for the envelope; a remote caller could not decode more.
        if bytes > MAX_PAYLOAD_BYTES - 64 * 1024 {
            return Err(PartitionError::BadSearch(format!(
                "the answer would be about {bytes} bytes, over the {MAX_PAYLOAD_BYTES}-byte \
                 message limit: ask for fewer queries or a smaller k"
            )));
        }
        Ok(out)
    }

    /// What the partition holds and what it costs.
    pub fn stats(&self) -> PartitionStats {
        let memory = self.index.memory();
        PartitionStats {
            count: self.index.len() as u64,
            dim: u32::try_from(self.dim).unwrap_or(u32::MAX),
            metric: self.metric,
            device: self.index.device().to_string(),
            index: self.index.kind().into(),
            index_building: self.pending.is_some(),
            host_bytes: memory.host_bytes as u64,
            device_bytes: memory.device_bytes as u64,
            metadata_bytes: self.metadata.bytes() as u64,
            seq: self.store.seq(),
        }
    }

    /// The stored rows with these ids, read from disk in the order asked; ids not stored are
    /// left out.
    pub fn get(&self, ids: &[u64]) -> Result<Vec<VectorRecord>, PartitionError> {
        if ids.len() > MAX_GET_IDS {
            return Err(PartitionError::BadSearch(format!(
                "{} ids in one get; at most {MAX_GET_IDS} are allowed",
                ids.len()
            )));
        }
        Ok(self
            .store
            .get(ids)?
            .into_iter()
            .map(|r| VectorRecord {
                id: r.id,
                vector: r.vector,
                metadata: r.metadata,
            })
            .collect())
    }

    /// The store's file, as logs name the partition.
    pub fn store_path(&self) -> &str {
        self.store.path()
    }

    /// What the collection asks of this partition's index.
    pub fn index_config(&self) -> IndexConfig {
        self.config
    }

    /// Every stored row, read from disk (for checks and, later, for rebuilding a replica).
    pub fn stored(&self) -> Result<Vec<StoredRecord>, PartitionError> {
        Ok(self.store.load_all()?)
    }
}

/// A quantizer trained on up to [`SAMPLE_ROWS`] of the store's `rows` rows, taken evenly
/// through it (in the order they were written).
fn train(store: &Store, rows: usize) -> Result<ScalarQuantizer, PartitionError> {
    let step = rows.div_ceil(SAMPLE_ROWS).max(1);
    let mut sample = Vec::with_capacity(rows.min(SAMPLE_ROWS) * store.dim());
    let mut i = 0usize;
    store.for_each(|r: StoredRecord| {
        if i.is_multiple_of(step) {
            sample.extend_from_slice(&r.vector);
        }
        i += 1;
        Ok::<_, PartitionError>(())
    })?;
    if sample.is_empty() {
        return Err(PartitionError::Index(quant::QuantError::EmptySample.into()));
    }
    ScalarQuantizer::train(
        store.dim(),
        store.metric(),
        &sample,
        &TrainOptions::default(),
    )
    .map_err(|e| PartitionError::Index(e.into()))
}

/// The codes of every stored row, under a quantizer trained on them.
fn encode_all(store: &Store, rows: usize) -> Result<QuantizedRows, PartitionError> {
    let mut codes = QuantizedRows::new(train(store, rows)?);
    codes.reserve(rows);
    let dim = store.dim();
    let mut ids = Vec::with_capacity(LOAD_CHUNK_ROWS);
    let mut vectors = Vec::with_capacity(LOAD_CHUNK_ROWS * dim);
    let flush = |ids: &mut Vec<u64>, vectors: &mut Vec<f32>, codes: &mut QuantizedRows| {
        let done = codes.upsert(ids, vectors);
        ids.clear();
        vectors.clear();
        done.map_err(|e| PartitionError::Index(e.into()))
    };
    store.for_each(|r: StoredRecord| {
        ids.push(r.id);
        vectors.extend_from_slice(&r.vector);
        if ids.len() == LOAD_CHUNK_ROWS {
            flush(&mut ids, &mut vectors, &mut codes)?;
        }
        Ok::<_, PartitionError>(())
    })?;
    flush(&mut ids, &mut vectors, &mut codes)?;
    Ok(codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_name(partition: u32) -> StoreName {
        StoreName {
            collection: "c".into(),
            incarnation: 1,
            partition,
            generation: 1,
        }
    }
    use serde_json::{Value, json};

    fn rec(id: u64, vector: Vec<f32>, metadata: Value) -> VectorRecord {
        VectorRecord {
            id,
            vector,
            metadata: metadata.to_string(),
        }
    }

    #[test]
    fn write_search_filter_delete_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), &test_name(0));
        let mut p = Partition::open(&path, 2, Metric::Dot, Device::Cpu, IndexSpec::Exact).unwrap();
        let ack = p
            .upsert(
                vec![
                    rec(1, vec![1.0, 0.0], json!({"lang": "en", "page": 1})),
                    rec(2, vec![0.9, 0.1], json!({"lang": "fr", "page": 2})),
                    rec(3, vec![0.5, 0.5], json!({"lang": "en", "page": 3})),
                ],
                1,
            )
            .unwrap();
        assert_eq!(ack, WriteAck { seq: 1, count: 3 });
        let q = vec![vec![1.0, 0.0]];
        let hits = p.search(&q, 2, None).unwrap();
        assert_eq!(hits[0].iter().map(|h| h.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(hits[0][0].metadata, r#"{"lang":"en","page":1}"#);
        let en = MetadataFilter::parse(r#"{"op":"equal","key":"lang","value":"en"}"#).unwrap();
        let hits = p.search(&q, 2, Some(&en)).unwrap();
        assert_eq!(hits[0].iter().map(|h| h.id).collect::<Vec<_>>(), [1, 3]);
        let got = p.get(&[3, 99, 2]).unwrap();
        assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 2]);
        assert_eq!(got[0].vector, [0.5, 0.5]);
        assert_eq!(got[0].metadata, r#"{"lang":"en","page":3}"#);
        assert!(p.get(&vec![1; MAX_GET_IDS + 1]).is_err());
        assert_eq!(p.delete(&[1], 1).unwrap(), WriteAck { seq: 2, count: 1 });
        let hits = p.search(&q, 2, Some(&en)).unwrap();
        assert_eq!(hits[0].iter().map(|h| h.id).collect::<Vec<_>>(), [3]);
        let before = p.stats();
        assert!(before.metadata_bytes > 0);
        drop(p);
        let p = Partition::open(&path, 2, Metric::Dot, Device::Cpu, IndexSpec::Exact).unwrap();
        // Byte counts follow allocation history (capacities), so only the contents compare.
        let after = p.stats();
        assert_eq!(
            (after.count, after.seq, after.dim),
            (before.count, before.seq, before.dim)
        );
        assert_eq!(p.search(&q, 2, Some(&en)).unwrap()[0][0].id, 3);
    }

    /// A follower's two steps: the write is on disk (a reopen finds it) before the index has
    /// it, and once reflected it is searchable as a whole write is.
    #[test]
    fn a_durable_write_is_on_disk_before_it_is_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), &test_name(0));
        let mut p = Partition::open(&path, 2, Metric::Dot, Device::Cpu, IndexSpec::Exact).unwrap();
        let rows = Rows::from_records([
            rec(1, vec![1.0, 0.0], json!({"lang": "en"})),
            rec(2, vec![0.0, 1.0], json!({"lang": "fr"})),
        ]);
        let op = WriteOp::Upsert(rows.unwrap());
        let durable = p.persist(p.prepare(&op).unwrap(), 1).unwrap();
        assert_eq!((durable.seq(), p.seq(), p.len()), (1, 1, 0));
        let on_disk: Vec<u64> = p.stored().unwrap().iter().map(|r| r.id).collect();
        assert_eq!(on_disk, [1, 2]);
        let ack = p.reflect_durable(durable).unwrap();
        assert_eq!(ack, WriteAck { seq: 1, count: 2 });
        let en = MetadataFilter::parse(r#"{"op":"equal","key":"lang","value":"en"}"#).unwrap();
        let hits = p.search(&[vec![1.0, 0.0]], 2, Some(&en)).unwrap();
        assert_eq!(hits[0].iter().map(|h| h.id).collect::<Vec<_>>(), [1]);
        let gone = p.persist(Prepared::Delete(vec![2, 7]), 1).unwrap();
        assert_eq!(
            p.reflect_durable(gone).unwrap(),
            WriteAck { seq: 2, count: 1 }
        );
        assert_eq!(p.len(), 1);
    }

    /// A graph grown by writes is saved each time it doubled, one save at a time.
    #[test]
    fn a_graph_is_due_for_a_save_each_time_it_doubled() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), &test_name(0));
        let spec = IndexSpec::Hnsw(arbor_proto::HnswSpec::default());
        let mut p = Partition::open(&path, 4, Metric::Cosine, Device::Cpu, spec).unwrap();
        let mut written = 0u64;
        let mut write = |p: &mut Partition, n: u64| {
            let rows = (written..written + n)
                .map(|i| rec(i, vector(i, 4), json!({})))
                .collect();
            p.upsert(rows, 1).unwrap();
            written += n;
        };
        write(&mut p, SAVE_AFTER_ROWS as u64 - 1);
        assert!(!p.save_due(), "fewer rows than SAVE_AFTER_ROWS");
        write(&mut p, 1);
        assert!(p.save_due());
        assert!(p.save_graph().unwrap());
        assert!(!p.save_due(), "nothing written since");
        write(&mut p, SAVE_AFTER_ROWS as u64 - 1);
        assert!(!p.save_due(), "not doubled yet");
        write(&mut p, 1);
        assert!(p.save_due(), "doubled");
        drop(p);
        // The saved graph (of half the rows) loads with the rest replayed.
        let p = Partition::open(&path, 4, Metric::Cosine, Device::Cpu, spec).unwrap();
        assert_eq!(
            (p.len(), p.stats().index.as_str()),
            (2 * SAVE_AFTER_ROWS, "hnsw")
        );
    }

    /// A vector of `dim` values from `seed` (xorshift), for tests of many rows.
    fn vector(seed: u64, dim: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn an_hnsw_partition_finds_what_the_exact_one_finds_and_keeps_up_with_writes() {
        let dir = tempfile::tempdir().unwrap();
        let spec = IndexSpec::Hnsw(arbor_proto::HnswSpec {
            ef_search: 128,
            ..Default::default()
        });
        let (dim, rows) = (16, 2_000u64);
        let records: Vec<VectorRecord> = (0..rows)
            .map(|i| rec(i, vector(i, dim), json!({"even": i % 2 == 0})))
            .collect();
        let open = |name: u32, spec| {
            Partition::open(
                &store_path(dir.path(), &test_name(name)),
                dim,
                Metric::Cosine,
                Device::Cpu,
                spec,
            )
            .unwrap()
        };
        let (mut hnsw, mut exact) = (open(0, spec), open(1, IndexSpec::Exact));
        for chunk in records.chunks(500) {
            hnsw.upsert(chunk.to_vec(), 1).unwrap();
            exact.upsert(chunk.to_vec(), 1).unwrap();
        }
        assert_eq!(hnsw.stats().index, "hnsw");
        assert_eq!(exact.stats().index, "exact");
        let queries: Vec<Vec<f32>> = (0..50).map(|i| vector(10_000 + i, dim)).collect();
        let recall = |a: &Partition, b: &Partition, filter: Option<&MetadataFilter>| {
            let (x, y) = (
                a.search(&queries, 10, filter).unwrap(),
                b.search(&queries, 10, filter).unwrap(),
            );
            let found: usize = x
                .iter()
                .zip(&y)
                .map(|(x, y)| x.iter().filter(|h| y.iter().any(|e| e.id == h.id)).count())
                .sum();
            found as f64 / (queries.len() * 10) as f64
        };
        let r = recall(&hnsw, &exact, None);
        assert!(r >= 0.95, "recall@10 {r}");
        // A query's own ef: a walk of 4096 candidates over 2,000 rows finds them all.
        let wide = hnsw.search_ef(&queries, 10, None, Some(4096)).unwrap();
        let truth = exact.search(&queries, 10, None).unwrap();
        let ids = |l: &Vec<Vec<SearchHit>>| -> Vec<Vec<u64>> {
            l.iter().map(|h| h.iter().map(|h| h.id).collect()).collect()
        };
        assert_eq!(ids(&wide), ids(&truth));
        assert!(hnsw.search_ef(&queries, 10, None, Some(0)).is_err());
        // The exact scan has no use for it.
        assert_eq!(
            ids(&exact.search_ef(&queries, 10, None, Some(8)).unwrap()),
            ids(&truth)
        );
        // A filter applies during the walk: every hit passes it, and recall holds.
        let even = MetadataFilter::parse(r#"{"op":"equal","key":"even","value":true}"#).unwrap();
        for hits in hnsw.search(&queries, 10, Some(&even)).unwrap() {
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|h| h.id % 2 == 0), "{hits:?}");
        }
        assert!(recall(&hnsw, &exact, Some(&even)) >= 0.9);
        // Deletes and upserts reach the graph: a deleted row is never found again, and a row
        // moved onto a query is found first.
        let q = &queries[0];
        let first = hnsw.search(std::slice::from_ref(q), 1, None).unwrap()[0][0].id;
        hnsw.delete(&[first], 1).unwrap();
        let hits = hnsw.search(std::slice::from_ref(q), 10, None).unwrap();
        assert!(hits[0].iter().all(|h| h.id != first));
        hnsw.upsert(vec![rec(7, q.clone(), json!({}))], 1).unwrap();
        assert_eq!(
            hnsw.search(std::slice::from_ref(q), 1, None).unwrap()[0][0].id,
            7
        );
        // Opened again, the graph is built again from the rows on disk.
        let seq = hnsw.seq();
        drop(hnsw);
        let hnsw = open(0, spec);
        assert_eq!((hnsw.len(), hnsw.seq()), (rows as usize - 1, seq));
        assert_eq!(
            hnsw.search(std::slice::from_ref(q), 1, None).unwrap()[0][0].id,
            7
        );
    }

    #[test]
    fn a_saved_graph_is_loaded_with_the_writes_since_and_a_bad_one_is_built_again() {
        let dir = tempfile::tempdir().unwrap();
        let spec = IndexSpec::Hnsw(arbor_proto::HnswSpec {
            ef_search: 128,
            ..Default::default()
        });
        let (dim, rows) = (16, 1_500u64);
        let path = store_path(dir.path(), &test_name(0));
        let graph_file = saved_graph::path_of(path.to_str().unwrap());
        let open = |spec| Partition::open(&path, dim, Metric::Cosine, Device::Cpu, spec).unwrap();
        let mut p = open(spec);
        let records: Vec<VectorRecord> = (0..rows)
            .map(|i| rec(i, vector(i, dim), json!({})))
            .collect();
        for chunk in records.chunks(500) {
            p.upsert(chunk.to_vec(), 1).unwrap();
        }
        assert!(p.save_graph().unwrap());
        let queries: Vec<Vec<f32>> = (0..20).map(|i| vector(50_000 + i, dim)).collect();
        let before = p.search(&queries, 10, None).unwrap();
        drop(p);

        // Loaded as saved: searched on at once, with the same answers.
        let mut p = open(spec);
        let stats = p.stats();
        assert_eq!(
            (stats.index.as_str(), stats.index_building),
            ("hnsw", false)
        );
        assert_eq!(p.search(&queries, 10, None).unwrap(), before);
        // Writes after the save (not saved again): replayed into the graph at the next open.
        p.delete(&[3, 4], 1).unwrap();
        p.upsert(vec![rec(9_999, queries[0].clone(), json!({}))], 1)
            .unwrap();
        p.upsert(vec![rec(5, queries[1].clone(), json!({}))], 2)
            .unwrap();
        drop(p);
        let p = open(spec);
        assert!(!p.stats().index_building);
        assert_eq!(p.len(), rows as usize - 1);
        let top = |p: &Partition, q: &[f32]| p.search(&[q.to_vec()], 1, None).unwrap()[0][0].id;
        assert_eq!(top(&p, &queries[0]), 9_999);
        assert_eq!(top(&p, &queries[1]), 5);
        let all = p.search_ef(&queries, 20, None, Some(4096)).unwrap();
        assert!(all.iter().flatten().all(|h| h.id != 3 && h.id != 4));
        drop(p);

        // A corrupt file, or one of other settings, is not used: the graph is built again
        // (the exact scan serving meanwhile), and the file replaced once it is.
        let mut bytes = std::fs::read(&graph_file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&graph_file, &bytes).unwrap();
        let mut p = open(spec);
        assert!(p.stats().index_building);
        p.wait_for_index();
        assert_eq!(top(&p, &queries[0]), 9_999);
        assert!(graph_file.exists(), "saved again once built");
        drop(p);
        let other = IndexSpec::Hnsw(arbor_proto::HnswSpec {
            m: 8,
            ..Default::default()
        });
        let p = open(other);
        assert!(p.stats().index_building, "built again for m 8");
    }

    #[test]
    fn int8_partitions_train_on_their_rows_rescore_exactly_and_load_again() {
        let dir = tempfile::tempdir().unwrap();
        let hnsw = IndexSpec::Hnsw(arbor_proto::HnswSpec {
            ef_search: 128,
            ..Default::default()
        });
        let (dim, rows) = (32, 6_000u64);
        let records: Vec<VectorRecord> = (0..rows)
            .map(|i| rec(i, vector(i, dim), json!({"even": i % 2 == 0})))
            .collect();
        let queries: Vec<Vec<f32>> = (0..50).map(|i| vector(90_000 + i, dim)).collect();
        let even = MetadataFilter::parse(r#"{"op":"equal","key":"even","value":true}"#).unwrap();
        let mut exact = Partition::open(
            &store_path(dir.path(), &test_name(9)),
            dim,
            Metric::Cosine,
            Device::Cpu,
            IndexSpec::Exact,
        )
        .unwrap();
        for chunk in records.chunks(1000) {
            exact.upsert(chunk.to_vec(), 1).unwrap();
        }
        let truth = exact.search(&queries, 10, None).unwrap();
        let f32_bytes = exact.stats().host_bytes;
        for (name, spec, kind) in [(0, IndexSpec::Exact, "exact+int8"), (1, hnsw, "hnsw+int8")] {
            let config = IndexConfig {
                spec,
                quantization: Quantization::Int8,
            };
            let path = store_path(dir.path(), &test_name(name));
            let open = || Partition::open(&path, dim, Metric::Cosine, Device::Cpu, config).unwrap();
            let mut p = open();
            // f32 until it holds enough rows to train on.
            for chunk in records[..3000].chunks(1000) {
                p.upsert(chunk.to_vec(), 1).unwrap();
            }
            assert_eq!(p.stats().index, "exact", "{kind}");
            for chunk in records[3000..].chunks(1000) {
                p.upsert(chunk.to_vec(), 1).unwrap();
            }
            // The codes serve at once; a graph over them is built in the background.
            assert_eq!(p.stats().index_building, spec != IndexSpec::Exact, "{kind}");
            p.wait_for_index();
            let stats = p.stats();
            assert_eq!((stats.index.as_str(), stats.count), (kind, rows));
            if spec == IndexSpec::Exact {
                assert!(
                    stats.host_bytes * 2 < f32_bytes,
                    "codes {} bytes, f32 {f32_bytes}",
                    stats.host_bytes
                );
            }
            let found = p.search(&queries, 10, None).unwrap();
            let mut hit = 0;
            for (got, want) in found.iter().zip(&truth) {
                assert_eq!(got.len(), 10);
                for h in got {
                    // Scores are the f32 rows' scores, not the codes'.
                    if let Some(w) = want.iter().find(|w| w.id == h.id) {
                        hit += 1;
                        assert!((w.score - h.score).abs() < 1e-5, "{kind}: {h:?} vs {w:?}");
                    }
                }
            }
            let recall = f64::from(hit) / (queries.len() * 10) as f64;
            assert!(recall >= 0.97, "{kind}: recall@10 {recall}");
            for hits in p.search(&queries, 10, Some(&even)).unwrap() {
                assert_eq!(hits.len(), 10);
                assert!(hits.iter().all(|h| h.id % 2 == 0), "{hits:?}");
            }
            // Deletes and upserts reach the codes.
            let q = std::slice::from_ref(&queries[0]);
            let first = p.search(q, 1, None).unwrap()[0][0].id;
            p.delete(&[first], 1).unwrap();
            assert!(
                p.search(q, 10, None).unwrap()[0]
                    .iter()
                    .all(|h| h.id != first)
            );
            p.upsert(vec![rec(7, queries[0].clone(), json!({}))], 1)
                .unwrap();
            let top = p.search(q, 1, None).unwrap()[0][0].clone();
            assert_eq!(top.id, 7);
            assert!((top.score - 1.0).abs() < 1e-5, "{top:?}");
            let before = p.search(&queries, 10, None).unwrap();
            p.save_graph().unwrap();
            drop(p);
            // Opened again: trained again on the rows (or loaded with the saved graph), and
            // at once holding codes.
            let p = open();
            let stats = p.stats();
            assert_eq!(
                (stats.index.as_str(), stats.index_building),
                (
                    if spec == IndexSpec::Exact {
                        kind
                    } else {
                        "hnsw+int8"
                    },
                    false
                ),
            );
            let again = p.search(&queries, 10, None).unwrap();
            let same: usize = again
                .iter()
                .zip(&before)
                .map(|(a, b)| a.iter().filter(|h| b.iter().any(|x| x.id == h.id)).count())
                .sum();
            assert!(
                same >= queries.len() * 10 * 97 / 100,
                "{kind}: {same} the same"
            );
        }
    }

    #[test]
    fn an_int8_partition_trains_again_when_new_rows_leave_its_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 16;
        let config = IndexConfig {
            spec: IndexSpec::Exact,
            quantization: Quantization::Int8,
        };
        let path = store_path(dir.path(), &test_name(0));
        let mut p = Partition::open(&path, dim, Metric::L2, Device::Cpu, config).unwrap();
        let batch = |from: u64, scale: f32| -> Vec<VectorRecord> {
            (from..from + 1000)
                .map(|i| {
                    let v = vector(i, dim).into_iter().map(|x| x * scale).collect();
                    rec(i, v, json!({}))
                })
                .collect()
        };
        for b in 0..5 {
            p.upsert(batch(b * 1000, 1.0), 1).unwrap();
        }
        assert_eq!(p.stats().index, "exact+int8");
        assert_eq!(p.written_since_training, 0);
        // Rows four times as wide: most components fall outside the trained ranges.
        p.upsert(batch(10_000, 4.0), 1).unwrap();
        assert!(p.index.should_retrain());
        p.upsert(batch(11_000, 4.0), 1).unwrap();
        assert_eq!(p.written_since_training, 0, "trained again");
        assert!(!p.index.should_retrain());
        assert_eq!(p.len(), 7000);
        let q = vec![vector(11_500, dim).into_iter().map(|x| x * 4.0).collect()];
        let top = p.search(&q, 1, None).unwrap()[0][0].clone();
        assert_eq!((top.id, top.score), (11_500, 0.0));
    }

    #[test]
    fn filters_on_long_text_are_decided_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), &test_name(0));
        let mut p = Partition::open(&path, 2, Metric::Dot, Device::Cpu, IndexSpec::Exact).unwrap();
        let text = |i: u64| format!("{i} {}", "long text ".repeat(20));
        p.upsert(
            (0..50)
                .map(|i| rec(i, vec![1.0, i as f32], json!({"text": text(i), "n": i})))
                .collect(),
            1,
        )
        .unwrap();
        let wanted = MetadataFilter::Equal {
            key: "text".into(),
            value: Value::from(text(7)),
        };
        let hits = p.search(&[vec![1.0, 0.0]], 5, Some(&wanted)).unwrap();
        assert_eq!(hits[0].iter().map(|h| h.id).collect::<Vec<_>>(), [7]);
        assert!(hits[0][0].metadata.contains(&text(7)));
        let both = MetadataFilter::In {
            key: "text".into(),
            values: vec![
                Value::from(text(3)),
                Value::from(text(40)),
                Value::from("x"),
            ],
        };
        let hits = p.search(&[vec![1.0, 0.0]], 5, Some(&both)).unwrap();
        let mut ids: Vec<u64> = hits[0].iter().map(|h| h.id).collect();
        ids.sort();
        assert_eq!(ids, [3, 40]);
    }

    #[test]
    fn bad_searches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(
            &store_path(dir.path(), &test_name(0)),
            2,
            Metric::L2,
            Device::Cpu,
            IndexSpec::Exact,
        )
        .unwrap();
        let err = |q: Vec<Vec<f32>>, k| p.search(&q, k, None).unwrap_err().to_string();
        assert!(err(vec![vec![1.0]], 1).contains("dimension is 2"));
        assert!(err(vec![vec![1.0, f32::NAN]], 1).contains("non-finite"));
        assert!(err(vec![vec![1.0, 1.0]], 257).contains("at most 256"));
        assert!(err(vec![vec![0.0, 0.0]; 1025], 1).contains("at most 1024"));
        assert_eq!(p.search(&[vec![0.0, 0.0]], 0, None).unwrap(), vec![vec![]]);
    }
}
