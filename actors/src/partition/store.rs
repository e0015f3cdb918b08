//! A partition replica's durable rows, in one redb file.
//!
//! Every write (an upsert batch or a delete batch) is ONE redb write transaction, committed
//! with redb's default `Durability::Immediate` (fsync) before the call returns: a write that
//! was acknowledged survives a crash or a power loss. Each write takes the next sequence
//! number, stored with every row it touched (and with a tombstone for every id it deleted),
//! and the epoch it was written in, so that replication can ask "everything after N"
//! ([`Store::changes_after`]) and find where two replicas' histories part
//! (`partition::replication`).
//!
//! Tables:
//! - `records`: id -> `seq (u64 LE) | vector (dim × f32 LE) | metadata (UTF-8 JSON object)`
//! - `tombstones`: id -> seq of the delete (dropped again when the id is written anew)
//! - `changes`: (seq, id) -> 1 for a row, 0 for a tombstone: one entry per id, at its last
//!   write, so the rows and deletes after a sequence number are a range scan
//! - `epochs`: epoch -> the first sequence number written in it (the replica's history)
//! - `meta`: `shape` (dimension and metric, so a file is never reopened with another shape)
//!   and `seq`.
//!
//! Input is checked before anything is written ([`CheckedBatch`]); a refused batch changes
//! nothing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use arbor_kernels::topk::Metric;
use arbor_proto::gateway::json_type;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde_json::{Map, Value};

