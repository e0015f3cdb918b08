//! What a partition is asked and what it answers, as they travel between nodes.
//!
//! Metadata and filters are JSON *text* here: bincode cannot decode `serde_json::Value` (it
//! needs `deserialize_any`), so they are parsed on the partition, which answers a clear error
//! when they are not what they should be.

use arbor_kernels::topk::Metric;
use serde::{Deserialize, Serialize};

use super::filter::MetadataFilter;
use super::rows::Rows;
use super::store::Change;

/// One row to store: its id, its vector and its metadata (a JSON object as text; `""` means
/// `{}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorRecord {
    pub id: u64,
    #[serde(with = "super::rows::f32_bytes")]
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
    /// The index searches run on now: `exact` or `hnsw`.
    pub index: String,
    /// An HNSW graph is being built (an exact scan serves until it is done).
    pub index_building: bool,
    /// The index's bytes in host memory (vectors, ids, id map), as allocated.
    pub host_bytes: u64,
    /// The index's bytes on the GPU.
    pub device_bytes: u64,
    /// An estimate of the bytes the in-memory metadata takes (map entries, values, strings).
    pub metadata_bytes: u64,
    /// The sequence number of the last durable write (0: none yet).
    pub seq: u64,
}

/// A write, as the coordinator asks it of a partition's primary and the primary passes it on
/// to its in-sync followers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Stores these rows, replacing rows with the same ids.
    Upsert(Rows),
    /// Removes the rows with these ids (ids not present are fine).
    Delete(Vec<u64>),
}

/// A request to a vector partition replica. Writes go to the primary of the partition's
/// replica set, which orders them and passes them on; reads go to any in-sync replica; the
/// rest is how a replica catches up with its primary (`kinds/partition/recovery.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PartitionRequest {
    /// A write from a coordinator to the primary, which answers once every in-sync replica
    /// has it durable. `epoch` is the replica set's epoch as the coordinator knows it: an
    /// older one is refused ([`PartitionFailure::StaleEpoch`]).
    Write { epoch: u64, op: WriteOp },
    /// The primary's write `seq` to an in-sync follower, which applies it only right after
    /// `seq - 1` and answers [`PartitionFailure::OutOfSync`] otherwise.
    Replicate { epoch: u64, seq: u64, op: WriteOp },
    /// The `k` best rows for each query; `filter` is a [`MetadataFilter`] as JSON text.
    /// Answered by in-sync replicas only.
    Search {
        queries: Vec<Vec<f32>>,
        k: u32,
        filter: Option<String>,
        /// Candidates an HNSW walk keeps, instead of the collection's `ef_search`.
        ef: Option<u32>,
    },
    /// What the replica holds (answered by every replica, in sync or not).
    Stats,
    /// The stored rows with these ids (at most [`MAX_GET_IDS`]), in the order asked; ids not
    /// stored are left out. Answered by in-sync replicas only.
    Get(Vec<u64>),
    /// To the primary, from a replica that catches up: where its history (`history`, up to
    /// its `seq`) parts from the primary's.
    Diverged { history: Vec<(u64, u64)>, seq: u64 },
    /// To the primary: the rows and deletes after position `after` (`(seq, id)`), in order.
    Changes { after: (u64, u64), limit: u32 },
    /// To the primary: the current state of these ids (a replica undoing writes the primary
    /// never had).
    Versions(Vec<u64>),
    /// To the primary: the stored rows with id > `after` (all when `None`), in id order
    /// (a collection's export reads these; replicas of earlier versions copied everything
    /// this way, and replicas now copy every change instead). Rows written meanwhile are
    /// caught by [`PartitionRequest::Changes`] after the first page's `seq`.
    Rows { after: Option<u64>, limit: u32 },
    /// To the primary: the deletes it remembers, by id after `after` (a copy by
    /// [`PartitionRequest::Rows`] keeps them, so that it can later be a source for a replica
    /// that shares an older history with it).
    Tombstones { after: Option<u64>, limit: u32 },
    /// To the primary, from a replica that copied everything up to `seq`: the primary sends
    /// it what came after, then makes it in sync through the control plane.
    Join {
        replica: u32,
        generation: u64,
        seq: u64,
    },
    /// From the primary to a replica that joins (or that it brings back in line): install
    /// these changes; afterwards it holds everything up to `seq` with the primary's
    /// `history`.
    Install {
        epoch: u64,
        changes: Vec<Change>,
        seq: u64,
        history: Vec<(u64, u64)>,
    },
}

/// The most ids one [`PartitionRequest::Get`] may ask for, so that its answer (vectors
/// included) stays well under the message limit.
pub const MAX_GET_IDS: usize = 1024;

impl PartitionRequest {
    /// A search request, with the filter encoded as it travels.
    pub fn search(
        queries: Vec<Vec<f32>>,
        k: u32,
        filter: Option<&MetadataFilter>,
        ef: Option<u32>,
    ) -> Self {
        PartitionRequest::Search {
            queries,
            k,
            filter: filter.map(MetadataFilter::to_json),
            ef,
        }
    }
}

