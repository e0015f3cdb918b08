//! cluster.toml parsing: the shipped example, and each bad case with the message it gets.

use std::path::Path;

use std::time::Duration;

use arbor_node::config::{ClusterConfig, GatewaySection, GpuSpec, Secret, Transport};

const GOOD: &str = r#"
[cluster]
name = "t"
secret_file = "secret"

[tls]
dir = "tls"

[[nodes]]
id = 1
actors = "127.0.0.1:7101"
raft = "127.0.0.1:7201"
gateway = "127.0.0.1:7301"
data_dir = "data/1"
labels = { zone = "a" }
[nodes.resources]
cpu = "500m"
memory = "8GiB"
gpu = 2
custom = { ssd = 1 }

[[nodes]]
id = 2
actors = "127.0.0.1:7102"
raft = "127.0.0.1:7202"
gateway = "127.0.0.1:7302"
data_dir = "/abs/2"
[nodes.resources]
cpu = "2"
memory = "512MiB"
"#;

fn parse(text: &str) -> Result<ClusterConfig, String> {
    ClusterConfig::parse(Path::new("conf/cluster.toml"), text).map_err(|e| e.to_string())
}

fn error_of(text: &str) -> String {
    parse(text).expect_err("the config should be refused")
}

#[test]
fn the_shipped_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.toml");
    let config = ClusterConfig::load(&path).unwrap();
    assert_eq!(config.nodes.len(), 3);
    assert!(config.nodes.iter().all(|n| n.actors.ip().is_loopback()));
    assert!(
        config
            .nodes
            .iter()
            .all(|n| n.resources.gpu == GpuSpec::Auto)
    );
    // The example names where the secret comes from, never the secret itself.
    assert!(config.cluster.secret_file.is_some());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.lines().any(|l| l.trim_start().starts_with("secret =")));
}

#[test]
fn a_good_config_parses_with_its_values() {
    let c = parse(GOOD).unwrap();
    let n1 = c.node(1).unwrap();
    assert_eq!(n1.resources.cpu.to_string(), "500m");
    assert_eq!(n1.resources.memory.0, 8 << 30);
    assert_eq!(n1.resources.gpu, GpuSpec::Count(2));
    assert_eq!(n1.resources.custom["ssd"], 1);
    assert_eq!(n1.labels["zone"], "a");
    assert_eq!(c.data_dir(n1, None), Path::new("conf/data/1"));
    assert_eq!(c.data_dir(c.node(2).unwrap(), None), Path::new("/abs/2"));
    assert_eq!(
        c.data_dir(n1, Some(Path::new("/tmp/x"))),
        Path::new("/tmp/x")
    );
    assert_eq!(c.node(2).unwrap().resources.gpu, GpuSpec::Auto);
}

#[test]
fn unknown_field_is_named() {
    let e = error_of(&GOOD.replace("labels = { zone = \"a\" }", "lables = { zone = \"a\" }"));
    assert!(e.contains("conf/cluster.toml"), "{e}");
    assert!(e.contains("unknown field `lables`"), "{e}");
    let e = error_of(&GOOD.replace("cpu = \"2\"", "cpu = \"2\"\ngpus = 1"));
    assert!(e.contains("unknown field `gpus`"), "{e}");
}

#[test]
fn duplicate_node_id_is_named() {
    let e = error_of(&GOOD.replace("id = 2", "id = 1"));
    assert!(e.contains("nodes[1].id"), "{e}");
    assert!(e.contains("duplicate node id 1"), "{e}");
}

#[test]
fn duplicate_address_is_named() {
    let e = error_of(&GOOD.replace("127.0.0.1:7202", "127.0.0.1:7101"));
    assert!(e.contains("nodes[1].raft"), "{e}");
    assert!(e.contains("duplicate address 127.0.0.1:7101"), "{e}");
    assert!(e.contains("nodes[0].actors"), "{e}");
}

#[test]
fn ambiguous_size_suggests_the_binary_unit() {
    let e = error_of(&GOOD.replace("\"8GiB\"", "\"8GB\""));
    assert!(e.contains("conf/cluster.toml"), "{e}");
    assert!(e.contains("8GiB"), "{e}");
    assert!(e.contains("memory"), "{e}");
}

#[test]
fn bad_gpu_value_is_explained() {
    let e = error_of(&GOOD.replace("gpu = 2", "gpu = \"lots\""));
    assert!(e.contains("\"auto\""), "{e}");
}

#[test]
fn unknown_node_lists_the_known_ones() {
    let c = parse(GOOD).unwrap();
    let e = c.node(7).unwrap_err().to_string();
    assert!(e.contains("no node has id 7"), "{e}");
    assert!(e.contains("1, 2"), "{e}");
}