use super::messages::VectorRecord;

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
const TOMBSTONES: TableDefinition<u64, u64> = TableDefinition::new("tombstones");
const CHANGES: TableDefinition<(u64, u64), u8> = TableDefinition::new("changes");
const EPOCHS: TableDefinition<u64, u64> = TableDefinition::new("epochs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const ROW: u8 = 1;
const GONE: u8 = 0;

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
    pub fn new(dim: usize, records: &[VectorRecord]) -> Result<Self, InvalidInput> {
        if records.len() > MAX_BATCH_ROWS {
            return Err(InvalidInput::TooManyRows {
                rows: records.len(),
                max: MAX_BATCH_ROWS,
            });
        }
        let mut seen = HashSet::with_capacity(records.len());
        let mut batch = CheckedBatch {
            ids: Vec::with_capacity(records.len()),
            vectors: Vec::with_capacity(records.len() * dim),
            metadata: Vec::with_capacity(records.len()),
        };
        for r in records {
            let id = r.id;
            if !seen.insert(id) {
                return Err(InvalidInput::DuplicateId { id });
            }
            if r.vector.len() != dim {
                return Err(InvalidInput::WrongDimension {
                    id,
                    got: r.vector.len(),
                    dim,
                });
            }
            if let Some((position, &value)) =
                r.vector.iter().enumerate().find(|(_, x)| !x.is_finite())
            {
                return Err(InvalidInput::NonFinite {
                    id,
                    position,
                    value,
                });
            }
            let map = parse_metadata(id, &r.metadata)?;
            let text = serde_json::to_string(&map).map_err(|e| InvalidInput::MetadataNotJson {
                id,
                reason: e.to_string(),
            })?;
            batch.ids.push(id);
            batch.vectors.extend_from_slice(&r.vector);
            batch.metadata.push((map, text));
        }
        Ok(batch)
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

/// A partition replica's redb file.
pub struct Store {
    db: Database,
    path: String,
    dim: usize,
    metric: Metric,
    seq: u64,
    history: History,
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
            .finish()
    }
}

impl Store {
    /// Opens (or creates, with its parent folders) the store at `path` for rows of `dim`
    /// components compared by `metric`. An existing file of another shape is refused.
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
            created,
        };
        store.init()?;
        Ok(store)
    }

    /// Creates the tables and the shape on first open; checks the shape and reads the
    /// sequence number afterwards.
    fn init(&mut self) -> Result<(), StoreError> {
        let p = self.path.clone();
        let shape = format!("dimension {} metric {}", self.dim, self.metric);
        let txn = self.db.begin_write().map_err(|e| redb_err(&p, e))?;
        {
            txn.open_table(RECORDS).map_err(|e| redb_err(&p, e))?;
            txn.open_table(TOMBSTONES).map_err(|e| redb_err(&p, e))?;
            txn.open_table(CHANGES).map_err(|e| redb_err(&p, e))?;
            let epochs = txn.open_table(EPOCHS).map_err(|e| redb_err(&p, e))?;
            self.history = epochs
                .iter()
                .map_err(|e| redb_err(&p, e))?
                .map(|row| row.map(|(e, s)| (e.value(), s.value())))
                .collect::<Result<_, _>>()
                .map_err(|e| redb_err(&p, e))?;
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
            self.seq = match meta.get("seq").map_err(|e| redb_err(&p, e))? {
                None => 0,
                Some(g) => {
                    u64::from_le_bytes(g.value().try_into().map_err(|_| StoreError::Corrupt {
                        path: p.clone(),
                        detail: format!("seq has {} bytes, not 8", g.value().len()),
                    })?)
                }
            };
        }
        txn.commit().map_err(|e| redb_err(&p, e))
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
        {
            let mut t = Tables::open(&txn).map_err(|e| redb_err(&p, e))?;
            let mut value = Vec::new();
            for ((&id, vector), (_, text)) in batch
                .ids
                .iter()
                .zip(batch.vectors.chunks_exact(self.dim))
                .zip(&batch.metadata)
            {
                encode_record(&mut value, seq, vector, text);
                t.put_row(id, seq, &value).map_err(|e| redb_err(&p, e))?;
            }
            set_seq(&txn, seq).map_err(|e| redb_err(&p, e))?;
        }
        let history = self
            .note_epoch(&txn, epoch, seq)
            .map_err(|e| redb_err(&p, e))?;
        txn.commit().map_err(|e| redb_err(&p, e))?;
        self.seq = seq;
        self.history = history;
        Ok(seq)
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
        {
            let mut t = Tables::open(&txn).map_err(|e| redb_err(&p, e))?;
            for &id in ids {
                if t.put_gone(id, seq).map_err(|e| redb_err(&p, e))? {
                    removed += 1;
                }
            }
            set_seq(&txn, seq).map_err(|e| redb_err(&p, e))?;
        }
        let history = self
            .note_epoch(&txn, epoch, seq)
            .map_err(|e| redb_err(&p, e))?;
        txn.commit().map_err(|e| redb_err(&p, e))?;
        self.seq = seq;
        self.history = history;
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
        {
            let mut t = Tables::open(&txn).map_err(|e| redb_err(&p, e))?;
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
                        encode_record(&mut value, *seq, &record.vector, &record.metadata);
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
        }
        txn.commit().map_err(|e| redb_err(&p, e))?;
        self.seq = seq;
        self.history = history.iter().copied().filter(|(_, s)| *s <= seq).collect();
        Ok(out)
    }

    /// Rows copied from a primary into a store that was [reset](Store::reset), page by page,
    /// without their change entries: rows come in id order, so their sequence numbers are
    /// scattered, and entries written page by page would land on random pages of the change
    /// index and rewrite most of it at every page (at a million rows, most of the copy's
    /// time). [`Store::finish_copy`] writes them all at once, in order. The pages are not
    /// durable on their own (no fsync): until `finish_copy`, this store's sequence number is
    /// 0 and a copy that stops half way starts over from an empty store.
    pub fn install_copied(
        &mut self,
        rows: &[VectorRecord],
        seqs: &[u64],
    ) -> Result<Vec<(u64, Option<StoredRecord>)>, StoreError> {
        let p = self.path.clone();
        if self.seq != 0 {
            return Err(StoreError::Corrupt {
                path: p,
                detail: format!(
                    "a copy was installed into a store that holds writes up to {}",
                    self.seq
                ),
            });
        }
        let mut txn = self.db.begin_write().map_err(|e| redb_err(&p, e))?;
        txn.set_durability(redb::Durability::None)
            .map_err(|e| redb_err(&p, e))?;
        let mut out = Vec::with_capacity(rows.len());
        {
            let mut records = txn.open_table(RECORDS).map_err(|e| redb_err(&p, e))?;
            let mut value = Vec::new();
            for (record, &seq) in rows.iter().zip(seqs) {
                if record.vector.len() != self.dim {
                    return Err(InvalidInput::WrongDimension {
                        id: record.id,
                        got: record.vector.len(),
                        dim: self.dim,
                    }
                    .into());
                }
                encode_record(&mut value, seq, &record.vector, &record.metadata);
                records
                    .insert(record.id, value.as_slice())
                    .map_err(|e| redb_err(&p, e))?;
                out.push((
                    record.id,
                    Some(StoredRecord {
                        id: record.id,
                        seq,
                        vector: record.vector.clone(),
                        metadata: record.metadata.clone(),
                    }),
                ));
            }
        }
        txn.commit().map_err(|e| redb_err(&p, e))?;
        Ok(out)
    }

    /// Ends a copy begun with [`Store::install_copied`]: the change entries of the copied
    /// rows (`written`: `(seq, id)`, sorted here), then `seq` and `history`, in one durable
    /// transaction (which also makes the pages before it durable).
    pub fn finish_copy(
        &mut self,
        written: &mut [(u64, u64)],
        seq: u64,
        history: &[(u64, u64)],
    ) -> Result<(), StoreError> {
        written.sort_unstable();
        let p = self.path.clone();
        let txn = self.db.begin_write().map_err(|e| redb_err(&p, e))?;
        {
            let mut changes = txn.open_table(CHANGES).map_err(|e| redb_err(&p, e))?;
            for &entry in written.iter() {
                changes.insert(entry, ROW).map_err(|e| redb_err(&p, e))?;
            }
            set_seq(&txn, seq).map_err(|e| redb_err(&p, e))?;
            let mut epochs = txn.open_table(EPOCHS).map_err(|e| redb_err(&p, e))?;
            for (e, _) in &self.history {
                epochs.remove(*e).map_err(|e| redb_err(&p, e))?;
            }
            for (e, s) in history.iter().filter(|(_, s)| *s <= seq) {
                epochs.insert(*e, *s).map_err(|e| redb_err(&p, e))?;
            }
        }
        txn.commit().map_err(|e| redb_err(&p, e))?;
        self.seq = seq;
        self.history = history.iter().copied().filter(|(_, s)| *s <= seq).collect();
        Ok(())
    }

    /// Forgets everything: rows, tombstones, history and sequence number (a replica whose
    /// history shares nothing with its primary's copies everything anew). Returns the ids
    /// that were stored.
    pub fn reset(&mut self) -> Result<Vec<u64>, StoreError> {
        let p = self.path.clone();
        let ids: Vec<u64> = {
            let txn = self.db.begin_read().map_err(|e| redb_err(&p, e))?;
            let records = txn.open_table(RECORDS).map_err(|e| redb_err(&p, e))?;
            records
                .iter()
                .map_err(|e| redb_err(&p, e))?
                .map(|row| row.map(|(id, _)| id.value()))
                .collect::<Result<_, _>>()
                .map_err(|e| redb_err(&p, e))?
        };
        let txn = self.db.begin_write().map_err(|e| redb_err(&p, e))?;
        {
            txn.delete_table(RECORDS).map_err(|e| redb_err(&p, e))?;
            txn.delete_table(TOMBSTONES).map_err(|e| redb_err(&p, e))?;
            txn.delete_table(CHANGES).map_err(|e| redb_err(&p, e))?;
            txn.delete_table(EPOCHS).map_err(|e| redb_err(&p, e))?;
            Tables::open(&txn).map_err(|e| redb_err(&p, e))?;
            txn.open_table(EPOCHS).map_err(|e| redb_err(&p, e))?;
            set_seq(&txn, 0).map_err(|e| redb_err(&p, e))?;
        }
        txn.commit().map_err(|e| redb_err(&p, e))?;
        self.seq = 0;
        self.history.clear();
        Ok(ids)
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
        let changes = txn.open_table(CHANGES).map_err(|e| redb_err(p, e))?;
        let records = txn.open_table(RECORDS).map_err(|e| redb_err(p, e))?;
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
        for row in changes.range(start..).map_err(|e| redb_err(p, e))? {
            if out.len() >= limit || (bytes >= max_bytes && !out.is_empty()) {
                return Ok((out, last));
            }
            let (key, kind) = row.map_err(|e| redb_err(p, e))?;
            let (seq, id) = key.value();
            last = Some((seq, id));
            if kind.value() == ROW {
                let value = records
                    .get(id)
                    .map_err(|e| redb_err(p, e))?
                    .ok_or_else(|| StoreError::Corrupt {
                        path: p.clone(),
                        detail: format!("change ({seq}, {id}) names a row that is not stored"),
                    })?;
                let value = value.value();
                bytes = bytes.saturating_add(value.len() + 32);
                let r = self.decode_record(id, value)?;
                out.push(Change::Row {
                    seq,
                    record: VectorRecord {
                        id,
                        vector: r.vector,
                        metadata: r.metadata,
                    },
                });
            } else {
                bytes = bytes.saturating_add(24);
                out.push(Change::Gone { seq, id });
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

    /// Takes deletes copied from a primary (`(id, seq)`) unless this store already holds a
    /// newer write of the id, in one durable transaction; leaves the sequence number and the
    /// history alone. Returns the ids whose rows were removed.
    pub fn install_tombstones(&mut self, gone: &[(u64, u64)]) -> Result<Vec<u64>, StoreError> {
        let p = self.path.clone();
        let txn = self.db.begin_write().map_err(|e| redb_err(&p, e))?;
        let mut removed = Vec::new();
        {
            let mut t = Tables::open(&txn).map_err(|e| redb_err(&p, e))?;
            for &(id, seq) in gone {
                let row = t
                    .records
                    .get(id)
                    .map_err(|e| redb_err(&p, e))?
                    .map(|g| row_seq(g.value()));
                let tomb = t
                    .tombstones
                    .get(id)
                    .map_err(|e| redb_err(&p, e))?
                    .map(|g| g.value());
                if row.is_some_and(|r| r >= seq) || tomb.is_some_and(|t| t >= seq) {
                    continue;
                }
                if t.put_gone(id, seq).map_err(|e| redb_err(&p, e))? {
                    removed.push(id);
                }
            }
        }
        txn.commit().map_err(|e| redb_err(&p, e))?;
        Ok(removed)
    }

    /// The current state of each id, in the order asked: its row, or that it is gone (with
    /// the seq of its tombstone, 0 when there is none).
    pub fn versions(&self, ids: &[u64]) -> Result<Vec<Change>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| redb_err(p, e))?;
        let records = txn.open_table(RECORDS).map_err(|e| redb_err(p, e))?;
        let tombstones = txn.open_table(TOMBSTONES).map_err(|e| redb_err(p, e))?;
        ids.iter()
            .map(|&id| match records.get(id).map_err(|e| redb_err(p, e))? {
                Some(value) => {
                    let r = self.decode_record(id, value.value())?;
                    Ok(Change::Row {
                        seq: r.seq,
                        record: VectorRecord {
                            id,
                            vector: r.vector,
                            metadata: r.metadata,
                        },
                    })
                }
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
        let changes = txn.open_table(CHANGES).map_err(|e| redb_err(p, e))?;
        let Some(from) = seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        changes
            .range((from, 0)..)
            .map_err(|e| redb_err(p, e))?
            .map(|row| row.map(|(k, _)| k.value().1).map_err(|e| redb_err(p, e)))
            .collect()
    }

    /// Calls `f` with every stored row, in id order, without holding them all at once.
    pub fn for_each<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(StoredRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| redb_err(p, e))?;
        let records = txn.open_table(RECORDS).map_err(|e| redb_err(p, e))?;
        for row in records.iter().map_err(|e| redb_err(p, e))? {
            let (id, value) = row.map_err(|e| redb_err(p, e))?;
            f(self.decode_record(id.value(), value.value())?)?;
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
        let records = txn.open_table(RECORDS).map_err(|e| redb_err(p, e))?;
        let mut bytes = 0usize;
        for row in records.range(ids).map_err(|e| redb_err(p, e))? {
            if out.len() >= limit || (bytes >= max_bytes && !out.is_empty()) {
                return Ok((out, true));
            }
            let (id, value) = row.map_err(|e| redb_err(p, e))?;
            let value = value.value();
            bytes = bytes.saturating_add(value.len() + 32);
            out.push(self.decode_record(id.value(), value)?);
        }
        Ok((out, false))
    }

    /// The stored rows with these ids, in the order asked; ids not stored are left out.
    pub fn get(&self, ids: &[u64]) -> Result<Vec<StoredRecord>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| redb_err(p, e))?;
        let records = txn.open_table(RECORDS).map_err(|e| redb_err(p, e))?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(value) = records.get(id).map_err(|e| redb_err(p, e))? {
                out.push(self.decode_record(id, value.value())?);
            }
        }
        Ok(out)
    }

    /// The metadata text of each id, in the order asked (`None` for an id not stored),
    /// without decoding the vectors.
    pub fn metadata_of(&self, ids: &[u64]) -> Result<Vec<Option<String>>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| redb_err(p, e))?;
        let records = txn.open_table(RECORDS).map_err(|e| redb_err(p, e))?;
        let vector_end = 8 + self.dim * 4;
        ids.iter()
            .map(|&id| {
                let Some(value) = records.get(id).map_err(|e| redb_err(p, e))? else {
                    return Ok(None);
                };
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
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| redb_err(p, e))?;
        let records = txn.open_table(RECORDS).map_err(|e| redb_err(p, e))?;
        records.len().map_err(|e| redb_err(p, e))
    }

    /// Every stored row, in id order.
    pub fn load_all(&self) -> Result<Vec<StoredRecord>, StoreError> {
        let mut all = Vec::new();
        self.for_each(|r| {
            all.push(r);
            Ok::<_, StoreError>(())
        })?;
        Ok(all)
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

    fn decode_record(&self, id: u64, bytes: &[u8]) -> Result<StoredRecord, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            detail: format!("record {id}: {detail}"),
        };
        let vector_end = 8 + self.dim * 4;
        if bytes.len() < vector_end {
            return Err(corrupt(format!(
                "{} bytes, fewer than the {vector_end} its vector needs",
                bytes.len()
            )));
        }
        let (seq, rest) = bytes.split_at(8);
        let (vector, metadata) = rest.split_at(self.dim * 4);
        let seq = u64::from_le_bytes(seq.try_into().map_err(|_| corrupt("seq".into()))?);
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

