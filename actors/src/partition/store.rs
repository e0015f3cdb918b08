//! A partition replica's durable rows, in one redb file.
//!
//! Every write (an upsert batch or a delete batch) is ONE redb write transaction, committed
//! with redb's default `Durability::Immediate` (fsync) before the call returns: a write that
//! was acknowledged survives a crash or a power loss. Each write takes the next sequence
//! number, the key of every row it touched (and of a tombstone for every id it deleted),
//! and the epoch it was written in, so that replication can ask "everything after N"
//! ([`Store::changes_after`]) and find where two replicas' histories part
//! (`partition::replication`).
//!
//! Tables:
//! - `log`: (seq, id) -> `vector (dim × f32 LE) | metadata (UTF-8 JSON object)` for a row,
//!   empty for a delete: one entry per id, at its last write. A write's rows go to the end
//!   of the log, so a bulk load fills pages once and in order (with rows keyed by id, every
//!   row of a load rewrote a random page: 3-4 times slower), and "everything after N" is a
//!   range scan.
//! - `ids`: id -> seq of its row, for every row written up to `meta.ids_seq`. Where each row
//!   lies is held in memory ([`Store`]'s `rows`); this table lets an open rebuild that from
//!   `ids` and the log after `ids_seq`, instead of reading the whole log. It is written anew
//!   from memory once a quarter of the rows were written since (`index_due`), so its random
//!   writes are paid once per many rows, not once per row. A write at or before `ids_seq`
//!   (a copy's or an undo's older versions) updates it in the same transaction.
//! - `tombstones`: id -> seq of the delete (dropped again when the id is written anew)
//! - `epochs`: epoch -> the first sequence number written in it (the replica's history)
//! - `meta`: `shape` (dimension and metric, so a file is never reopened with another shape),
//!   `seq`, `layout` (2; files of layout 1, with rows keyed by id in `records` and a
//!   `changes` index beside them, are rewritten on open) and `ids_seq`.
//!
//! Input is checked before anything is written ([`CheckedBatch`]); a refused batch changes
//! nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use arbor_kernels::topk::Metric;
use arbor_proto::gateway::json_type;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde_json::{Map, Value};

use super::messages::VectorRecord;
use super::rows::Rows;

const LOG: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("log");
const IDS: TableDefinition<u64, u64> = TableDefinition::new("ids");
const TOMBSTONES: TableDefinition<u64, u64> = TableDefinition::new("tombstones");
const EPOCHS: TableDefinition<u64, u64> = TableDefinition::new("epochs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The layout this code writes (see the module's doc).
const LAYOUT: u64 = 2;
/// Layout 1's rows: id -> `seq (u64 LE) | row`; read once, to upgrade a file.
const OLD_RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// Layout 1's index of the rows' places: (seq, id) -> 1 for a row, 0 for a delete.
const OLD_CHANGES: TableDefinition<(u64, u64), u8> = TableDefinition::new("changes");
const GONE: u8 = 0;
/// The fewest ids written since `ids` was last written that make it due again.
const INDEX_AFTER_IDS: usize = 50_000;

/// The most rows one upsert may carry (a batch of 384-dim rows is about 15 MiB; the wire
/// limit of 8 MiB is usually reached first).
pub const MAX_BATCH_ROWS: usize = 10_000;
/// The most ids one delete may carry.
pub const MAX_DELETE_IDS: usize = 100_000;
/// The longest metadata text one row may have, in bytes.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// The largest vector dimension a partition accepts.
pub const MAX_DIM: usize = 65_536;
/// redb's page cache for a partition file. redb's default is 1 GiB, and every row is read
/// once at load, so the default would keep up to 1 GiB of pages that the index already holds
/// in its own form. Reads after the load are only the few rows a search returns, and a
/// write batch's pages (at most a few MB from the coordinator) fit in 16 MiB.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Why input was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidInput {
    #[error("{rows} rows in one batch; at most {max} are allowed")]
    TooManyRows { rows: usize, max: usize },
    #[error("{ids} ids in one delete; at most {max} are allowed")]
    TooManyIds { ids: usize, max: usize },
    #[error("id {id} appears more than once in one batch")]
    DuplicateId { id: u64 },
    #[error("vector {id} has {got} components; this partition's dimension is {dim}")]
    WrongDimension { id: u64, got: usize, dim: usize },
    #[error("vector {id} has a non-finite component ({value}) at position {position}")]
    NonFinite {
        id: u64,
        position: usize,
        value: f32,
    },
    #[error("vector {id} has a component ({value}) outside the fp16 range of the GPU index")]
    OutOfHalfRange { id: u64, value: f32 },
    #[error("metadata of {id} is not JSON: {reason}")]
    MetadataNotJson { id: u64, reason: String },
    #[error("metadata of {id} must be a JSON object, got {found}")]
    MetadataNotObject { id: u64, found: &'static str },
    #[error("metadata of {id} is {len} bytes; at most {max} are allowed")]
    MetadataTooLarge { id: u64, len: usize, max: usize },
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("partition store {path}: {source}")]
    Redb {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("partition store {path} is already open (by another replica, or one still closing)")]
    AlreadyOpen { path: String },
    #[error("partition store {path} holds {stored}, not {wanted}")]
    Mismatch {
        path: String,
        stored: String,
        wanted: String,
    },
    #[error("partition store {path} is corrupt: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("partition store {path}: {detail}")]
    Io { path: String, detail: String },
}

/// A batch of rows that passed every check: the only thing [`Store::upsert`] takes.
#[derive(Debug, Clone)]
pub struct CheckedBatch {
    ids: Vec<u64>,
    /// `ids.len() × dim`, row-major.
    vectors: Vec<f32>,
    /// Each row's metadata, parsed, and as the compact text that is stored.
    metadata: Vec<(Map<String, Value>, String)>,
}

impl CheckedBatch {
    /// Checks rows for a partition of dimension `dim`: batch size, unique ids, dimension,
    /// finite components, metadata that is a JSON object of bounded size.
    pub fn new(dim: usize, rows: &Rows) -> Result<Self, InvalidInput> {
        if rows.len() > MAX_BATCH_ROWS {
            return Err(InvalidInput::TooManyRows {
                rows: rows.len(),
                max: MAX_BATCH_ROWS,
            });
        }
        if rows.dim() != dim && !rows.is_empty() {
            return Err(InvalidInput::WrongDimension {
                id: rows.ids()[0],
                got: rows.dim(),
                dim,
            });
        }
        let mut seen = HashSet::with_capacity(rows.len());
        let mut metadata = Vec::with_capacity(rows.len());
        for (i, (&id, text)) in rows.ids().iter().zip(rows.metadata()).enumerate() {
            if !seen.insert(id) {
                return Err(InvalidInput::DuplicateId { id });
            }
            if let Some((position, &value)) = rows
                .vector(i)
                .iter()
                .enumerate()
                .find(|(_, x)| !x.is_finite())
            {
                return Err(InvalidInput::NonFinite {
                    id,
                    position,
                    value,
                });
            }
            let map = parse_metadata(id, text)?;
            let text = serde_json::to_string(&map).map_err(|e| InvalidInput::MetadataNotJson {
                id,
                reason: e.to_string(),
            })?;
            metadata.push((map, text));
        }
        Ok(CheckedBatch {
            ids: rows.ids().to_vec(),
            vectors: rows.vectors().to_vec(),
            metadata,
        })
    }

    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Each row's id and parsed metadata, for the in-memory side.
    pub fn into_metadata(self) -> impl Iterator<Item = (u64, Map<String, Value>)> {
        self.ids
            .into_iter()
            .zip(self.metadata)
            .map(|(id, (map, _))| (id, map))
    }
}

