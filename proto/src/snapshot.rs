//! The jobs behind `arbor collection snapshot|restore` and `arbor cluster backup|restore`, and
//! what they answer. JSON only: none of these types travels through the Raft log.
//!
//! A snapshot reads each partition from its primary: the stored rows page by page in id
//! order ([`ExportFrom::Rows`]), then the changes written since the first page
//! ([`ExportFrom::Changes`]) until none are left. The rows a page returns are what the
//! primary held when it read them, so the pages together, with the changes applied in order,
//! are the partition at the sequence number of the last page.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `export`: one page of a partition's rows, read from its primary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportJob {
    pub collection: String,
    pub partition: u32,
    pub from: ExportFrom,
    /// The most rows in the page (the partition may send fewer, to keep a page small).
    #[serde(default = "default_export_limit")]
    pub limit: u32,
    /// Answer a [`PackedExportPage`] (vectors in base64) instead of an [`ExportPage`]
    /// (vectors as JSON numbers, about twice the bytes and ten times the work to write and
    /// read).
    #[serde(default)]
    pub packed: bool,
}

fn default_export_limit() -> u32 {
    256
}

/// The most rows one export page may ask for.
pub const MAX_EXPORT_ROWS: u32 = 4096;

/// Where an export page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExportFrom {
    /// The stored rows with an id above `after` (all when `None`), in id order.
    Rows { after: Option<u64> },
    /// The rows written and the ids deleted after the position `(seq, id)`, in that order.
    Changes { after: (u64, u64) },
}

/// One page of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportPage {
    pub rows: Vec<ExportedRow>,
    /// Where the next page starts; `None`: this was the last of its kind.
    pub next: Option<ExportFrom>,
    /// The primary's last durable write when it read the page.
    pub seq: u64,
    /// The primary's history (epoch, first sequence number written in it) when it read the
    /// page: a page whose history does not extend the first page's comes from a primary whose
    /// writes parted from the first one's, and the export starts again.
    pub history: Vec<(u64, u64)>,
}

/// A row as an export carries it: stored (with its vector and metadata) or deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedRow {
    pub id: u64,
    /// The write that stored or deleted it.
    pub seq: u64,
    /// `None`: deleted at `seq`.
    pub row: Option<RowData>,
}

/// An [`ExportPage`] with its stored rows packed, as [`ExportJob::packed`] asks: the same
/// rows, the stored ones as [`PackedRows`] (every row with its metadata) with their sequence
/// numbers beside them, the deleted ones apart. A page holds an id at most once, so the two
/// lists say the same as the page's one list in its order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackedExportPage {
    /// The stored rows (`None`: none in this page).
    pub rows: Option<PackedRows>,
    /// The write that stored each of `rows`, in the order of its ids.
    pub seqs: Vec<u64>,
    /// Ids deleted, each with the write that deleted it.
    pub gone: Vec<(u64, u64)>,
    pub next: Option<ExportFrom>,
    pub seq: u64,
    pub history: Vec<(u64, u64)>,
}

impl From<ExportPage> for PackedExportPage {
    fn from(page: ExportPage) -> Self {
        let mut ids = Vec::new();
        let mut seqs = Vec::new();
        let mut vectors = Vec::new();
        let mut metadata = Vec::new();
        let mut gone = Vec::new();
        for row in page.rows {
            match row.row {
                Some(data) => {
                    ids.push(row.id);
                    seqs.push(row.seq);
                    vectors.extend_from_slice(&data.vector);
                    metadata.push(data.metadata);
                }
                None => gone.push((row.id, row.seq)),
            }
        }
        PackedExportPage {
            rows: (!ids.is_empty()).then(|| PackedRows::pack(ids, &vectors, metadata)),
            seqs,
            gone,
            next: page.next,
            seq: page.seq,
            history: page.history,
        }
    }
}

