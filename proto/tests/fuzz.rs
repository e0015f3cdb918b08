//! Fuzzing the gateway's message parser (what every client, authenticated or not, sends):
//! arbitrary text, and JSON built from the protocol's own words so that the parser goes deep.
//! It must answer every input with a message or an error that names what is wrong, never
//! panic. `PROPTEST_CASES=1000000 cargo test -p arbor-proto --test fuzz --release` for a long
//! run; CI runs the default count.

use arbor_proto::gateway::parse_client;
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Words the parser looks for, so that generated objects reach its deeper branches.
const KEYS: &[&str] = &[
    "type",
    "v",
    "token",
    "job",
    "ref",
    "record",
    "kind",
    "nonce",
    "limit",
    "collection",
    "text",
    "vector",
    "k",
    "filter",
    "documents",
    "id",
    "title",
    "metadata",
    "question",
    "max_tokens",
    "prompt",
    "texts",
    "deployment",
    "payload",
    "name",
    "partitions",
    "replicas",
    "embedder",
    "dimension",
    "metric",
    "node",
    "partition",
    "replica",
    "op",
    "key",
    "value",
    "values",
];
const WORDS: &[&str] = &[
    "auth",
    "submit",
    "subscribe",
    "status",
    "cancel",
    "ping",
    "query",
    "ingest",
    "rag",
    "embed",
    "generate",
    "call",
    "deploy",
    "undeploy",
    "create_collection",
    "delete_collection",
    "promote_stale",
    "add_node",
    "remove_node",
    "drain",
    "undrain",
    "membership",
    "cluster_status",
    "collections",
    "deployments",
    "equal",
    "in",
    "and",
    "or",
    "not",
    "cosine",
];

/// JSON values made of the protocol's words, nested a few levels.
pub fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| { serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number) }),
        prop::sample::select(WORDS).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_text_is_answered(text in ".{0,256}") {
        if let Err(e) = parse_client(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn protocol_shaped_json_is_answered(v in json(), kind in prop::sample::select(WORDS)) {
        // As generated, and with a plausible message type on top.
        let _ = parse_client(&v.to_string());
        if let Value::Object(mut m) = v {
            m.insert("type".into(), Value::from(kind));
            let text = Value::Object(m).to_string();
            if let Err(e) = parse_client(&text) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
