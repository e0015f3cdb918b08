//! What callers ask a collection's coordinator, typed: [`crate::replica::ReplicaMsg::Retrieval`].
//!
//! The gateway sends these; people keep the JSON door (`arbor call COORDINATOR '{"query": ..}'`),
//! which the coordinator turns into the same requests. Documents, hits and filters hold
//! free-form JSON, carried as JSON text inside the bincode message (`arbor_proto::json_text`).

use serde::{Deserialize, Serialize};

use super::{Document, IngestReport, QueryAnswer, RetrievalError};
use crate::partition::MetadataFilter;

/// One request to a coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RetrievalRequest {
    /// Chunks, embeds (unless a document brings its vector) and writes these documents. A
    /// document's id names it, so running the same ingest twice leaves the same rows.
    Ingest(Vec<Document>),
    /// The `k` best chunks for a text or a vector.
    Query(QueryRequest),
    /// One page of a partition's rows from its primary (a snapshot).
    Export {
        partition: u32,
        from: arbor_proto::snapshot::ExportFrom,
        limit: u32,
    },
    /// Rows written as they are, ids kept (a restore, a bulk load).
    Import(crate::partition::Rows),
}

/// A search over the collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRequest {
    pub input: QueryInput,
    pub k: u32,
    /// Only rows whose metadata passes it (checked where the request was made).
    #[serde(with = "arbor_proto::json_text")]
    pub filter: Option<MetadataFilter>,
    /// Candidates the partitions' HNSW walks keep, instead of the collection's `ef_search`.
    pub ef: Option<u32>,
}

/// What a query searches with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QueryInput {
    /// Embedded by the collection's embedder first.
    Text(String),
    /// A vector of the collection's dimension, searched as it is.
    Vector(Vec<f32>),
}

/// What a coordinator answers, by request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RetrievalAnswer {
    Ingested(IngestReport),
    Found(QueryAnswer),
    Exported(arbor_proto::snapshot::ExportPage),
    /// The rows an import wrote.
    Imported(u64),
}

/// A coordinator's reply to [`RetrievalRequest`]: the answer, or a coded error
/// (`arbor_proto::Coded`) that the gateway passes on as it is.
pub type RetrievalReply = Result<RetrievalAnswer, RetrievalError>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Wire;
    use arbor_proto::snapshot::{ExportFrom, ExportPage, ExportedRow, RowData};
    use ractor::BytesConvertable;
    use serde_json::json;

    #[test]
    fn requests_and_replies_with_json_inside_cross_the_wire() {
        let metadata = json!({"lang": "en", "year": 2024, "tags": ["a", {"b": null}]});
        let document = Document {
            id: "d-1".into(),
            text: "some text".into(),
            title: Some("T".into()),
            metadata: metadata.as_object().unwrap().clone(),
            vector: Some(vec![0.5, -0.25]),
        };
        let filter =
            MetadataFilter::parse(r#"{"op": "equal", "key": "lang", "value": "en"}"#).unwrap();
        for request in [
            RetrievalRequest::Ingest(vec![document.clone()]),
            RetrievalRequest::Query(QueryRequest {
                ef: None,
                input: QueryInput::Text("hi".into()),
                k: 3,
                filter: Some(filter),
            }),
            RetrievalRequest::Query(QueryRequest {
                ef: None,
                input: QueryInput::Vector(vec![1.0, 0.0]),
                k: 1,
                filter: None,
            }),
            RetrievalRequest::Export {
                partition: 1,
                from: ExportFrom::Rows { after: Some(9) },
                limit: 512,
            },
            RetrievalRequest::Export {
                partition: 0,
                from: ExportFrom::Changes {
                    after: (4, u64::MAX),
                },
                limit: 1,
            },
            RetrievalRequest::Import(
                crate::partition::Rows::from_records([crate::partition::VectorRecord {
                    id: 7,
                    vector: vec![0.5, 1.0],
                    metadata: r#"{"_doc":"d-1"}"#.into(),
                }])
                .unwrap(),
            ),
        ] {
            let bytes = Wire::new(request.clone()).into_bytes();
            assert_eq!(
                Wire::<RetrievalRequest>::from_bytes(bytes).into_inner(),
                Ok(request)
            );
        }
        let hit = arbor_proto::results::QueryHit {
            doc_id: "d-1".into(),
            chunk_id: 0,
            score: 0.5,
            text: "some text".into(),
            title: None,
            metadata: metadata.as_object().unwrap().clone(),
        };
        let page = ExportPage {
            rows: vec![
                ExportedRow {
                    id: 7,
                    seq: 3,
                    row: Some(RowData {
                        vector: vec![0.5, 1.0],
                        metadata: String::new(),
                    }),
                },
                ExportedRow {
                    id: 8,
                    seq: 4,
                    row: None,
                },
            ],
            next: Some(ExportFrom::Changes { after: (4, 8) }),
            seq: 4,
            history: vec![(1, 1), (2, 4)],
        };
        for reply in [
            Ok(RetrievalAnswer::Exported(page)),
            Ok(RetrievalAnswer::Imported(3)),
            Ok(RetrievalAnswer::Found(QueryAnswer {
                results: vec![hit],
                missing_partitions: vec![1],
            })),
            Err(RetrievalError::Unavailable {
                collection: "docs".into(),
                partition: 1,
                reason: "no primary".into(),
            }),
        ] {
            let bytes = Wire::new(reply.clone()).into_bytes();
            assert_eq!(
                Wire::<RetrievalReply>::from_bytes(bytes).into_inner(),
                Ok(reply)
            );
        }
        // The JSON door still reads and writes the metadata as an object.
        let text = serde_json::to_string(&document).unwrap();
        assert!(text.contains(r#""metadata":{"#), "{text}");
        assert_eq!(serde_json::from_str::<Document>(&text).unwrap(), document);
    }
}