fn encode_record(out: &mut Vec<u8>, seq: u64, vector: &[f32], metadata: &str) {
    out.clear();
    out.reserve(8 + vector.len() * 4 + metadata.len());
    out.extend_from_slice(&seq.to_le_bytes());
    for x in vector {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(metadata.as_bytes());
}

/// The tables a write touches, kept consistent: one `changes` entry per id, at its last
/// write.
struct Tables<'t> {
    records: redb::Table<'t, u64, &'static [u8]>,
    tombstones: redb::Table<'t, u64, u64>,
    changes: redb::Table<'t, (u64, u64), u8>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Tables {
            records: txn.open_table(RECORDS)?,
            tombstones: txn.open_table(TOMBSTONES)?,
            changes: txn.open_table(CHANGES)?,
        })
    }

    /// Forgets where `id` was last written (its row's or its tombstone's change entry).
    fn forget(&mut self, id: u64, old_row: Option<u64>) -> Result<(), redb::Error> {
        if let Some(seq) = old_row {
            self.changes.remove((seq, id))?;
        }
        if let Some(seq) = self.tombstones.remove(id)?.map(|g| g.value()) {
            self.changes.remove((seq, id))?;
        }
        Ok(())
    }

    /// Stores `id`'s encoded row, written at `seq`.
    fn put_row(&mut self, id: u64, seq: u64, value: &[u8]) -> Result<(), redb::Error> {
        let old = self.records.insert(id, value)?.map(|g| row_seq(g.value()));
        self.forget(id, old)?;
        self.changes.insert((seq, id), ROW)?;
        Ok(())
    }

    /// Deletes `id` at `seq`, leaving a tombstone; true if a row was there.
    fn put_gone(&mut self, id: u64, seq: u64) -> Result<bool, redb::Error> {
        let old = self.records.remove(id)?.map(|g| row_seq(g.value()));
        self.forget(id, old)?;
        if seq > 0 {
            self.tombstones.insert(id, seq)?;
            self.changes.insert((seq, id), GONE)?;
        }
        Ok(old.is_some())
    }
}

