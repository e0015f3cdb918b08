//! Fuzzing what actors read from the network: every cross-node payload is bincode behind
//! [`arbor_actors::wire::decode`] (with its decode limit): requests and replies of
//! coordinators, partitions (their replication and catch-up too), embedders, models and
//! generic calls. Metadata filters come from clients as JSON text. Arbitrary bytes, and bytes one edit away from a real message, must
//! decode or be refused, never panic or allocate past the limit.
//! `PROPTEST_CASES=1000000 cargo test -p arbor-actors --test fuzz --release` for a long run.

use arbor_actors::kinds::model::{ModelReply, ModelRequest};
use arbor_actors::partition::{
    MetadataFilter, PartitionAnswer, PartitionReply, PartitionRequest, Rows, VectorRecord, WriteOp,
};
use arbor_actors::replica::{CallReply, CallRequest, EmbedReply, EmbedRequest};
use arbor_actors::retrieval::{QueryInput, QueryRequest, RetrievalReply, RetrievalRequest};
use arbor_actors::wire::{decode, encode};
use proptest::prelude::*;

/// Real messages, encoded: the seeds that mutations start from.
fn seeds() -> Vec<Vec<u8>> {
    let filter = MetadataFilter::parse(r#"{"op":"equal","key":"lang","value":"en"}"#).unwrap();
    vec![
        encode(&RetrievalRequest::Query(QueryRequest {
            ef: None,
            input: QueryInput::Text("how do servers agree?".into()),
            k: 5,
            filter: Some(filter.clone()),
        }))
        .unwrap(),
        encode(&RetrievalRequest::Query(QueryRequest {
            ef: None,
            input: QueryInput::Vector(vec![0.5; 8]),
            k: 3,
            filter: None,
        }))
        .unwrap(),
        encode(&PartitionRequest::search(
            vec![vec![0.25; 4]],
            3,
            Some(&filter),
            Some(64),
        ))
        .unwrap(),
        encode(&EmbedRequest {
            texts: vec!["a".into(), "b".into()],
        })
        .unwrap(),
        // Replication: a primary's write passed on, a catch-up page and its answer.
        encode(&PartitionRequest::Replicate {
            epoch: 3,
            seq: 41,
            op: WriteOp::Upsert(Rows::from_records([row(7), row(8)]).unwrap()),
        })
        .unwrap(),
        // A bulk load's rows, column by column.
        encode(&RetrievalRequest::Import(
            Rows::from_records([row(3), row(4), row(5)]).unwrap(),
        ))
        .unwrap(),
        encode(&PartitionRequest::Changes {
            after: (3, 40),
            limit: 2048,
        })
        .unwrap(),
        encode::<PartitionReply>(&Ok(PartitionAnswer::Records(vec![row(1), row(2)]))).unwrap(),
        encode(&ModelRequest::Poll {
            id: 9,
            from: 4,
            wait_ms: 100,
        })
        .unwrap(),
        encode(&CallRequest {
            payload: br#"{"ms": 1}"#.to_vec(),
        })
        .unwrap(),
    ]
}

fn row(id: u64) -> VectorRecord {
    VectorRecord {
        id,
        vector: vec![0.5, -0.25, 1.0, 0.0],
        metadata: r#"{"lang":"en"}"#.into(),
    }
}

/// Decodes `bytes` as every cross-node type this suite covers.
fn decode_all(bytes: &[u8]) {
    let _ = decode::<RetrievalRequest>(bytes);
    let _ = decode::<RetrievalReply>(bytes);
    let _ = decode::<PartitionRequest>(bytes);
    let _ = decode::<PartitionReply>(bytes);
    let _ = decode::<EmbedRequest>(bytes);
    let _ = decode::<EmbedReply>(bytes);
    let _ = decode::<ModelRequest>(bytes);
    let _ = decode::<ModelReply>(bytes);
    let _ = decode::<CallRequest>(bytes);
    let _ = decode::<CallReply>(bytes);
}

proptest! {
    #[test]
    fn arbitrary_bytes_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_messages_decode_or_are_refused(
        seed in 0usize..9,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = seeds()[seed].clone();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        decode_all(&bytes);
        decode_all(&bytes[..cut.index(bytes.len() + 1)]);
    }

    #[test]
    fn filters_parse_or_are_refused(text in prop_oneof![
        ".{0,120}".boxed(),
        prop::collection::vec(prop::sample::select(&[
            "{", "}", "[", "]", ",", ":", "\"op\"", "\"equal\"", "\"in\"", "\"and\"", "\"or\"",
            "\"not\"", "\"key\"", "\"value\"", "\"values\"", "\"filters\"", "\"filter\"", "1",
            "\"x\"", "null", "true", "1e308",
        ][..]), 0..40).prop_map(|t| t.concat()).boxed(),
    ]) {
        if let Err(e) = MetadataFilter::parse(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