#[test]
fn missing_or_empty_secret_is_refused() {
    let no_file = parse(&GOOD.replace("secret_file = \"secret\"\n", "")).unwrap();
    let e = no_file.secret_from(None).unwrap_err().to_string();
    assert!(e.contains("no cluster secret"), "{e}");
    assert!(e.contains("ARBOR_CLUSTER_SECRET"), "{e}");
    let e = no_file
        .secret_from(Some(b"  \n".to_vec()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty"), "{e}");
    let e = no_file
        .secret_from(Some(b"s3cret\n".to_vec()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("6 bytes; at least 32"), "{e}");
    let long = "s3cret-s3cret-s3cret-s3cret-s3cret";
    assert!(no_file.secret_from(Some(long.as_bytes().to_vec())).is_ok());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, GOOD).unwrap();
    let c = ClusterConfig::load(&path).unwrap();
    let e = c.secret_from(None).unwrap_err().to_string();
    assert!(
        e.contains("cluster.secret_file") && e.contains("cannot read"),
        "{e}"
    );
    let file = dir.path().join("secret");
    let private = |mode| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    std::fs::write(&file, "\n").unwrap();
    private(0o600);
    let e = c.secret_from(None).unwrap_err().to_string();
    assert!(e.contains("is empty"), "{e}");
    std::fs::write(&file, format!("{long}\n")).unwrap();
    assert_eq!(c.secret_from(None).unwrap(), Secret::new(long).unwrap());
    // Readable by others: refused, saying how to fix it.
    private(0o644);
    let e = c.secret_from(None).unwrap_err().to_string();
    assert!(
        e.contains("may be read by others") && e.contains("chmod 600"),
        "{e}"
    );
}

#[test]
fn secrets_never_print_and_cookies_differ() {
    let a = Secret::new("alpha").unwrap();
    let b = Secret::new("beta").unwrap();
    assert_eq!(format!("{a:?}"), "Secret(..)");
    assert_ne!(a.cookie(), b.cookie());
    assert!(!a.cookie().contains("alpha"));
}

#[test]
fn other_mistakes_are_named() {
    assert!(error_of(&GOOD.replace("id = 2", "id = 0")).contains("node ids start at 1"));
    assert!(error_of("[cluster]\nname = \"t\"\n").contains("no node is configured"));
    let e = error_of(&GOOD.replace("127.0.0.1:7102", "localhost"));
    assert!(e.contains("actors"), "{e}");
    let e = error_of(&GOOD.replacen(
        "[[nodes]]",
        "[links]\nheartbeat_interval = \"1s\"\npeer_timeout = \"10ms\"\n\n[[nodes]]",
        1,
    ));
    assert!(e.contains("links.peer_timeout"), "{e}");
}

#[test]
fn the_gateway_section_has_defaults_and_anchors_the_tokens_file() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.gateway, GatewaySection::default());
    assert_eq!(c.gateway.max_message_bytes, 4 << 20);
    assert_eq!(c.gateway.auth_timeout, Duration::from_secs(10));
    assert_eq!(c.tokens_file(), Path::new("conf/tokens.toml"));

    let c = parse(&GOOD.replacen(
        "[[nodes]]",
        "[gateway]\ntokens_file = \"/etc/arbor/tokens.toml\"\nmax_message_bytes = 1024\nauth_timeout = \"3s\"\n\n[[nodes]]",
        1,
    ))
    .unwrap();
    assert_eq!(c.tokens_file(), Path::new("/etc/arbor/tokens.toml"));
    assert_eq!(c.gateway.max_message_bytes, 1024);
    assert_eq!(c.gateway.auth_timeout, Duration::from_secs(3));
    assert_eq!(c.gateway.max_jobs_per_token, 256);
}

#[test]
fn gateway_mistakes_are_named() {
    let with =
        |lines: &str| GOOD.replacen("[[nodes]]", &format!("[gateway]\n{lines}\n\n[[nodes]]"), 1);
    let e = error_of(&with("max_message_bytes = 100"));
    assert!(e.contains("gateway.max_message_bytes"), "{e}");
    assert!(e.contains("1 KiB") && e.contains("64 MiB"), "{e}");
    let e = error_of(&with("max_message_bytes = 100000000"));
    assert!(e.contains("gateway.max_message_bytes"), "{e}");
    for field in [
        "max_jobs_per_connection",
        "max_jobs_per_token",
        "max_failed_auths",
    ] {
        let e = error_of(&with(&format!("{field} = 0")));
        assert!(e.contains(&format!("gateway.{field}")), "{e}");
    }
    let e = error_of(&with("auth_timeout = \"0s\""));
    assert!(e.contains("gateway.auth_timeout"), "{e}");
    let e = error_of(&with("token_file = \"t.toml\""));
    assert!(e.contains("unknown field `token_file`"), "{e}");
}

#[test]
fn every_transport_is_tls_unless_a_loopback_cluster_says_insecure() {
    let config = parse(GOOD).unwrap();
    assert_eq!(
        config.tls,
        Transport::Tls(arbor_tls::TlsDir::new(Path::new("conf/tls")))
    );
    // No [tls]: refused, saying what to add and which command makes the certificates.
    let err = error_of(&GOOD.replace("[tls]\ndir = \"tls\"\n", ""));
    assert!(err.contains("no [tls] section"), "{err}");
    assert!(err.contains("arbor cert init"), "{err}");
    let insecure = GOOD.replace("dir = \"tls\"", "insecure = true");
    assert_eq!(parse(&insecure).unwrap().tls, Transport::Insecure);
    // ...but never off loopback.
    let err = error_of(&insecure.replace("127.0.0.1:7302", "10.0.0.2:7302"));
    assert!(err.contains("nodes[1].gateway"), "{err}");
    assert!(err.contains("not a loopback address"), "{err}");
    let err = error_of(&GOOD.replace("dir = \"tls\"", "dir = \"tls\"\ninsecure = true"));
    assert!(err.contains("not both"), "{err}");
    let err = error_of(&GOOD.replace("dir = \"tls\"", "dir = \"\""));
    assert!(err.contains("tls.dir"), "{err}");
}

#[test]
fn a_node_without_its_certificate_is_told_how_to_make_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, GOOD).unwrap();
    let config = ClusterConfig::load(&path).unwrap();
    let err = config.node_tls(1).unwrap_err().to_string();
    assert!(err.contains("ca.pem"), "{err}");
    assert!(err.contains("arbor cert init"), "{err}");
}