impl PackedExportPage {
    /// The page with its rows unpacked: the stored ones, then the deleted ones.
    pub fn unpack(self) -> Result<ExportPage, PackedError> {
        let stored = match self.rows {
            Some(rows) => rows.unpack()?,
            None => Vec::new(),
        };
        if stored.len() != self.seqs.len() {
            return Err(PackedError::Seqs {
                got: self.seqs.len(),
                rows: stored.len(),
            });
        }
        let mut rows: Vec<ExportedRow> = stored
            .into_iter()
            .zip(self.seqs)
            .map(|(r, seq)| ExportedRow {
                id: r.id,
                seq,
                row: Some(RowData {
                    vector: r.vector,
                    metadata: r.metadata,
                }),
            })
            .collect();
        rows.extend(
            self.gone
                .into_iter()
                .map(|(id, seq)| ExportedRow { id, seq, row: None }),
        );
        Ok(ExportPage {
            rows,
            next: self.next,
            seq: self.seq,
            history: self.history,
        })
    }
}

/// A stored row's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowData {
    pub vector: Vec<f32>,
    /// Its metadata as the JSON text it was stored with (`""`: none).
    #[serde(default)]
    pub metadata: String,
}

/// `import`: rows with their ids, written as they are (no chunking, no embedding) to the
/// partitions their ids belong to; what `arbor collection restore` and the bulk load of
/// `arbor ingest NAME FILE.npy` send. Rows come as JSON (`rows`), packed (`packed`), or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportJob {
    pub collection: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<ImportRow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed: Option<PackedRows>,
}

impl ImportJob {
    /// Rows the job carries, both forms together (for the row limit, before unpacking).
    pub fn row_count(&self) -> usize {
        self.rows.len() + self.packed.as_ref().map_or(0, |p| p.ids.len())
    }
}

/// The most rows one import job may carry.
pub const MAX_IMPORT_ROWS: usize = 10_000;

/// Rows for a bulk load: the vectors as the base64 (standard alphabet, padded) of
/// `ids.len() × dimension` little-endian f32, row after row. A 384-d row is 2,048 characters
/// this way against about 4,300 as JSON numbers, and reading it costs a base64 decode rather
/// than parsing 384 decimal numbers: a bulk load's gateway and client spend their time on
/// the rows, not on text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackedRows {
    pub ids: Vec<u64>,
    pub vectors: String,
    /// Each row's metadata as JSON text, in the order of `ids`; empty: none for any row.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<String>,
}

/// Why packed rows could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackedError {
    #[error("packed.ids is empty")]
    NoRows,
    #[error("packed.vectors is not base64: {0}")]
    NotBase64(String),
    #[error(
        "packed.vectors holds {bytes} bytes, which is not {rows} rows of whole 4-byte f32 \
         components"
    )]
    Ragged { bytes: usize, rows: usize },
    #[error("packed.metadata has {got} entries for {rows} rows; give one per row, or none")]
    Metadata { got: usize, rows: usize },
    #[error("seqs has {got} entries for {rows} packed rows; a page gives one per row")]
    Seqs { got: usize, rows: usize },
}

impl PackedRows {
    /// Packs rows of `dimension` components (`vectors` is `ids.len() × dimension`).
    ///
    /// # Panics
    /// If `vectors` is not `ids.len()` rows of `dimension`.
    pub fn pack(ids: Vec<u64>, vectors: &[f32], metadata: Vec<String>) -> PackedRows {
        use base64::Engine as _;
        assert!(
            ids.is_empty() || vectors.len().is_multiple_of(ids.len()),
            "{} values for {} rows",
            vectors.len(),
            ids.len()
        );
        PackedRows {
            ids,
            vectors: base64::engine::general_purpose::STANDARD
                .encode(crate::f32le::to_bytes(vectors)),
            metadata,
        }
    }