/// A partition's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PartitionAnswer {
    /// The rows are durable on every in-sync replica; `seq` is the write's sequence number,
    /// `epoch` the replica set's epoch once it was acknowledged.
    Written {
        seq: u64,
        epoch: u64,
        count: u32,
    },
    /// One list of hits per query, best first.
    Hits(Vec<Vec<SearchHit>>),
    Stats(PartitionStats),
    /// The rows a [`PartitionRequest::Get`] found.
    Records(Vec<VectorRecord>),
    /// A follower applied a replicated write, or installed changes: it now holds `seq`.
    Applied {
        seq: u64,
    },
    /// The answer to [`PartitionRequest::Diverged`]: the replica holds the primary's writes
    /// up to `common`; `seq` is the primary's own.
    Common {
        common: u64,
        seq: u64,
    },
    /// Changes in order; `next` is the position to ask after next (`None`: the end), `seq`
    /// and `history` the primary's when it read them.
    Changes {
        changes: Vec<Change>,
        next: Option<(u64, u64)>,
        seq: u64,
        history: Vec<(u64, u64)>,
    },
    /// The answer to [`PartitionRequest::Versions`].
    Versions(Vec<Change>),
    /// Rows in id order (each as the write that stored it); `next` is the id to ask after
    /// next (`None`: the end), `seq` and `history` the primary's when it read them.
    Rows {
        rows: Vec<Change>,
        next: Option<u64>,
        seq: u64,
        history: Vec<(u64, u64)>,
    },
    /// Deleted ids and their deletes' sequence numbers; `next` as for rows.
    Tombstones {
        gone: Vec<(u64, u64)>,
        next: Option<u64>,
    },
    /// The replica is in sync from this epoch on.
    Joined {
        epoch: u64,
    },
}

/// Why a partition replica did not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PartitionFailure {
    /// The request itself is at fault: retrying it anywhere fails the same way.
    #[error("{0}")]
    Invalid(String),
    /// The request carries an older epoch than the replica knows: ask again with `current`.
    #[error("the request is for epoch {asked}; the replica set is at epoch {current}")]
    StaleEpoch { asked: u64, current: u64 },
    /// This replica is not the primary (as far as it knows, at `epoch`).
    #[error("this replica is not the primary of its partition at epoch {epoch}")]
    NotPrimary { epoch: u64 },
    /// This replica is not in sync, so it does not answer reads.
    #[error("this replica is not in sync (it is catching up with its primary)")]
    NotInSync,
    /// The replica's node has not confirmed contact with the control plane recently: it may
    /// have been replaced, so it neither serves nor acknowledges.
    #[error(
        "this replica's node lost contact with the control plane; it serves again once it has it back"
    )]
    Fenced,
    /// A follower does not hold the write just before this one: it holds up to `seq`, with
    /// `history`.
    #[error("this replica holds writes up to {seq}, not the one before")]
    OutOfSync { seq: u64, history: Vec<(u64, u64)> },
    /// The write could not be made durable everywhere it had to be (a replica set that could
    /// not change, storage that failed); it may or may not have been applied.
    #[error("{0}")]
    Unavailable(String),
}

impl PartitionFailure {
    /// Failures that another try (after the replica set changed) may not meet.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, PartitionFailure::Invalid(_))
    }
}

/// The answer, or why the request failed.
pub type PartitionReply = Result<PartitionAnswer, PartitionFailure>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_travel_as_bytes_on_the_wire_and_as_numbers_in_json() {
        let record = VectorRecord {
            id: 7,
            vector: vec![1.5, -0.25, f32::MIN_POSITIVE, 3.0e38],
            metadata: r#"{"a":1}"#.into(),
        };
        let bytes = crate::wire::encode(&record).unwrap();
        // id (1 byte varint), length (1), 16 bytes of vector, length (1), 7 bytes of text.
        assert_eq!(bytes.len(), 1 + 1 + 16 + 1 + 7);
        assert_eq!(crate::wire::decode::<VectorRecord>(&bytes).unwrap(), record);
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(r#""vector":[1.5,-0.25,"#), "{json}");
        assert_eq!(serde_json::from_str::<VectorRecord>(&json).unwrap(), record);
    }

    #[test]
    fn a_vector_of_a_broken_length_is_refused_by_name() {
        let record = VectorRecord {
            id: 7,
            vector: vec![1.0],
            metadata: String::new(),
        };
        let mut bytes = crate::wire::encode(&record).unwrap();
        // Claim 3 bytes of vector instead of 4, and drop one.
        assert_eq!(bytes[1], 4);
        bytes[1] = 3;
        bytes.remove(2);
        let err = crate::wire::decode::<VectorRecord>(&bytes).unwrap_err();
        assert!(
            err.to_string()
                .contains("not a whole number of 4-byte components"),
            "{err}"
        );
    }
}