/// The sequence number at the front of an encoded row.
fn row_seq(value: &[u8]) -> u64 {
    value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
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
        CheckedBatch::new(2, &records).unwrap()
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
            let err = CheckedBatch::new(2, &records).unwrap_err().to_string();
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
    fn copied_deletes_never_remove_a_newer_write() {
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
        assert_eq!((gone.clone(), next), (vec![(2, 2), (3, 2)], Some(3)));
        let (rest, next) = primary.tombstones_after(Some(3), 10).unwrap();
        assert_eq!((rest.clone(), next), (vec![(9, 3)], None));
        // A copy that already holds a newer write of 3 (seq 5) and an older one of 2 (seq 1).
        let mut copy = Store::open(&store_path(dir.path(), &test_name(1)), 2, Metric::Dot).unwrap();
        copy.install(
            &[
                Change::Row {
                    seq: 1,
                    record: record(2, vec![2.0, 1.0], ""),
                },
                Change::Row {
                    seq: 5,
                    record: record(3, vec![3.0, 1.0], ""),
                },
            ],
            0,
            &[],
        )
        .unwrap();
        let mut all = gone;
        all.extend(rest);
        assert_eq!(copy.install_tombstones(&all).unwrap(), vec![2]);
        assert!(copy.get(&[2]).unwrap().is_empty());
        assert_eq!(copy.get(&[3]).unwrap().len(), 1, "a newer write stays");
        assert_eq!(copy.tombstones().unwrap(), vec![(2, 2), (9, 3)]);
        assert_eq!(copy.seq(), 0, "the sequence number is left alone");
    }

    #[test]
    fn a_copy_by_pages_holds_the_primarys_changes_once_finished() {
        let dir = tempfile::tempdir().unwrap();
        let mut primary =
            Store::open(&store_path(dir.path(), &test_name(0)), 2, Metric::Dot).unwrap();
        // Ids written out of order, so an id-order scan meets scattered sequence numbers.
        for ids in [[7u64, 3], [1, 9], [5, 2], [3, 8]] {
            let rows = ids
                .iter()
                .map(|&i| record(i, vec![i as f32, 1.0], "{\"k\":1}"))
                .collect();
            primary.upsert(&batch(rows), 1).unwrap();
        }
        primary.delete(&[9, 4], 2).unwrap(); // seq 5, epoch 2
        let history = primary.history().clone();

        let mut copy = Store::open(&store_path(dir.path(), &test_name(1)), 2, Metric::Dot).unwrap();
        let mut written = Vec::new();
        let mut after = 0;
        loop {
            let (page, more) = primary.scan(after..=u64::MAX, 3, usize::MAX).unwrap();
            let rows: Vec<VectorRecord> = page
                .iter()
                .map(|r| VectorRecord {
                    id: r.id,
                    vector: r.vector.clone(),
                    metadata: r.metadata.clone(),
                })
                .collect();
            let seqs: Vec<u64> = page.iter().map(|r| r.seq).collect();
            let stored = copy.install_copied(&rows, &seqs).unwrap();
            assert_eq!(stored.len(), rows.len());
            written.extend(page.iter().map(|r| (r.seq, r.id)));
            match (more, page.last()) {
                (true, Some(last)) => after = last.id + 1,
                _ => break,
            }
        }
        let (gone, _) = primary.tombstones_after(None, 100).unwrap();
        assert!(copy.install_tombstones(&gone).unwrap().is_empty());
        assert_eq!(copy.seq(), 0, "nothing counts as copied before the end");
        copy.finish_copy(&mut written, primary.seq(), &history)
            .unwrap();

        let everything = |s: &Store| s.changes_after((0, u64::MAX), 100, usize::MAX).unwrap().0;
        assert_eq!(everything(&copy), everything(&primary));
        assert_eq!((copy.seq(), copy.history()), (5, &history));
        assert_eq!(copy.load_all().unwrap(), primary.load_all().unwrap());
        // A store that holds writes takes no copied pages: they would skip its history.
        let err = copy
            .install_copied(&[record(11, vec![1.0, 1.0], "{}")], &[6])
            .unwrap_err();
        assert!(err.to_string().contains("holds writes up to 5"), "{err}");
        drop(copy);
        let reopened = Store::open(&store_path(dir.path(), &test_name(1)), 2, Metric::Dot).unwrap();
        assert_eq!(everything(&reopened), everything(&primary));
    }
}