/// Parses one row's metadata text: a JSON object, `""` meaning `{}`.
pub fn parse_metadata(id: u64, text: &str) -> Result<Map<String, Value>, InvalidInput> {
    if text.len() > MAX_METADATA_BYTES {
        return Err(InvalidInput::MetadataTooLarge {
            id,
            len: text.len(),
            max: MAX_METADATA_BYTES,
        });
    }
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(InvalidInput::MetadataNotObject {
            id,
            found: json_type(&other),
        }),
        Err(e) => Err(InvalidInput::MetadataNotJson {
            id,
            reason: e.to_string(),
        }),
    }
}

/// One row as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub id: u64,
    /// The sequence number of the write that last stored this row.
    pub seq: u64,
    pub vector: Vec<f32>,
    /// The metadata as compact JSON text.
    pub metadata: String,
}

/// One row's state after a write, as replication carries it: the row, or that it is gone,
/// with the sequence number of the write that made it so.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Change {
    Row {
        seq: u64,
        record: VectorRecord,
    },
    /// Deleted at `seq` (0: never stored, or deleted before anything remembers).
    Gone {
        seq: u64,
        id: u64,
    },
}

impl Change {
    pub fn id(&self) -> u64 {
        match self {
            Change::Row { record, .. } => record.id,
            Change::Gone { id, .. } => *id,
        }
    }

    pub fn seq(&self) -> u64 {
        match self {
            Change::Row { seq, .. } | Change::Gone { seq, .. } => *seq,
        }
    }
}

/// A replica's history: each epoch it holds writes of, with the first sequence number
/// written in it, in increasing order of both.
pub type History = Vec<(u64, u64)>;

/// A place in the `(seq, id)` order in which changes are read.
pub type Position = (u64, u64);

/// One page of changes, and the position to read after for the next (`None`: the end).
pub type ChangesPage = (Vec<Change>, Option<Position>);

/// A page of deletes by id, `(id, seq)` each, and the id to read after next (`None`: the end).
pub type TombstonesPage = (Vec<(u64, u64)>, Option<u64>);

/// A partition replica's redb file, and the index of where each of its rows lies in it.
pub struct Store {
    db: Database,
    path: String,
    dim: usize,
    metric: Metric,
    seq: u64,
    history: History,
    /// Every stored row's id and the sequence number it was written at: its place in `log`.
    rows: BTreeMap<u64, u64>,
    /// `ids` holds every row's place as of this sequence number; `log` entries after it are
    /// the rest (see the module's doc).
    ids_seq: u64,
    /// The ids written after `ids_seq`, not yet in `ids` (duplicates allowed).
    unindexed: Vec<u64>,
    /// The file did not exist before this store opened it.
    created: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("dim", &self.dim)
            .field("metric", &self.metric)
            .field("seq", &self.seq)
            .field("rows", &self.rows.len())
            .finish()
    }
}

