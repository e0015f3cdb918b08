//! Fuzzing what actors read from the network: every cross-node payload is bincode behind
//! [`arbor_actors::wire::decode`] (with its decode limit), and metadata filters come from
//! clients as JSON text. Arbitrary bytes, and bytes one edit away from a real message, must
//! decode or be refused, never panic or allocate past the limit.
//! `PROPTEST_CASES=1000000 cargo test -p arbor-actors --test fuzz --release` for a long run.

use arbor_actors::partition::{MetadataFilter, PartitionRequest};
use arbor_actors::replica::EmbedRequest;
use arbor_actors::retrieval::{QueryInput, QueryRequest, RetrievalRequest};
use arbor_actors::wire::{decode, encode};
use proptest::prelude::*;

/// Real messages, encoded: the seeds that mutations start from.
fn seeds() -> Vec<Vec<u8>> {
    let filter = MetadataFilter::parse(r#"{"op":"equal","key":"lang","value":"en"}"#).unwrap();
    vec![
        encode(&RetrievalRequest::Query(QueryRequest {
            input: QueryInput::Text("how do servers agree?".into()),
            k: 5,
            filter: Some(filter.clone()),
        }))
        .unwrap(),
        encode(&RetrievalRequest::Query(QueryRequest {
            input: QueryInput::Vector(vec![0.5; 8]),
            k: 3,
            filter: None,
        }))
        .unwrap(),
        encode(&PartitionRequest::search(
            vec![vec![0.25; 4]],
            3,
            Some(&filter),
        ))
        .unwrap(),
        encode(&EmbedRequest {
            texts: vec!["a".into(), "b".into()],
        })
        .unwrap(),
    ]
}

/// Decodes `bytes` as every cross-node type this suite covers.
fn decode_all(bytes: &[u8]) {
    let _ = decode::<RetrievalRequest>(bytes);
    let _ = decode::<PartitionRequest>(bytes);
    let _ = decode::<EmbedRequest>(bytes);
}

proptest! {
    #[test]
    fn arbitrary_bytes_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_messages_decode_or_are_refused(
        seed in 0usize..4,
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
