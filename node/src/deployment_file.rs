//! Deployment files (`arbor deploy -f FILE`): TOML, or JSON when the name ends in `.json`.
//!
//! ```toml
//! name = "echo"
//! kind = "echo"
//! replicas = 6
//! strategy = "spread"        # or "pack"
//! anti_affinity = false      # keep replicas on distinct nodes
//! max_unavailable = 1        # rolling updates and drains take down at most this many
//! version = "1"              # change it (or anything else) to roll the replicas
//! idempotent = false         # true: a call that timed out is tried on another replica
//! constraints = [{ op = "equal", key = "zone", value = "a" }]   # not_equal, in, exists
//! [resources]              # absent: the kind's defaults (echo 100m/64MiB, embedder 1/512MiB, ...)
//! cpu = "100m"
//! memory = "64MiB"
//! [config]                   # handed to the actor kind as JSON
//! start_delay_ms = 0
//! ```

use std::path::Path;

use arbor_scheduler::placement::{LabelConstraint, Strategy};
use arbor_scheduler::resources::{Bytes, Millicores, Resources};
use arbor_scheduler::state::DeploymentSpec;
use serde::Deserialize;

/// A deployment file that cannot be used, naming the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentFile {
    name: String,
    kind: String,
    replicas: u32,
    #[serde(default)]
    strategy: Strategy,
    /// Absent: the kind's defaults (`Kind::default_resources`).
    #[serde(default)]
    resources: Option<Resources>,
    #[serde(default)]
    constraints: Vec<LabelConstraint>,
    #[serde(default)]
    anti_affinity: bool,
    #[serde(default = "one")]
    max_unavailable: u32,
    #[serde(default)]
    version: String,
    #[serde(default)]
    idempotent: bool,
    #[serde(default)]
    config: Option<serde_json::Map<String, serde_json::Value>>,
}

fn one() -> u32 {
    1
}

/// Reads and checks a deployment file.
pub fn load(path: &Path) -> Result<DeploymentSpec, DeploymentFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| DeploymentFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(path, &text)
}