impl Store {
    /// Opens (or creates, with its parent folders) the store at `path` for rows of `dim`
    /// components compared by `metric`. An existing file of another shape is refused; one
    /// written in the first layout is upgraded.
    pub fn open(path: &Path, dim: usize, metric: Metric) -> Result<Self, StoreError> {
        let p = path.display().to_string();
        let created = !path.exists();
        if dim == 0 || dim > MAX_DIM {
            return Err(StoreError::Mismatch {
                path: p,
                stored: "nothing usable".into(),
                wanted: format!("dimension {dim} (1 to {MAX_DIM} allowed)"),
            });
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Io {
                path: p.clone(),
                detail: format!("cannot create {}: {e}", parent.display()),
            })?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    StoreError::AlreadyOpen { path: p.clone() }
                }
                e => redb_err(&p, e),
            })?;
        // Rows hold document text: only the node's account may read them (redb creates its
        // file with the process umask, 0644 by default).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| StoreError::Io {
                    path: p.clone(),
                    detail: format!("cannot make it private (0600): {e}"),
                },
            )?;
        }
        let mut store = Store {
            db,
            path: p,
            dim,
            metric,
            seq: 0,
            history: Vec::new(),
            rows: BTreeMap::new(),
            ids_seq: 0,
            unindexed: Vec::new(),
            created,
        };
        store.init()?;
        Ok(store)
    }

    /// Creates the tables and the shape on first open; checks the shape, upgrades a file of
    /// the first layout, and reads the sequence number, the history and where every row lies
    /// afterwards.
    fn init(&mut self) -> Result<(), StoreError> {
        let p = self.path.clone();
        let shape = format!("dimension {} metric {}", self.dim, self.metric);
        let txn = self.db.begin_write().map_err(|e| redb_err(&p, e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| redb_err(&p, e))?;
            let stored = meta
                .get("shape")
                .map_err(|e| redb_err(&p, e))?
                .map(|g| String::from_utf8_lossy(g.value()).into_owned());
            match stored {
                Some(stored) if stored != shape => {
                    return Err(StoreError::Mismatch {
                        path: p,
                        stored,
                        wanted: shape,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert("shape", shape.as_bytes())
                        .map_err(|e| redb_err(&p, e))?;
                }
            }
            self.seq = read_u64(&meta, "seq", &p)?.unwrap_or(0);
            let layout = read_u64(&meta, "layout", &p)?;
            drop(meta);
            match layout {
                Some(LAYOUT) => {}
                Some(other) => {
                    return Err(StoreError::Mismatch {
                        path: p,
                        stored: format!("layout {other}"),
                        wanted: format!("layout {LAYOUT} (written by a newer Arbor?)"),
                    });
                }
                None => self.upgrade(&txn)?,
            }
            txn.open_table(LOG).map_err(|e| redb_err(&p, e))?;
            txn.open_table(IDS).map_err(|e| redb_err(&p, e))?;
            txn.open_table(TOMBSTONES).map_err(|e| redb_err(&p, e))?;
            let epochs = txn.open_table(EPOCHS).map_err(|e| redb_err(&p, e))?;
            self.history = epochs
                .iter()
                .map_err(|e| redb_err(&p, e))?
                .map(|row| row.map(|(e, s)| (e.value(), s.value())))
                .collect::<Result<_, _>>()
                .map_err(|e| redb_err(&p, e))?;
        }
        txn.commit().map_err(|e| redb_err(&p, e))?;
        self.load_places()
    }

    /// Rewrites a file of the first layout (rows by id in `records`, with `changes` beside
    /// them) into the log, in the transaction that opens it. A new file just gets its layout.
    fn upgrade(&mut self, txn: &redb::WriteTransaction) -> Result<(), StoreError> {
        let p = self.path.clone();
        let old = txn
            .list_tables()
            .map_err(|e| redb_err(&p, e))?
            .any(|t| redb::TableHandle::name(&t) == OLD_RECORDS.name());
        if old {
            let records = txn.open_table(OLD_RECORDS).map_err(|e| redb_err(&p, e))?;
            let changes = txn.open_table(OLD_CHANGES).map_err(|e| redb_err(&p, e))?;
            let mut log = txn.open_table(LOG).map_err(|e| redb_err(&p, e))?;
            let mut ids = txn.open_table(IDS).map_err(|e| redb_err(&p, e))?;
            let mut rows = Vec::new();
            for change in changes.iter().map_err(|e| redb_err(&p, e))? {
                let (key, kind) = change.map_err(|e| redb_err(&p, e))?;
                let (seq, id) = key.value();
                if kind.value() == GONE {
                    log.insert((seq, id), [].as_slice())
                        .map_err(|e| redb_err(&p, e))?;
                    continue;
                }
                let value = records
                    .get(id)
                    .map_err(|e| redb_err(&p, e))?
                    .ok_or_else(|| StoreError::Corrupt {
                        path: p.clone(),
                        detail: format!("change ({seq}, {id}) names a row that is not stored"),
                    })?;
                let row = value.value().get(8..).unwrap_or_default();
                log.insert((seq, id), row).map_err(|e| redb_err(&p, e))?;
                rows.push((id, seq));
            }
            rows.sort_unstable();
            for (id, seq) in rows {
                ids.insert(id, seq).map_err(|e| redb_err(&p, e))?;
            }
        }
        if old {
            txn.delete_table(OLD_RECORDS).map_err(|e| redb_err(&p, e))?;
            txn.delete_table(OLD_CHANGES).map_err(|e| redb_err(&p, e))?;
        }
        let mut meta = txn.open_table(META).map_err(|e| redb_err(&p, e))?;
        meta.insert("layout", LAYOUT.to_le_bytes().as_slice())
            .map_err(|e| redb_err(&p, e))?;
        meta.insert("ids_seq", self.seq.to_le_bytes().as_slice())
            .map_err(|e| redb_err(&p, e))?;
        Ok(())
    }

    /// Reads where every row lies: `ids`, then the log entries after `ids_seq`.
    fn load_places(&mut self) -> Result<(), StoreError> {
        let p = self.path.clone();
        let txn = self.db.begin_read().map_err(|e| redb_err(&p, e))?;
        let meta = txn.open_table(META).map_err(|e| redb_err(&p, e))?;
        self.ids_seq = read_u64(&meta, "ids_seq", &p)?.unwrap_or(0);
        let ids = txn.open_table(IDS).map_err(|e| redb_err(&p, e))?;
        self.rows = ids
            .iter()
            .map_err(|e| redb_err(&p, e))?
            .map(|row| row.map(|(id, seq)| (id.value(), seq.value())))
            .collect::<Result<_, _>>()
            .map_err(|e| redb_err(&p, e))?;
        self.unindexed.clear();
        let Some(from) = self.ids_seq.checked_add(1) else {
            return Ok(());
        };
        let log = txn.open_table(LOG).map_err(|e| redb_err(&p, e))?;
        for entry in log.range((from, 0)..).map_err(|e| redb_err(&p, e))? {
            let (key, value) = entry.map_err(|e| redb_err(&p, e))?;
            let (seq, id) = key.value();
            if value.value().is_empty() {
                self.rows.remove(&id);
            } else {
                self.rows.insert(id, seq);
            }
            self.unindexed.push(id);
        }
        Ok(())
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The sequence number of the last durable write (0 before any).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The epochs this replica holds writes of, each with its first sequence number.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Whether this store's file was created when it was opened (it was not there before).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Stores a checked batch in one durable transaction as the next write, made in `epoch`,
    /// and returns its sequence number. An empty batch writes nothing and returns the current
    /// one.
    pub fn upsert(&mut self, batch: &CheckedBatch, epoch: u64) -> Result<u64, StoreError> {
        if batch.vectors.len() != batch.ids.len() * self.dim {
            return Err(InvalidInput::WrongDimension {
                id: batch.ids.first().copied().unwrap_or_default(),
                got: batch.vectors.len() / batch.ids.len().max(1),
                dim: self.dim,
            }
            .into());
        }
        if batch.is_empty() {
            return Ok(self.seq);
        }
        let seq = self.seq + 1;
        let p = self.path.clone();
        let txn = self.db.begin_write().map_err(|e| redb_err(&p, e))?;
        let places = {
            let mut t =
                Tables::open(&txn, &self.rows, self.ids_seq).map_err(|e| redb_err(&p, e))?;
            // In id order: the batch's entries fill the log's last pages front to back.
            let mut order: Vec<usize> = (0..batch.len()).collect();
            order.sort_unstable_by_key(|&i| batch.ids[i]);
            let mut value = Vec::new();
            for i in order {
                let vector = &batch.vectors[i * self.dim..(i + 1) * self.dim];
                encode_row(&mut value, vector, &batch.metadata[i].1);
                t.put_row(batch.ids[i], seq, &value)
                    .map_err(|e| redb_err(&p, e))?;
            }
            set_seq(&txn, seq).map_err(|e| redb_err(&p, e))?;
            t.places
        };
        let history = self
            .note_epoch(&txn, epoch, seq)
            .map_err(|e| redb_err(&p, e))?;
        txn.commit().map_err(|e| redb_err(&p, e))?;
        self.seq = seq;
        self.history = history;
        Ok(self.placed(places))
    }

    /// Records `epoch` in the history if `seq` is its first write; returns the new history.
    fn note_epoch(
        &self,
        txn: &redb::WriteTransaction,
        epoch: u64,
        seq: u64,
    ) -> Result<History, redb::Error> {
        let mut history = self.history.clone();
        if history.last().is_none_or(|(e, _)| *e < epoch) {
            txn.open_table(EPOCHS)?.insert(epoch, seq)?;
            history.push((epoch, seq));
        }
        Ok(history)
    }

    /// Takes the places a committed write gave its ids, and writes `ids` anew once enough
    /// ids were written since it last was ([`index_due`]). Never fails: the write is
    /// committed already.
    fn placed(&mut self, places: HashMap<u64, Option<u64>>) -> u64 {
        for (id, place) in places {
            match place {
                Some(seq) => self.rows.insert(id, seq),
                None => self.rows.remove(&id),
            };
            self.unindexed.push(id);
        }
        if index_due(self.unindexed.len(), self.rows.len()) {
            // The write is durable whatever happens here: a failure only leaves `ids` as it
            // was (still right, with the log after it), to be written at a later write.
            if let Err(e) = self.write_ids() {
                tracing::warn!(path = %self.path, error = %e, "could not write the ids table; trying again later");
            }
        }
        self.seq
    }

    /// Brings `ids` up to date with every row's place, so that an open reads the log only
    /// after the current sequence number. Not durable on its own: the next durable write
    /// makes it so, and a crash before that leaves the last one, which still holds with the
    /// log after it.
    fn write_ids(&mut self) -> Result<(), StoreError> {
        let p = self.path.clone();
        let mut written = self.unindexed.clone();
        written.sort_unstable();
        written.dedup();
        let ids_seq = self.seq.max(self.ids_seq);
        let mut txn = self.db.begin_write().map_err(|e| redb_err(&p, e))?;
        txn.set_durability(redb::Durability::None)
            .map_err(|e| redb_err(&p, e))?;
        {
            let mut ids = txn.open_table(IDS).map_err(|e| redb_err(&p, e))?;
            for id in written {
                match self.rows.get(&id) {
                    Some(&seq) => ids.insert(id, seq).map(|_| ()),
                    None => ids.remove(id).map(|_| ()),
                }
                .map_err(|e| redb_err(&p, e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| redb_err(&p, e))?;
            meta.insert("ids_seq", ids_seq.to_le_bytes().as_slice())
                .map_err(|e| redb_err(&p, e))?;
        }
        txn.commit().map_err(|e| redb_err(&p, e))?;
        self.ids_seq = ids_seq;
        self.unindexed.clear();
        Ok(())
    }

    /// Removes these ids in one durable transaction as the next write, made in `epoch`,
    /// leaving a tombstone for each; returns the write's sequence number and how many rows
    /// were present.
    pub fn delete(&mut self, ids: &[u64], epoch: u64) -> Result<(u64, usize), StoreError> {
        if ids.len() > MAX_DELETE_IDS {
            return Err(InvalidInput::TooManyIds {
                ids: ids.len(),
                max: MAX_DELETE_IDS,
            }
            .into());
        }
        if ids.is_empty() {
            return Ok((self.seq, 0));
        }
        let seq = self.seq + 1;
        let p = self.path.clone();
        let txn = self.db.begin_write().map_err(|e| redb_err(&p, e))?;
        let mut removed = 0;
        let places = {
            let mut t =
                Tables::open(&txn, &self.rows, self.ids_seq).map_err(|e| redb_err(&p, e))?;
            for &id in ids {
                if t.put_gone(id, seq).map_err(|e| redb_err(&p, e))? {
                    removed += 1;
                }
            }
            set_seq(&txn, seq).map_err(|e| redb_err(&p, e))?;
            t.places
        };
        let history = self
            .note_epoch(&txn, epoch, seq)
            .map_err(|e| redb_err(&p, e))?;
        txn.commit().map_err(|e| redb_err(&p, e))?;
        self.seq = seq;
        self.history = history;
        self.placed(places);
        Ok((seq, removed))
    }

    /// Installs changes copied from a primary, each with its own sequence number, in one
    /// durable transaction; then this store holds everything up to `seq` and its history is
    /// `history` (the primary's, up to `seq`). Returns the ids whose rows changed and the
    /// rows now stored for them (`None`: gone), for the in-memory side.
    pub fn install(
        &mut self,
        changes: &[Change],
        seq: u64,
        history: &[(u64, u64)],
    ) -> Result<Vec<(u64, Option<StoredRecord>)>, StoreError> {
        let p = self.path.clone();
        let txn = self.db.begin_write().map_err(|e| redb_err(&p, e))?;
        let mut out = Vec::with_capacity(changes.len());
        let places = {
            let mut t =
                Tables::open(&txn, &self.rows, self.ids_seq).map_err(|e| redb_err(&p, e))?;
            let mut value = Vec::new();
            for c in changes {
                match c {
                    Change::Row { seq, record } => {
                        if record.vector.len() != self.dim {
                            return Err(InvalidInput::WrongDimension {
                                id: record.id,
                                got: record.vector.len(),
                                dim: self.dim,
                            }
                            .into());
                        }
                        encode_row(&mut value, &record.vector, &record.metadata);
                        t.put_row(record.id, *seq, &value)
                            .map_err(|e| redb_err(&p, e))?;
                        out.push((
                            record.id,
                            Some(StoredRecord {
                                id: record.id,
                                seq: *seq,
                                vector: record.vector.clone(),
                                metadata: record.metadata.clone(),
                            }),
                        ));
                    }
                    Change::Gone { seq, id } => {
                        t.put_gone(*id, *seq).map_err(|e| redb_err(&p, e))?;
                        out.push((*id, None));
                    }
                }
            }
            set_seq(&txn, seq).map_err(|e| redb_err(&p, e))?;
            let mut epochs = txn.open_table(EPOCHS).map_err(|e| redb_err(&p, e))?;
            for (e, _) in &self.history {
                epochs.remove(*e).map_err(|e| redb_err(&p, e))?;
            }
            for (e, s) in history.iter().filter(|(_, s)| *s <= seq) {
                epochs.insert(*e, *s).map_err(|e| redb_err(&p, e))?;
            }
            t.places
        };
        txn.commit().map_err(|e| redb_err(&p, e))?;
        self.seq = seq;
        self.history = history.iter().copied().filter(|(_, s)| *s <= seq).collect();
        self.placed(places);
        Ok(out)
    }

    /// Forgets everything: rows, tombstones, history and sequence number (a replica whose
    /// history shares nothing with its primary's copies everything anew). Returns the ids
    /// that were stored.
    pub fn reset(&mut self) -> Result<Vec<u64>, StoreError> {
        let p = self.path.clone();
        let txn = self.db.begin_write().map_err(|e| redb_err(&p, e))?;
        {
            txn.delete_table(LOG).map_err(|e| redb_err(&p, e))?;
            txn.delete_table(IDS).map_err(|e| redb_err(&p, e))?;
            txn.delete_table(TOMBSTONES).map_err(|e| redb_err(&p, e))?;
            txn.delete_table(EPOCHS).map_err(|e| redb_err(&p, e))?;
            txn.open_table(LOG).map_err(|e| redb_err(&p, e))?;
            txn.open_table(IDS).map_err(|e| redb_err(&p, e))?;
            txn.open_table(TOMBSTONES).map_err(|e| redb_err(&p, e))?;
            txn.open_table(EPOCHS).map_err(|e| redb_err(&p, e))?;
            set_seq(&txn, 0).map_err(|e| redb_err(&p, e))?;
            let mut meta = txn.open_table(META).map_err(|e| redb_err(&p, e))?;
            meta.insert("ids_seq", 0u64.to_le_bytes().as_slice())
                .map_err(|e| redb_err(&p, e))?;
        }
        txn.commit().map_err(|e| redb_err(&p, e))?;
        self.seq = 0;
        self.ids_seq = 0;
        self.history.clear();
        self.unindexed.clear();
        Ok(std::mem::take(&mut self.rows).into_keys().collect())
    }

    /// The rows and deletes after `after` (a `(seq, id)` position) in `(seq, id)` order: at
    /// most `limit`, and no more once about `max_bytes` (always at least one). The second
    /// value is the position to ask after next, `None` when the end was reached. A row
    /// written again meanwhile moves past the position, so it is seen again later.
    pub fn changes_after(
        &self,
        after: Position,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ChangesPage, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| redb_err(p, e))?;
        let log = txn.open_table(LOG).map_err(|e| redb_err(p, e))?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let start = match after.1.checked_add(1) {
            Some(id) => (after.0, id),
            None => match after.0.checked_add(1) {
                Some(seq) => (seq, 0),
                None => return Ok((out, None)),
            },
        };
        let mut last = None;
        for entry in log.range(start..).map_err(|e| redb_err(p, e))? {
            if out.len() >= limit || (bytes >= max_bytes && !out.is_empty()) {
                return Ok((out, last));
            }
            let (key, value) = entry.map_err(|e| redb_err(p, e))?;
            let (seq, id) = key.value();
            let value = value.value();
            last = Some((seq, id));
            if value.is_empty() {
                bytes = bytes.saturating_add(24);
                out.push(Change::Gone { seq, id });
            } else {
                bytes = bytes.saturating_add(value.len() + 32);
                let r = self.decode_row(id, seq, value)?;
                out.push(Change::Row {
                    seq,
                    record: VectorRecord {
                        id,
                        vector: r.vector,
                        metadata: r.metadata,
                    },
                });
            }
        }
        Ok((out, None))
    }

    /// Deleted ids and their deletes' sequence numbers, by id after `after` (all when
    /// `None`): at most `limit`; the id to read after next (`None`: the end).
    pub fn tombstones_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<TombstonesPage, StoreError> {
        let p = &self.path;
        let start = match after {
            None => 0,
            Some(a) => match a.checked_add(1) {
                Some(s) => s,
                None => return Ok((Vec::new(), None)),
            },
        };
        let txn = self.db.begin_read().map_err(|e| redb_err(p, e))?;
        let table = txn.open_table(TOMBSTONES).map_err(|e| redb_err(p, e))?;
        let mut out = Vec::new();
        for row in table.range(start..).map_err(|e| redb_err(p, e))? {
            if out.len() >= limit {
                let next = out.last().map(|(id, _)| *id);
                return Ok((out, next));
            }
            let (id, seq) = row.map_err(|e| redb_err(p, e))?;
            out.push((id.value(), seq.value()));
        }
        Ok((out, None))
    }

    /// The current state of each id, in the order asked: its row, or that it is gone (with
    /// the seq of its tombstone, 0 when there is none).
    pub fn versions(&self, ids: &[u64]) -> Result<Vec<Change>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| redb_err(p, e))?;
        let log = txn.open_table(LOG).map_err(|e| redb_err(p, e))?;
        let tombstones = txn.open_table(TOMBSTONES).map_err(|e| redb_err(p, e))?;
        ids.iter()
            .map(|&id| match self.read_row(&log, id)? {
                Some(r) => Ok(Change::Row {
                    seq: r.seq,
                    record: VectorRecord {
                        id,
                        vector: r.vector,
                        metadata: r.metadata,
                    },
                }),
                None => {
                    let seq = tombstones
                        .get(id)
                        .map_err(|e| redb_err(p, e))?
                        .map_or(0, |g| g.value());
                    Ok(Change::Gone { seq, id })
                }
            })
            .collect()
    }

    /// The ids written (stored or deleted) after sequence number `seq`, in write order.
    pub fn written_after(&self, seq: u64) -> Result<Vec<u64>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| redb_err(p, e))?;
        let log = txn.open_table(LOG).map_err(|e| redb_err(p, e))?;
        let Some(from) = seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        log.range((from, 0)..)
            .map_err(|e| redb_err(p, e))?
            .map(|row| row.map(|(k, _)| k.value().1).map_err(|e| redb_err(p, e)))
            .collect()
    }

    /// Calls `f` with every stored row, in the order they were written (a sequential read of
    /// the file), without holding them all at once.
    pub fn for_each<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(StoredRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| redb_err(p, e))?;
        let log = txn.open_table(LOG).map_err(|e| redb_err(p, e))?;
        for entry in log.iter().map_err(|e| redb_err(p, e))? {
            let (key, value) = entry.map_err(|e| redb_err(p, e))?;
            let (seq, id) = key.value();
            if !value.value().is_empty() {
                f(self.decode_row(id, seq, value.value())?)?;
            }
        }
        Ok(())
    }

    /// The stored rows with ids in `ids`, in id order: at most `limit` of them, and no more
    /// once their encoded size (vector, metadata and some overhead per row) passes
    /// `max_bytes` (always at least one row). The flag tells whether rows in range remain.
    pub fn scan(
        &self,
        ids: std::ops::RangeInclusive<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<StoredRecord>, bool), StoreError> {
        let p = &self.path;
        let mut out = Vec::new();
        if ids.is_empty() {
            return Ok((out, false));
        }
        let txn = self.db.begin_read().map_err(|e| redb_err(p, e))?;
        let log = txn.open_table(LOG).map_err(|e| redb_err(p, e))?;
        let mut bytes = 0usize;
        for (&id, &seq) in self.rows.range(ids) {
            if out.len() >= limit || (bytes >= max_bytes && !out.is_empty()) {
                return Ok((out, true));
            }
            let value = log
                .get((seq, id))
                .map_err(|e| redb_err(p, e))?
                .ok_or_else(|| self.missing(id, seq))?;
            let value = value.value();
            bytes = bytes.saturating_add(value.len() + 32);
            out.push(self.decode_row(id, seq, value)?);
        }
        Ok((out, false))
    }

    /// The stored rows with these ids, in the order asked; ids not stored are left out.
    pub fn get(&self, ids: &[u64]) -> Result<Vec<StoredRecord>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| redb_err(p, e))?;
        let log = txn.open_table(LOG).map_err(|e| redb_err(p, e))?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(r) = self.read_row(&log, id)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The metadata text of each id, in the order asked (`None` for an id not stored),
    /// without decoding the vectors.
    pub fn metadata_of(&self, ids: &[u64]) -> Result<Vec<Option<String>>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| redb_err(p, e))?;
        let log = txn.open_table(LOG).map_err(|e| redb_err(p, e))?;
        let vector_end = self.dim * 4;
        ids.iter()
            .map(|&id| {
                let Some(&seq) = self.rows.get(&id) else {
                    return Ok(None);
                };
                let value = log
                    .get((seq, id))
                    .map_err(|e| redb_err(p, e))?
                    .ok_or_else(|| self.missing(id, seq))?;
                let bytes = value.value();
                let text = bytes.get(vector_end..).ok_or_else(|| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!(
                        "record {id}: {} bytes, fewer than its vector needs",
                        bytes.len()
                    ),
                })?;
                std::str::from_utf8(text)
                    .map(|t| Some(t.to_string()))
                    .map_err(|e| StoreError::Corrupt {
                        path: self.path.clone(),
                        detail: format!("record {id}: metadata is not UTF-8: {e}"),
                    })
            })
            .collect()
    }

    /// How many rows are stored.
    pub fn row_count(&self) -> Result<u64, StoreError> {
        Ok(self.rows.len() as u64)
    }

    /// Every stored row, in id order.
    pub fn load_all(&self) -> Result<Vec<StoredRecord>, StoreError> {
        Ok(self.scan(0..=u64::MAX, usize::MAX, usize::MAX)?.0)
    }

    /// Deleted ids and the sequence numbers of their deletes.
    pub fn tombstones(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| redb_err(p, e))?;
        let table = txn.open_table(TOMBSTONES).map_err(|e| redb_err(p, e))?;
        table
            .iter()
            .map_err(|e| redb_err(p, e))?
            .map(|row| {
                let (id, seq) = row.map_err(|e| redb_err(p, e))?;
                Ok((id.value(), seq.value()))
            })
            .collect()
    }

    /// `id`'s row, read from `log` at its place (`None`: not stored).
    fn read_row(
        &self,
        log: &redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
        id: u64,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let Some(&seq) = self.rows.get(&id) else {
            return Ok(None);
        };
        let value = log
            .get((seq, id))
            .map_err(|e| redb_err(&self.path, e))?
            .ok_or_else(|| self.missing(id, seq))?;
        self.decode_row(id, seq, value.value()).map(Some)
    }

    fn missing(&self, id: u64, seq: u64) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail: format!("row {id} was written at {seq}, but the log has no such entry"),
        }
    }

    fn decode_row(&self, id: u64, seq: u64, bytes: &[u8]) -> Result<StoredRecord, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            detail: format!("record {id}: {detail}"),
        };
        let vector_end = self.dim * 4;
        if bytes.len() < vector_end {
            return Err(corrupt(format!(
                "{} bytes, fewer than the {vector_end} its vector needs",
                bytes.len()
            )));
        }
        let (vector, metadata) = bytes.split_at(vector_end);
        let vector = vector
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let metadata = std::str::from_utf8(metadata)
            .map_err(|e| corrupt(format!("metadata is not UTF-8: {e}")))?
            .to_string();
        Ok(StoredRecord {
            id,
            seq,
            vector,
            metadata,
        })
    }
}