    /// The rows, column by column: as many components per row as the bytes give (the
    /// collection checks the dimension), one metadata text per row (`""`: none).
    pub fn columns(self) -> Result<RowColumns, PackedError> {
        use base64::Engine as _;
        let rows = self.ids.len();
        if rows == 0 {
            return Err(PackedError::NoRows);
        }
        if !self.metadata.is_empty() && self.metadata.len() != rows {
            return Err(PackedError::Metadata {
                got: self.metadata.len(),
                rows,
            });
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.vectors.as_bytes())
            .map_err(|e| PackedError::NotBase64(e.to_string()))?;
        let ragged = PackedError::Ragged {
            bytes: bytes.len(),
            rows,
        };
        if bytes.is_empty() || !bytes.len().is_multiple_of(rows * 4) {
            return Err(ragged);
        }
        let vectors = crate::f32le::from_bytes(&bytes).ok_or(ragged)?;
        let mut metadata = self.metadata;
        metadata.resize(rows, String::new());
        Ok(RowColumns {
            dimension: vectors.len() / rows,
            ids: self.ids,
            vectors,
            metadata,
        })
    }

    /// The rows, each with its vector (as many components as the bytes give per row; the
    /// collection checks the dimension) and its metadata.
    pub fn unpack(self) -> Result<Vec<ImportRow>, PackedError> {
        let RowColumns {
            ids,
            dimension,
            vectors,
            metadata,
        } = self.columns()?;
        Ok(ids
            .into_iter()
            .zip(vectors.chunks_exact(dimension))
            .zip(metadata)
            .map(|((id, vector), metadata)| ImportRow {
                id,
                vector: vector.to_vec(),
                metadata,
            })
            .collect())
    }
}

/// Packed rows decoded, column by column: what a bulk load's gateway passes on without
/// making one row at a time of them.
#[derive(Debug, Clone, PartialEq)]
pub struct RowColumns {
    pub ids: Vec<u64>,
    /// Components per row (at least 1).
    pub dimension: usize,
    /// `ids.len() × dimension`, row after row.
    pub vectors: Vec<f32>,
    /// One per row (`""`: none).
    pub metadata: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRow {
    pub id: u64,
    pub vector: Vec<f32>,
    /// Its metadata as JSON text (`""`: none).
    #[serde(default)]
    pub metadata: String,
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Imported {
    pub collection: String,
    pub rows: u64,
}

/// `backup`: the control plane's definitions, as the control plane stores them: every
/// deployment a user made (collections' own partition deployments are made by their
/// collection) and every collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterBackup {
    pub deployments: Vec<Value>,
    pub collections: Vec<Value>,
}

/// `restore`: makes the definitions of a backup in this cluster. Refused whole, before
/// anything is made, when one of its names is taken already.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreJob {
    #[serde(default)]
    pub deployments: Vec<Value>,
    #[serde(default)]
    pub collections: Vec<Value>,
}