/// Parses deployment file text; JSON if `path` ends in `.json`, else TOML.
pub fn parse(path: &Path, text: &str) -> Result<DeploymentSpec, DeploymentFileError> {
    let invalid = |message: String| DeploymentFileError::Invalid {
        path: path.display().to_string(),
        message,
    };
    let json = path.extension().is_some_and(|e| e == "json");
    let file: DeploymentFile = if json {
        serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?
    } else {
        toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?
    };
    if file.name.is_empty()
        || !file
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(invalid(format!(
            "name = {:?}: use letters, digits, '-', '_' and '.' only",
            file.name
        )));
    }
    let kind = file
        .kind
        .parse::<arbor_actors::kinds::Kind>()
        .map_err(|e| invalid(format!("kind: {e}")))?;
    let resources = file.resources.unwrap_or_else(|| {
        let d = kind.default_resources();
        Resources {
            cpu: Millicores(d.cpu_millicores),
            memory: Bytes(d.memory_bytes),
            ..Default::default()
        }
    });
    if file.max_unavailable == 0 {
        return Err(invalid("max_unavailable: must be at least 1".into()));
    }
    arbor_scheduler::state::check_name(&file.name)
        .map_err(|why| invalid(format!("name: {why}")))?;
    if file.replicas > arbor_scheduler::state::MAX_REPLICAS {
        return Err(invalid(format!(
            "replicas: {} is more than the {} a deployment may have",
            file.replicas,
            arbor_scheduler::state::MAX_REPLICAS
        )));
    }
    resources
        .validate()
        .map_err(|e| invalid(format!("resources: {e}")))?;
    let config = match file.config {
        Some(map) => serde_json::Value::Object(map).to_string(),
        None => String::new(),
    };
    // The replicas would only find out when they start, and then restart over and over.
    arbor_actors::kinds::check_config(kind, &config)
        .map_err(|e| invalid(format!("config: {e}")))?;
    Ok(DeploymentSpec {
        name: file.name,
        kind: file.kind,
        replicas: file.replicas,
        resources,
        strategy: file.strategy,
        constraints: file.constraints,
        anti_affinity: file.anti_affinity,
        max_unavailable: file.max_unavailable,
        version: file.version,
        config,
        collection: None,
        idempotent: file.idempotent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str) -> Result<DeploymentSpec, DeploymentFileError> {
        parse(Path::new("d.toml"), text)
    }

    #[test]
    fn a_kinds_config_is_checked_when_submitted_not_when_its_replicas_start() {
        // The review's probes: both were accepted, then their replicas restarted forever.
        let partition = |config: &str| {
            toml(&format!(
                "name = \"p\"\nkind = \"vector_partition\"\nreplicas = 1\n[config]\n{config}"
            ))
        };
        let err =
            partition("collection = \"../../../../tmp/x\"\npartition = 0\ndim = 4\n").unwrap_err();
        assert!(err.to_string().contains("collection name"), "{err}");
        let err =
            partition("collection = \"c\"\npartition = 0\ndim = 1099511627776\n").unwrap_err();
        assert!(err.to_string().contains("dim 1099511627776"), "{err}");
        assert!(partition("collection = \"c\"\npartition = 0\ndim = 4\n").is_ok());
        let err = toml("name = \"p\"\nkind = \"vector_partition\"\nreplicas = 1\n").unwrap_err();
        assert!(
            err.to_string().contains("needs a config with collection"),
            "{err}"
        );
        let err = toml("name = \"m\"\nkind = \"model\"\nreplicas = 1\n[config]\nmax_batch = 0\n")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("config: bad config for kind model: max_batch"),
            "{err}"
        );
        let err =
            toml("name = \"e\"\nkind = \"echo\"\nreplicas = 1\n[config]\ntypo = 1\n").unwrap_err();
        assert!(err.to_string().contains("typo"), "{err}");
        let err = toml(
            "name = \"r\"\nkind = \"retrieval_coordinator\"\nreplicas = 1\n[config]\n\
             collection = \"c\"\npartitions = 4\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("partitions"), "{err}");
        let err = toml(
            "name = \"e\"\nkind = \"embedder\"\nreplicas = 1\n[config.batching]\nmax_batch = 0\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("batching.max_batch"), "{err}");
        // Resources no machine has.
        let err = toml(
            "name = \"e\"\nkind = \"echo\"\nreplicas = 1\n[resources]\nmemory = \"1048576TiB\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("memory quantity \"1EiB\" is too large"),
            "{err}"
        );
    }

    #[test]
    fn every_shipped_example_passes_the_checks() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
                checked += 1;
            }
        }
        assert!(checked >= 5, "only {checked} examples");
    }

    #[test]
    fn a_huge_replica_count_and_bad_names_are_refused_with_their_field() {
        // The review's probe: `replicas = 4e9` was committed, then aborted every leader.
        let err = toml("name = \"e\"\nkind = \"echo\"\nreplicas = 4000000000\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("replicas: 4000000000 is more than"),
            "{err}"
        );
        let long = "x".repeat(64);
        let err = toml(&format!(
            "name = \"{long}\"\nkind = \"echo\"\nreplicas = 1\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("at most 63"), "{err}");
        let err = toml("name = \".hidden\"\nkind = \"echo\"\nreplicas = 1\n").unwrap_err();
        assert!(err.to_string().contains("starts with '.'"), "{err}");
        let err = toml("name = \"a\\nb\"\nkind = \"echo\"\nreplicas = 1\n").unwrap_err();
        assert!(err.to_string().contains("letters, digits"), "{err}");
        assert!(
            toml(&format!(
                "name = \"{}\"\nkind = \"echo\"\nreplicas = 10000\n",
                "y".repeat(63)
            ))
            .is_ok()
        );
    }

    #[test]
    fn the_smallest_file_from_the_issue() {
        let spec = toml(
            r#"
            name = "echo"
            kind = "echo"
            replicas = 6
            strategy = "spread"
            [resources]
            cpu = "100m"
            memory = "64MiB"
            "#,
        )
        .unwrap();
        assert_eq!(spec.name, "echo");
        assert_eq!(spec.replicas, 6);
        assert_eq!(spec.resources.cpu, Millicores(100));
        assert_eq!(spec.resources.memory, Bytes::mib(64));
        assert_eq!(spec.max_unavailable, 1);
        assert_eq!(spec.strategy, Strategy::Spread);
        assert_eq!(spec.config, "");
        // Calls that may have run are not repeated unless the file says they can be.
        assert!(!spec.idempotent);
    }

    #[test]
    fn every_field_in_toml_and_json() {
        let spec = toml(
            r#"
            name = "spin"
            kind = "echo"
            replicas = 3
            strategy = "pack"
            anti_affinity = true
            max_unavailable = 2
            version = "v2"
            idempotent = true
            constraints = [
              { op = "equal", key = "zone", value = "a" },
              { op = "not_equal", key = "disk", value = "hdd" },
              { op = "in", key = "rack", values = ["r1", "r2"] },
              { op = "exists", key = "fast" },
            ]
            [resources]
            cpu = "2"
            memory = "1GiB"
            gpu = "0.5"
            [config]
            start_delay_ms = 10
            "#,
        )
        .unwrap();
        assert_eq!(spec.constraints.len(), 4);
        assert!(spec.anti_affinity);
        assert!(spec.idempotent);
        assert_eq!(spec.strategy, Strategy::Pack);
        assert_eq!(spec.resources.gpu.to_string(), "0.5");
        assert_eq!(spec.config, r#"{"start_delay_ms":10}"#);
        let json = parse(
            Path::new("d.json"),
            r#"{"name": "spin", "kind": "echo", "replicas": 3, "strategy": "pack",
                "anti_affinity": true, "max_unavailable": 2, "version": "v2", "idempotent": true,
                "constraints": [{"op": "equal", "key": "zone", "value": "a"},
                                {"op": "not_equal", "key": "disk", "value": "hdd"},
                                {"op": "in", "key": "rack", "values": ["r1", "r2"]},
                                {"op": "exists", "key": "fast"}],
                "resources": {"cpu": "2", "memory": "1GiB", "gpu": "0.5"},
                "config": {"start_delay_ms": 10}}"#,
        )
        .unwrap();
        assert_eq!(json, spec);
    }

    #[test]
    fn without_resources_a_deployment_gets_its_kinds_defaults() {
        let spec = toml("name = \"e\"\nkind = \"embedder\"\nreplicas = 2\n").unwrap();
        assert_eq!(spec.resources.cpu, Millicores(1000));
        assert_eq!(spec.resources.memory, Bytes::mib(512));
    }

    #[test]
    fn errors_name_the_field() {
        let base = "name = \"e\"\nkind = \"echo\"\nreplicas = 1\n";
        let cases = [
            (format!("{base}colour = 1"), "colour"),
            (
                "name = \"e\"\nkind = \"teapot\"\nreplicas = 1".to_owned(),
                "unknown actor kind \"teapot\"",
            ),
            (format!("{base}[resources]\nmemory = \"8GB\""), "8GiB"),
            (format!("{base}max_unavailable = 0"), "max_unavailable"),
            (format!("{base}strategy = \"random\""), "strategy"),
            (
                "name = \"a/b\"\nkind = \"echo\"\nreplicas = 1".to_owned(),
                "name",
            ),
            ("kind = \"echo\"\nreplicas = 1".to_owned(), "name"),
            (
                format!("{base}constraints = [{{ op = \"near\", key = \"a\" }}]"),
                "near",
            ),
        ];
        for (text, needle) in cases {
            let err = toml(&text).unwrap_err().to_string();
            assert!(err.starts_with("d.toml: "), "{err}");
            assert!(err.contains(needle), "{needle:?} not in: {err}");
        }
    }
}