/// Whether `ids` is due to be written anew: `unindexed` ids written since it last was, with
/// `rows` rows stored. Each time, the ids written since are about a quarter of the rows (and
/// at least [`INDEX_AFTER_IDS`]), so the cost stays a few bytes per row written, and an open
/// reads at most that many log entries beyond `ids`.
fn index_due(unindexed: usize, rows: usize) -> bool {
    unindexed >= INDEX_AFTER_IDS.max(rows / 4)
}

fn encode_row(out: &mut Vec<u8>, vector: &[f32], metadata: &str) {
    out.clear();
    out.reserve(vector.len() * 4 + metadata.len());
    for x in vector {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(metadata.as_bytes());
}

fn read_u64(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
    path: &str,
) -> Result<Option<u64>, StoreError> {
    let Some(g) = meta.get(key).map_err(|e| redb_err(path, e))? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = g.value().try_into().map_err(|_| StoreError::Corrupt {
        path: path.to_string(),
        detail: format!("{key} has {} bytes, not 8", g.value().len()),
    })?;
    Ok(Some(u64::from_le_bytes(bytes)))
}

/// The tables a write touches, kept consistent: one `log` entry per id, at its last write,
/// and `ids` current for every write at or before `ids_seq`. The places the write gives its
/// ids are kept aside until it commits.
struct Tables<'t, 'r> {
    log: redb::Table<'t, (u64, u64), &'static [u8]>,
    ids: redb::Table<'t, u64, u64>,
    tombstones: redb::Table<'t, u64, u64>,
    rows: &'r BTreeMap<u64, u64>,
    ids_seq: u64,
    /// Each id this write touched: the seq of its row, or `None`: gone.
    places: HashMap<u64, Option<u64>>,
}

impl<'t, 'r> Tables<'t, 'r> {
    fn open(
        txn: &'t redb::WriteTransaction,
        rows: &'r BTreeMap<u64, u64>,
        ids_seq: u64,
    ) -> Result<Self, redb::Error> {
        Ok(Tables {
            log: txn.open_table(LOG)?,
            ids: txn.open_table(IDS)?,
            tombstones: txn.open_table(TOMBSTONES)?,
            rows,
            ids_seq,
            places: HashMap::new(),
        })
    }

    /// Where `id`'s row lies, this write's earlier steps included.
    fn place(&self, id: u64) -> Option<u64> {
        match self.places.get(&id) {
            Some(place) => *place,
            None => self.rows.get(&id).copied(),
        }
    }

    /// Forgets where `id` was last written (its row's or its tombstone's log entry).
    fn forget(&mut self, id: u64) -> Result<(), redb::Error> {
        if let Some(seq) = self.place(id) {
            self.log.remove((seq, id))?;
        }
        if let Some(seq) = self.tombstones.remove(id)?.map(|g| g.value()) {
            self.log.remove((seq, id))?;
        }
        Ok(())
    }

    /// Stores `id`'s encoded row, written at `seq`.
    fn put_row(&mut self, id: u64, seq: u64, value: &[u8]) -> Result<(), redb::Error> {
        self.forget(id)?;
        self.log.insert((seq, id), value)?;
        if seq <= self.ids_seq {
            self.ids.insert(id, seq)?;
        }
        self.places.insert(id, Some(seq));
        Ok(())
    }

    /// Deletes `id` at `seq`, leaving a tombstone; true if a row was there.
    fn put_gone(&mut self, id: u64, seq: u64) -> Result<bool, redb::Error> {
        let was = self.place(id).is_some();
        self.forget(id)?;
        if seq > 0 {
            self.tombstones.insert(id, seq)?;
            self.log.insert((seq, id), [].as_slice())?;
        }
        if seq <= self.ids_seq {
            self.ids.remove(id)?;
        }
        self.places.insert(id, None);
        Ok(was)
    }
}

fn set_seq(txn: &redb::WriteTransaction, seq: u64) -> Result<(), redb::Error> {
    let mut meta = txn.open_table(META)?;
    meta.insert("seq", seq.to_le_bytes().as_slice())?;
    Ok(())
}

fn redb_err(path: &str, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Redb {
        path: path.to_string(),
        source: e.into(),
    }
}

/// Which replica a partition file belongs to. Its name says it all, so that a node can tell
/// the files of deleted collections and of moved replicas from those it still serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreName {
    pub collection: String,
    /// The collection's incarnation: a collection created again has another one.
    pub incarnation: u64,
    pub partition: u32,
    /// The placement's generation: a replica placed anew starts from an empty file.
    pub generation: u64,
}

