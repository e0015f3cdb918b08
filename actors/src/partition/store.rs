//! A partition replica's durable rows, in one redb file.
//!
//! Every write (an upsert batch or a delete batch) is ONE redb write transaction, committed
//! with redb's default `Durability::Immediate` (fsync) before the call returns: a write that
//! was acknowledged survives a crash or a power loss. Each write takes the next sequence
//! number, stored with every row it touched (and with a tombstone for every id it deleted), so
//! that replication can later ask "everything since N" and apply a primary's writes in order.
//!
//! Tables:
//! - `records`: id -> `seq (u64 LE) | vector (dim × f32 LE) | metadata (UTF-8 JSON object)`
//! - `tombstones`: id -> seq of the delete (dropped again when the id is written anew)
//! - `meta`: `dim`, `metric`, `seq`, so a file is never reopened with another shape.
//!
//! Input is checked before anything is written ([`CheckedBatch`]); a refused batch changes
//! nothing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use arbor_kernels::topk::Metric;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde_json::{Map, Value};

use super::messages::VectorRecord;

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
const TOMBSTONES: TableDefinition<u64, u64> = TableDefinition::new("tombstones");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

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
    pub fn new(dim: usize, records: Vec<VectorRecord>) -> Result<Self, InvalidInput> {
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

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
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

/// A partition replica's redb file.
pub struct Store {
    db: Database,
    path: String,
    dim: usize,
    metric: Metric,
    seq: u64,
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
        let mut store = Store {
            db,
            path: p,
            dim,
            metric,
            seq: 0,
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

    /// Stores a checked batch in one durable transaction and returns its sequence number.
    /// An empty batch writes nothing and returns the current one.
    pub fn upsert(&mut self, batch: &CheckedBatch) -> Result<u64, StoreError> {
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
            let mut records = txn.open_table(RECORDS).map_err(|e| redb_err(&p, e))?;
            let mut tombstones = txn.open_table(TOMBSTONES).map_err(|e| redb_err(&p, e))?;
            let mut value = Vec::new();
            for ((&id, vector), (_, text)) in batch
                .ids
                .iter()
                .zip(batch.vectors.chunks_exact(self.dim))
                .zip(&batch.metadata)
            {
                encode_record(&mut value, seq, vector, text);
                records
                    .insert(id, value.as_slice())
                    .map_err(|e| redb_err(&p, e))?;
                tombstones.remove(id).map_err(|e| redb_err(&p, e))?;
            }
            set_seq(&txn, seq).map_err(|e| redb_err(&p, e))?;
        }
        txn.commit().map_err(|e| redb_err(&p, e))?;
        self.seq = seq;
        Ok(seq)
    }

    /// Removes these ids in one durable transaction, leaving a tombstone for each; returns
    /// the write's sequence number and how many rows were present.
    pub fn delete(&mut self, ids: &[u64]) -> Result<(u64, usize), StoreError> {
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
            let mut records = txn.open_table(RECORDS).map_err(|e| redb_err(&p, e))?;
            let mut tombstones = txn.open_table(TOMBSTONES).map_err(|e| redb_err(&p, e))?;
            for &id in ids {
                if records.remove(id).map_err(|e| redb_err(&p, e))?.is_some() {
                    removed += 1;
                }
                tombstones.insert(id, seq).map_err(|e| redb_err(&p, e))?;
            }
            set_seq(&txn, seq).map_err(|e| redb_err(&p, e))?;
        }
        txn.commit().map_err(|e| redb_err(&p, e))?;
        self.seq = seq;
        Ok((seq, removed))
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

/// Where a partition replica keeps its file under a node's data folder.
pub fn store_path(data_dir: &Path, collection: &str, partition: u32) -> PathBuf {
    data_dir
        .join("partitions")
        .join(format!("{collection}-{partition}.redb"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, vector: Vec<f32>, metadata: &str) -> VectorRecord {
        VectorRecord {
            id,
            vector,
            metadata: metadata.into(),
        }
    }

    fn batch(records: Vec<VectorRecord>) -> CheckedBatch {
        CheckedBatch::new(2, records).unwrap()
    }

    #[test]
    fn writes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), "c", 3);
        {
            let mut store = Store::open(&path, 2, Metric::Cosine).unwrap();
            let b = batch(vec![
                record(1, vec![1.0, 2.0], r#"{"a": 1}"#),
                record(2, vec![3.0, 4.0], ""),
                record(3, vec![5.0, 6.0], r#"{"b": "x"}"#),
            ]);
            assert_eq!(store.upsert(&b).unwrap(), 1);
            assert_eq!(store.delete(&[2, 99]).unwrap(), (2, 1));
            let b = batch(vec![record(3, vec![7.0, 8.0], r#"{"b": "y"}"#)]);
            assert_eq!(store.upsert(&b).unwrap(), 3);
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
        let path = store_path(dir.path(), "c", 0);
        let _first = Store::open(&path, 2, Metric::Dot).unwrap();
        assert!(matches!(
            Store::open(&path, 2, Metric::Dot),
            Err(StoreError::AlreadyOpen { .. })
        ));
    }

    #[test]
    fn bad_batches_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), "c", 0);
        let mut store = Store::open(&path, 2, Metric::Dot).unwrap();
        store
            .upsert(&batch(vec![record(1, vec![1.0, 1.0], "{}")]))
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
            let err = CheckedBatch::new(2, records).unwrap_err().to_string();
            assert!(err.contains(why), "{err} (wanted {why})");
        }
        let err = store.delete(&vec![1; MAX_DELETE_IDS + 1]).unwrap_err();
        assert!(err.to_string().contains("at most 100000"), "{err}");
        assert_eq!(store.seq(), 1);
        drop(store);
        let store = Store::open(&path, 2, Metric::Dot).unwrap();
        assert_eq!(store.seq(), 1);
        assert_eq!(store.load_all().unwrap().len(), 1);
        assert!(store.tombstones().unwrap().is_empty());
    }
}
