//! Fuzzing the parsers of the files a node reads: cluster.toml, deployment files (TOML, and
//! JSON as the gateway's `deploy` job carries them) and the tokens file. Arbitrary text, and
//! text made from each format's own keys so that parsing goes past the syntax. Each must end in
//! a value or an error that names what is wrong, never a panic.
//! `PROPTEST_CASES=1000000 cargo test -p arbor-node --test fuzz --release` for a long run.

use std::path::Path;

use arbor_node::ClusterConfig;
use arbor_node::auth::TokenFile;
use arbor_node::deployment_file;
use proptest::prelude::*;

const CLUSTER_KEYS: &[&str] = &[
    "name",
    "secret_file",
    "voters",
    "id",
    "actors",
    "raft",
    "gateway",
    "data_dir",
    "labels",
    "cpu",
    "memory",
    "gpu",
    "ipu",
    "custom",
    "dir",
    "insecure",
    "tokens_file",
    "max_message_bytes",
    "max_connections",
    "auth_timeout",
    "heartbeat_interval",
    "peer_timeout",
    "node_timeout",
    "tick",
    "max_queued_bytes",
];
const TABLES: &[&str] = &[
    "[cluster]",
    "[[nodes]]",
    "[nodes.resources]",
    "[gateway]",
    "[tls]",
    "[links]",
    "[raft]",
    "[scheduler]",
];
const DEPLOY_KEYS: &[&str] = &[
    "name",
    "kind",
    "replicas",
    "strategy",
    "resources",
    "constraints",
    "anti_affinity",
    "max_unavailable",
    "version",
    "config",
    "idempotent",
    "cpu",
    "memory",
    "gpu",
];
const VALUES: &[&str] = &[
    "\"x\"",
    "1",
    "0",
    "-1",
    "4000000000",
    "true",
    "\"127.0.0.1:7101\"",
    "\"500m\"",
    "\"8GiB\"",
    "\"auto\"",
    "\"1s\"",
    "[1, 2]",
    "{ a = \"b\" }",
    "\"echo\"",
    "\"spread\"",
    "\"\"",
    "1e9",
];

fn toml_like(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    let line = prop_oneof![
        3 => (prop::sample::select(keys), prop::sample::select(VALUES))
            .prop_map(|(k, v)| format!("{k} = {v}")),
        1 => prop::sample::select(TABLES).prop_map(str::to_owned),
        1 => ".{0,20}",
    ];
    prop::collection::vec(line, 0..24).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #[test]
    fn cluster_toml_is_parsed_or_refused(text in prop_oneof![".{0,200}".boxed(), toml_like(CLUSTER_KEYS).boxed()]) {
        if let Err(e) = ClusterConfig::parse(Path::new("fuzz.toml"), &text) {
            prop_assert!(e.to_string().contains("fuzz.toml"), "{e}");
        }
    }

    #[test]
    fn deployment_files_are_parsed_or_refused(text in prop_oneof![".{0,200}".boxed(), toml_like(DEPLOY_KEYS).boxed()]) {
        if let Err(e) = deployment_file::parse(Path::new("d.toml"), &text) {
            prop_assert!(!e.to_string().is_empty());
        }
        // The same keys as a JSON object, as the gateway's deploy job sends them.
        let json = format!("{{{}}}", text.lines().filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| format!("\"{k}\": {v}")).collect::<Vec<_>>().join(", "));
        let _ = deployment_file::parse(Path::new("d.json"), &json);
    }

    #[test]
    fn token_files_are_parsed_or_refused(text in prop_oneof![
        ".{0,200}".boxed(),
        toml_like(&["id", "role", "digest", "created", "label", "tokens"]).boxed(),
    ]) {
        if let Err(e) = TokenFile::parse(Path::new("tokens.toml"), &text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
