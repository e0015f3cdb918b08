//! What a partition is asked and what it answers, as they travel between nodes.
//!
//! Metadata and filters are JSON *text* here: bincode cannot decode `serde_json::Value` (it
//! needs `deserialize_any`), so they are parsed on the partition, which answers a clear error
//! when they are not what they should be.

use arbor_kernels::topk::Metric;
use serde::{Deserialize, Serialize};

use super::filter::MetadataFilter;

/// One row to store: its id, its vector and its metadata (a JSON object as text; `""` means
/// `{}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorRecord {
    pub id: u64,
    pub vector: Vec<f32>,
    pub metadata: String,
}

/// One search result: the row's id, its score under the partition's metric (see
/// `arbor_kernels::topk` for the order) and its metadata as JSON text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub id: u64,
    pub score: f32,
    pub metadata: String,
}

/// What a partition holds and what it costs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStats {
    /// Rows stored.
    pub count: u64,
    pub dim: u32,
    pub metric: Metric,
    /// Where the scan runs: `cpu` or `cuda:N`.
    pub device: String,
    /// The index's bytes in host memory (vectors, ids, id map), as allocated.
    pub host_bytes: u64,
    /// The index's bytes on the GPU.
    pub device_bytes: u64,
    /// An estimate of the bytes the in-memory metadata takes (map entries, values, strings).
    pub metadata_bytes: u64,
    /// The sequence number of the last durable write (0: none yet).
    pub seq: u64,
}

/// A request to a vector partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PartitionRequest {
    /// Stores these rows, replacing rows with the same ids.
    Upsert(Vec<VectorRecord>),
    /// Removes the rows with these ids (ids not present are fine).
    Delete(Vec<u64>),
    /// The `k` best rows for each query; `filter` is a [`MetadataFilter`] as JSON text.
    Search {
        queries: Vec<Vec<f32>>,
        k: u32,
        filter: Option<String>,
    },
    /// What the partition holds.
    Stats,
    /// The stored rows with id > `after` (all when `None`), in id order, at most `limit` (the
    /// replica lowers a limit that could make the answer too large to travel). Used by a
    /// replica that catches up; answered only by a replica that is itself caught up.
    Page { after: Option<u64>, limit: u32 },
    /// The stored rows with these ids (at most [`MAX_GET_IDS`]), in the order asked; ids not
    /// stored are left out. Answered only by a replica that is caught up.
    Get(Vec<u64>),
}

/// The most ids one [`PartitionRequest::Get`] may ask for, so that its answer (vectors
/// included) stays well under the message limit.
pub const MAX_GET_IDS: usize = 1024;

impl PartitionRequest {
    /// A search request, with the filter encoded as it travels.
    pub fn search(queries: Vec<Vec<f32>>, k: u32, filter: Option<&MetadataFilter>) -> Self {
        PartitionRequest::Search {
            queries,
            k,
            filter: filter.map(MetadataFilter::to_json),
        }
    }
}

/// A partition's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PartitionAnswer {
    /// The rows are durable; `seq` is the write's sequence number.
    Written {
        seq: u64,
        count: u32,
    },
    /// The deletion is durable; `count` rows were present and are gone.
    Deleted {
        seq: u64,
        count: u32,
    },
    /// One list of hits per query, best first.
    Hits(Vec<Vec<SearchHit>>),
    Stats(PartitionStats),
    /// A page of stored rows in id order; `last` is the id to ask after for the next page,
    /// `None` when this page reached the end.
    Page {
        records: Vec<VectorRecord>,
        last: Option<u64>,
    },
    /// The rows a [`PartitionRequest::Get`] found.
    Records(Vec<VectorRecord>),
}

/// The answer, or why the request failed.
pub type PartitionReply = Result<PartitionAnswer, String>;
