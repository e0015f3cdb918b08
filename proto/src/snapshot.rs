//! The jobs behind `arbor collection snapshot|restore` and `arbor cluster backup|restore`, and
//! what they answer. JSON only: none of these types travels through the Raft log.
//!
//! A snapshot is read the way a new replica copies its primary: the stored rows page by page
//! in id order ([`ExportFrom::Rows`]), then the changes written since the first page
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
/// partitions their ids belong to; what `arbor collection restore` sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportJob {
    pub collection: String,
    pub rows: Vec<ImportRow>,
}

/// The most rows one import job may carry.
pub const MAX_IMPORT_ROWS: usize = 10_000;

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