impl StoreName {
    /// `docs~i3~p0~g17.redb` (`~` is not allowed in collection names).
    pub fn file_name(&self) -> String {
        format!(
            "{}~i{}~p{}~g{}.redb",
            self.collection, self.incarnation, self.partition, self.generation
        )
    }

    /// The name a [`StoreName::file_name`] gave, or `None` for any other file.
    pub fn parse(file_name: &str) -> Option<StoreName> {
        let stem = file_name.strip_suffix(".redb")?;
        let mut parts = stem.split('~');
        let collection = parts.next()?.to_string();
        let mut number =
            |tag: char| -> Option<u64> { parts.next()?.strip_prefix(tag)?.parse().ok() };
        let incarnation = number('i')?;
        let partition = u32::try_from(number('p')?).ok()?;
        let generation = number('g')?;
        if parts.next().is_some() || collection.is_empty() {
            return None;
        }
        Some(StoreName {
            collection,
            incarnation,
            partition,
            generation,
        })
    }
}

/// The folder of a node's data folder that holds partition files.
pub fn partitions_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("partitions")
}

/// Where a partition replica keeps its file under a node's data folder.
pub fn store_path(data_dir: &Path, name: &StoreName) -> PathBuf {
    partitions_dir(data_dir).join(name.file_name())
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

    fn record(id: u64, vector: Vec<f32>, metadata: &str) -> VectorRecord {
        VectorRecord {
            id,
            vector,
            metadata: metadata.into(),
        }
    }

    fn batch(records: Vec<VectorRecord>) -> CheckedBatch {
        CheckedBatch::new(2, &Rows::from_records(records).unwrap()).unwrap()
    }

    #[test]
    fn writes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), &test_name(3));
        {
            let mut store = Store::open(&path, 2, Metric::Cosine).unwrap();
            let b = batch(vec![
                record(1, vec![1.0, 2.0], r#"{"a": 1}"#),
                record(2, vec![3.0, 4.0], ""),
                record(3, vec![5.0, 6.0], r#"{"b": "x"}"#),
            ]);
            assert_eq!(store.upsert(&b, 1).unwrap(), 1);
            assert_eq!(store.delete(&[2, 99], 1).unwrap(), (2, 1));
            let b = batch(vec![record(3, vec![7.0, 8.0], r#"{"b": "y"}"#)]);
            assert_eq!(store.upsert(&b, 1).unwrap(), 3);
        }
        let store = Store::open(&path, 2, Metric::Cosine).unwrap();
        assert_eq!(store.seq(), 3);
        let all = store.load_all().unwrap();
        assert_eq!(
            all,
            vec![
                StoredRecord {
                    id: 1,
                    seq: 1,
                    vector: vec![1.0, 2.0],
                    metadata: r#"{"a":1}"#.into()
                },
                StoredRecord {
                    id: 3,
                    seq: 3,
                    vector: vec![7.0, 8.0],
                    metadata: r#"{"b":"y"}"#.into()
                },
            ]
        );
        assert_eq!(store.tombstones().unwrap(), vec![(2, 2), (99, 2)]);
        drop(store);
        // Another shape is refused, not silently reinterpreted.
        let err = Store::open(&path, 3, Metric::Cosine).unwrap_err();
        assert!(err.to_string().contains("holds dimension 2"), "{err}");
        let err = Store::open(&path, 2, Metric::L2).unwrap_err();
        assert!(err.to_string().contains("metric cosine"), "{err}");
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_lives() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), &test_name(0));
        let _first = Store::open(&path, 2, Metric::Dot).unwrap();
        assert!(matches!(
            Store::open(&path, 2, Metric::Dot),
            Err(StoreError::AlreadyOpen { .. })
        ));
        // Rows hold document text: the file is the node's account's alone.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_batches_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), &test_name(0));
        let mut store = Store::open(&path, 2, Metric::Dot).unwrap();
        store
            .upsert(&batch(vec![record(1, vec![1.0, 1.0], "{}")]), 1)
            .unwrap();
        let bad: Vec<(Vec<VectorRecord>, &str)> = vec![
            (vec![record(2, vec![1.0], "{}")], "dimension is 2"),
            (vec![record(2, vec![1.0, f32::NAN], "{}")], "non-finite"),
            (
                vec![record(2, vec![1.0, f32::INFINITY], "{}")],
                "non-finite",
            ),
            (
                vec![record(2, vec![1.0, 1.0], "[1]")],
                "must be a JSON object",
            ),
            (vec![record(2, vec![1.0, 1.0], "{")], "not JSON"),
            (
                vec![
                    record(2, vec![1.0, 1.0], "{}"),
                    record(2, vec![1.0, 1.0], "{}"),
                ],
                "more than once",
            ),
            (
                (0..MAX_BATCH_ROWS as u64 + 1)
                    .map(|i| record(i, vec![0.0, 0.0], ""))
                    .collect(),
                "at most 10000",
            ),
            (
                vec![record(
                    2,
                    vec![1.0, 1.0],
                    &format!("{{\"x\":\"{}\"}}", "y".repeat(70_000)),
                )],
                "at most 65536",
            ),
        ];
        for (records, why) in bad {
            let rows = Rows::from_records(records).unwrap();
            let err = CheckedBatch::new(2, &rows).unwrap_err().to_string();
            assert!(err.contains(why), "{err} (wanted {why})");
        }
        let err = store.delete(&vec![1; MAX_DELETE_IDS + 1], 1).unwrap_err();
        assert!(err.to_string().contains("at most 100000"), "{err}");
        assert_eq!(store.seq(), 1);
        drop(store);
        let store = Store::open(&path, 2, Metric::Dot).unwrap();
        assert_eq!(store.seq(), 1);
        assert_eq!(store.load_all().unwrap().len(), 1);
        assert!(store.tombstones().unwrap().is_empty());
    }

    #[test]
    fn changes_after_a_position_are_every_row_and_delete_since_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store =
            Store::open(&store_path(dir.path(), &test_name(0)), 2, Metric::Dot).unwrap();
        assert!(store.created());
        let b = |ids: &[u64]| {
            batch(
                ids.iter()
                    .map(|&i| record(i, vec![i as f32, 0.0], ""))
                    .collect(),
            )
        };
        store.upsert(&b(&[1, 2, 3]), 1).unwrap(); // seq 1
        store.upsert(&b(&[2]), 1).unwrap(); // seq 2: id 2 moves on
        store.delete(&[3], 2).unwrap(); // seq 3, epoch 2
        store.upsert(&b(&[4]), 2).unwrap(); // seq 4
        assert_eq!(store.history(), &vec![(1, 1), (2, 3)]);
        let all = |after| store.changes_after(after, 100, usize::MAX).unwrap();
        let (changes, next) = all((0, u64::MAX));
        assert_eq!(next, None);
        let seen: Vec<(u64, u64)> = changes.iter().map(|c| (c.seq(), c.id())).collect();
        assert_eq!(seen, vec![(1, 1), (2, 2), (3, 3), (4, 4)]);
        assert!(matches!(changes[2], Change::Gone { seq: 3, id: 3 }));
        let (after_2, _) = all((2, u64::MAX));
        assert_eq!(
            after_2.iter().map(Change::id).collect::<Vec<_>>(),
            vec![3, 4]
        );
        // Pages: a limit, and where to go on from.
        let (page, next) = store.changes_after((0, u64::MAX), 2, usize::MAX).unwrap();
        assert_eq!((page.len(), next), (2, Some((2, 2))));
        assert_eq!(store.written_after(2).unwrap(), vec![3, 4]);
        let versions = store.versions(&[2, 3, 9]).unwrap();
        assert!(matches!(&versions[0], Change::Row { seq: 2, record } if record.id == 2));
        assert_eq!(versions[1], Change::Gone { seq: 3, id: 3 });
        assert_eq!(versions[2], Change::Gone { seq: 0, id: 9 });

        // Another store takes them as they are, with their sequence numbers and history.
        let mut copy = Store::open(&store_path(dir.path(), &test_name(1)), 2, Metric::Dot).unwrap();
        copy.install(&changes, 4, store.history()).unwrap();
        assert_eq!((copy.seq(), copy.history()), (4, store.history()));
        assert_eq!(copy.load_all().unwrap(), store.load_all().unwrap());
        assert_eq!(copy.tombstones().unwrap(), store.tombstones().unwrap());
        assert_eq!(
            all((0, u64::MAX)).0,
            copy.changes_after((0, u64::MAX), 100, usize::MAX)
                .unwrap()
                .0
        );
        // Undo on the primary's word: id 4 was never written there.
        copy.install(&[Change::Gone { seq: 0, id: 4 }], 3, &[(1, 1), (2, 3)])
            .unwrap();
        assert_eq!(copy.seq(), 3);
        assert!(copy.get(&[4]).unwrap().is_empty());
        // And a reset forgets everything.
        assert_eq!(copy.reset().unwrap(), vec![1, 2]);
        assert_eq!((copy.seq(), copy.history().len()), (0, 0));
        assert!(
            copy.changes_after((0, u64::MAX), 100, usize::MAX)
                .unwrap()
                .0
                .is_empty()
        );
        drop(copy);
        let reopened = Store::open(&store_path(dir.path(), &test_name(1)), 2, Metric::Dot).unwrap();
        assert!(!reopened.created());
        assert_eq!(reopened.seq(), 0);
    }

    #[test]
    fn store_names_round_trip_and_other_files_are_not_ours() {
        let name = StoreName {
            collection: "my_docs-2".into(),
            incarnation: 3,
            partition: 7,
            generation: 41,
        };
        assert_eq!(name.file_name(), "my_docs-2~i3~p7~g41.redb");
        assert_eq!(StoreName::parse(&name.file_name()), Some(name));
        for other in [
            "docs-0.redb",
            "docs~i1~p0.redb",
            "x~i1~p0~g2~z.redb",
            "~i1~p0~g2.redb",
            "a~i1~p0~gx.redb",
        ] {
            assert_eq!(StoreName::parse(other), None, "{other}");
        }
    }

    #[test]
    fn deletes_are_read_by_id_page_by_page() {
        let dir = tempfile::tempdir().unwrap();
        let mut primary =
            Store::open(&store_path(dir.path(), &test_name(0)), 2, Metric::Dot).unwrap();
        let b = |ids: &[u64]| {
            batch(
                ids.iter()
                    .map(|&i| record(i, vec![i as f32, 1.0], ""))
                    .collect(),
            )
        };
        primary.upsert(&b(&[1, 2, 3, 4]), 1).unwrap(); // 1
        primary.delete(&[2, 3], 1).unwrap(); // 2
        primary.delete(&[9], 1).unwrap(); // 3
        let (gone, next) = primary.tombstones_after(None, 2).unwrap();
        assert_eq!((gone, next), (vec![(2, 2), (3, 2)], Some(3)));
        let (rest, next) = primary.tombstones_after(Some(3), 10).unwrap();
        assert_eq!((rest, next), (vec![(9, 3)], None));
        // A row written again is no longer deleted.
        primary.upsert(&b(&[3]), 1).unwrap();
        assert_eq!(primary.tombstones().unwrap(), vec![(2, 2), (9, 3)]);
    }

    #[test]
    fn a_copy_of_every_change_holds_the_primarys_rows_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let mut primary =
            Store::open(&store_path(dir.path(), &test_name(0)), 2, Metric::Dot).unwrap();
        for ids in [[7u64, 3], [1, 9], [5, 2], [3, 8]] {
            let rows = ids
                .iter()
                .map(|&i| record(i, vec![i as f32, 1.0], "{\"k\":1}"))
                .collect();
            primary.upsert(&batch(rows), 1).unwrap();
        }
        primary.delete(&[9, 4], 2).unwrap(); // seq 5, epoch 2
        let history = primary.history().clone();

        // Pages of 3, each installed with the sequence number it covers, as recovery does.
        let mut copy = Store::open(&store_path(dir.path(), &test_name(1)), 2, Metric::Dot).unwrap();
        let mut after = (0, u64::MAX);
        loop {
            let (page, next) = primary.changes_after(after, 3, usize::MAX).unwrap();
            let covered = next.map_or(primary.seq(), |(s, _)| s - 1);
            copy.install(&page, covered, &history).unwrap();
            match next {
                Some(n) => after = n,
                None => break,
            }
        }
        let everything = |s: &Store| s.changes_after((0, u64::MAX), 100, usize::MAX).unwrap().0;
        assert_eq!(everything(&copy), everything(&primary));
        assert_eq!((copy.seq(), copy.history()), (5, &history));
        assert_eq!(copy.load_all().unwrap(), primary.load_all().unwrap());
        assert_eq!(copy.tombstones().unwrap(), primary.tombstones().unwrap());
        drop(copy);
        let reopened = Store::open(&store_path(dir.path(), &test_name(1)), 2, Metric::Dot).unwrap();
        assert_eq!(everything(&reopened), everything(&primary));
        assert_eq!(reopened.load_all().unwrap(), primary.load_all().unwrap());
    }

    /// Every row's place, as an open finds it, against the rows as they were written.
    fn assert_reopens_as(path: &Path, expected: &[StoredRecord], tombstones: &[(u64, u64)]) {
        let store = Store::open(path, 2, Metric::Dot).unwrap();
        assert_eq!(store.load_all().unwrap(), expected);
        assert_eq!(store.row_count().unwrap(), expected.len() as u64);
        assert_eq!(store.tombstones().unwrap(), tombstones);
        let mut seen = Vec::new();
        store
            .for_each(|r| {
                seen.push(r);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        seen.sort_by_key(|r| r.id);
        assert_eq!(seen, expected);
    }

    #[test]
    fn rows_are_found_again_after_ids_was_written_and_after_writes_older_than_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), &test_name(0));
        let b = |ids: &[u64], x: f32| {
            batch(
                ids.iter()
                    .map(|&i| record(i, vec![i as f32, x], ""))
                    .collect(),
            )
        };
        let mut store = Store::open(&path, 2, Metric::Dot).unwrap();
        store.upsert(&b(&[1, 2, 3, 4], 1.0), 1).unwrap(); // 1
        store.delete(&[2], 1).unwrap(); // 2
        store.write_ids().unwrap();
        assert_eq!((store.ids_seq, store.unindexed.len()), (2, 0));
        // After `ids_seq`: a row written anew, a delete, a new row (read from the log on open).
        store.upsert(&b(&[3, 5], 2.0), 1).unwrap(); // 3
        store.delete(&[1], 1).unwrap(); // 4
        // At or before `ids_seq`: an undo installs older versions (written to `ids` at once).
        store
            .install(
                &[
                    Change::Row {
                        seq: 2,
                        record: record(2, vec![2.0, 9.0], ""),
                    },
                    Change::Gone { seq: 0, id: 4 },
                ],
                4,
                &[(1, 1)],
            )
            .unwrap();
        let expected = store.load_all().unwrap();
        let tombstones = store.tombstones().unwrap();
        assert_eq!(
            expected.iter().map(|r| (r.id, r.seq)).collect::<Vec<_>>(),
            vec![(2, 2), (3, 3), (5, 3)]
        );
        drop(store);
        assert_reopens_as(&path, &expected, &tombstones);
        // And once more after `ids` is written again from what the open found.
        let mut store = Store::open(&path, 2, Metric::Dot).unwrap();
        assert_eq!(
            store.unindexed.len(),
            3,
            "the log after ids_seq: 3, 5 and 1"
        );
        store.write_ids().unwrap();
        store.upsert(&b(&[6], 3.0), 1).unwrap();
        let expected = store.load_all().unwrap();
        drop(store);
        assert_reopens_as(&path, &expected, &tombstones);
    }

    #[test]
    fn ids_is_written_anew_each_time_a_quarter_of_the_rows_were_written() {
        assert!(!index_due(INDEX_AFTER_IDS - 1, 0));
        assert!(index_due(INDEX_AFTER_IDS, 0));
        assert!(!index_due(INDEX_AFTER_IDS, 1_000_000));
        assert!(index_due(250_000, 1_000_000));
    }

    #[test]
    fn a_file_of_the_first_layout_is_upgraded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), &test_name(0));
        // Layout 1, as the first version wrote it: rows 1 (seq 1) and 3 (seq 3), 2 deleted
        // at seq 2.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut records = txn.open_table(OLD_RECORDS).unwrap();
                let mut changes = txn.open_table(OLD_CHANGES).unwrap();
                let mut tombstones = txn.open_table(TOMBSTONES).unwrap();
                let mut epochs = txn.open_table(EPOCHS).unwrap();
                let mut meta = txn.open_table(META).unwrap();
                let mut row = Vec::new();
                for (id, seq, meta_text) in [(1u64, 1u64, "{\"a\":1}"), (3, 3, "{}")] {
                    encode_row(&mut row, &[id as f32, 1.0], meta_text);
                    let value = [seq.to_le_bytes().as_slice(), &row].concat();
                    records.insert(id, value.as_slice()).unwrap();
                    changes.insert((seq, id), 1).unwrap();
                }
                changes.insert((2, 2), GONE).unwrap();
                tombstones.insert(2, 2).unwrap();
                epochs.insert(1, 1).unwrap();
                meta.insert("shape", "dimension 2 metric dot".as_bytes())
                    .unwrap();
                meta.insert("seq", 3u64.to_le_bytes().as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Store::open(&path, 2, Metric::Dot).unwrap();
        assert_eq!((store.seq(), store.history()), (3, &vec![(1, 1)]));
        let upgraded = store.load_all().unwrap();
        assert_eq!(
            store.load_all().unwrap(),
            vec![
                StoredRecord {
                    id: 1,
                    seq: 1,
                    vector: vec![1.0, 1.0],
                    metadata: "{\"a\":1}".into()
                },
                StoredRecord {
                    id: 3,
                    seq: 3,
                    vector: vec![3.0, 1.0],
                    metadata: "{}".into()
                },
            ]
        );
        let (changes, _) = store.changes_after((0, u64::MAX), 10, usize::MAX).unwrap();
        let seen: Vec<(u64, u64)> = changes.iter().map(|c| (c.seq(), c.id())).collect();
        assert_eq!(seen, vec![(1, 1), (2, 2), (3, 3)]);
        assert_eq!(changes[1], Change::Gone { seq: 2, id: 2 });
        drop(store);
        // Upgraded once: the old tables are gone, and an open finds the rows in the new ones.
        assert_reopens_as(&path, &upgraded, &[(2, 2)]);
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .collect();
        assert!(
            !names.iter().any(|n| n == "records" || n == "changes"),
            "{names:?}"
        );
    }
}