/// What a restore made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restored {
    pub deployments: Vec<String>,
    pub collections: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_positions_read_as_they_are_written() {
        for from in [
            ExportFrom::Rows { after: None },
            ExportFrom::Rows { after: Some(7) },
            ExportFrom::Changes { after: (3, 9) },
        ] {
            let text = serde_json::to_string(&from).unwrap();
            assert_eq!(serde_json::from_str::<ExportFrom>(&text).unwrap(), from);
        }
        let job: ExportJob = serde_json::from_str(
            r#"{"collection": "c", "partition": 1, "from": {"changes": {"after": [5, 0]}}}"#,
        )
        .unwrap();
        assert_eq!(job.limit, default_export_limit());
        assert_eq!(job.from, ExportFrom::Changes { after: (5, 0) });
    }

    #[test]
    fn packed_rows_round_trip_and_bad_ones_are_refused() {
        let vectors = [1.0f32, -2.5, f32::MIN_POSITIVE, 3.25, 0.0, 7.0];
        let packed = PackedRows::pack(vec![5, 9, 11], &vectors, vec![]);
        assert_eq!(packed.vectors.len(), 32, "24 bytes as base64");
        let job: ImportJob = serde_json::from_value(serde_json::json!({
            "collection": "docs", "packed": packed
        }))
        .unwrap();
        assert_eq!(job.row_count(), 3);
        let rows = job.packed.unwrap().unpack().unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[1].id, rows[1].vector.as_slice()), (9, &vectors[2..4]));
        assert!(rows.iter().all(|r| r.metadata.is_empty()));
        let with = PackedRows::pack(vec![1], &[0.5], vec![r#"{"a":1}"#.into()]);
        assert_eq!(with.unpack().unwrap()[0].metadata, r#"{"a":1}"#);

        let bad = |p: PackedRows| p.unpack().unwrap_err().to_string();
        let mut p = PackedRows::pack(vec![1, 2], &[1.0, 2.0], vec![]);
        p.vectors.push('!');
        assert!(bad(p).contains("not base64"));
        let ragged = PackedRows::pack(vec![1, 2, 3], &[1.0, 2.0, 3.0], vec![]);
        let ragged = PackedRows {
            ids: vec![1, 2],
            ..ragged
        };
        assert!(bad(ragged).contains("12 bytes, which is not 2 rows"));
        let meta = PackedRows::pack(vec![1, 2], &[1.0, 2.0], vec!["{}".into()]);
        assert!(bad(meta).contains("1 entries for 2 rows"));
        assert!(bad(PackedRows::pack(vec![], &[], vec![])).contains("empty"));
    }

    #[test]
    fn a_packed_export_page_holds_what_the_page_held() {
        let page = ExportPage {
            rows: vec![
                ExportedRow {
                    id: 4,
                    seq: 2,
                    row: Some(RowData {
                        vector: vec![0.5, -1.0],
                        metadata: r#"{"a":1}"#.into(),
                    }),
                },
                ExportedRow {
                    id: 6,
                    seq: 3,
                    row: None,
                },
                ExportedRow {
                    id: 9,
                    seq: 5,
                    row: Some(RowData {
                        vector: vec![2.0, 3.5],
                        metadata: String::new(),
                    }),
                },
            ],
            next: Some(ExportFrom::Changes { after: (5, 9) }),
            seq: 7,
            history: vec![(1, 1), (2, 5)],
        };
        let packed = PackedExportPage::from(page.clone());
        assert_eq!(
            (packed.seqs.as_slice(), packed.gone.as_slice()),
            (&[2, 5][..], &[(6, 3)][..])
        );
        let text = serde_json::to_string(&packed).unwrap();
        let back: PackedExportPage = serde_json::from_str(&text).unwrap();
        let mut unpacked = back.unpack().unwrap();
        unpacked.rows.sort_by_key(|r| r.seq);
        assert_eq!(unpacked, page);
        // A page of deletes only, and one whose seqs do not match its rows.
        let only_gone = PackedExportPage::from(ExportPage {
            rows: vec![ExportedRow {
                id: 1,
                seq: 1,
                row: None,
            }],
            next: None,
            seq: 1,
            history: vec![],
        });
        assert!(only_gone.rows.is_none());
        assert_eq!(only_gone.unpack().unwrap().rows.len(), 1);
        let mut broken = PackedExportPage::from(page);
        broken.seqs.pop();
        let err = broken.unpack().unwrap_err().to_string();
        assert!(
            err.contains("seqs has 1 entries for 2 packed rows"),
            "{err}"
        );
    }

    #[test]
    fn import_rows_are_flat() {
        let row: ImportRow =
            serde_json::from_str(r#"{"id": 3, "vector": [0.5, 1], "metadata": "{\"a\":1}"}"#)
                .unwrap();
        assert_eq!(row.vector, vec![0.5, 1.0]);
        assert!(
            serde_json::from_str::<ImportRow>(r#"{"id": 3, "vector": [], "extra": 1}"#).is_err()
        );
    }
}
