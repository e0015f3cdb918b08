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
//!
//! Instead of a fixed `replicas`, a deployment may follow its load (Ray Serve's policy, see
//! `arbor_scheduler::autoscale`):
//!
//! ```toml
//! [autoscaling]
//! min_replicas = 1
//! max_replicas = 8
//! initial_replicas = 2           # at creation (default: min_replicas)
//! target_ongoing_requests = 2    # requests in flight per replica to aim for
//! upscale_delay = "30s"          # default 30s
//! downscale_delay = "10m"        # default 10m
//! ```
//!
//! Changing only `replicas` or `[autoscaling]` adds or removes replicas without restarting
//! the others; anything else is a new revision, rolled out `max_unavailable` at a time.

use std::path::Path;

use arbor_scheduler::placement::{LabelConstraint, Strategy};
use arbor_scheduler::resources::{Bytes, Millicores, Resources};
use std::time::Duration;

use arbor_scheduler::autoscale::{Autoscaling, MILLI};
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
    /// Required unless `[autoscaling]` sets the count.
    #[serde(default)]
    replicas: Option<u32>,
    #[serde(default)]
    autoscaling: Option<AutoscalingTable>,
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

/// `[autoscaling]`, with Ray Serve's names and defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoscalingTable {
    #[serde(default = "one")]
    min_replicas: u32,
    max_replicas: u32,
    #[serde(default)]
    initial_replicas: Option<u32>,
    #[serde(default = "two")]
    target_ongoing_requests: f64,
    #[serde(default = "thirty_seconds", with = "humantime_serde")]
    upscale_delay: Duration,
    #[serde(default = "ten_minutes", with = "humantime_serde")]
    downscale_delay: Duration,
}

fn one() -> u32 {
    1
}
fn two() -> f64 {
    2.0
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

/// The policy and the replica count to start with, or what is wrong with the table.
fn autoscaling(
    table: AutoscalingTable,
    replicas: Option<u32>,
) -> Result<(Autoscaling, u32), String> {
    if replicas.is_some() {
        return Err(
            "replicas: an autoscaled deployment's count is set by [autoscaling]; \
             use initial_replicas there instead"
                .into(),
        );
    }
    let target = table.target_ongoing_requests;
    if !(0.001..=1e6).contains(&target) {
        return Err(format!(
            "autoscaling.target_ongoing_requests: {target} is not in 0.001..=1000000"
        ));
    }
    let policy = Autoscaling {
        min_replicas: table.min_replicas,
        max_replicas: table.max_replicas,
        target_ongoing_milli: (target * MILLI as f64).round() as u64,
        upscale_delay: table.upscale_delay,
        downscale_delay: table.downscale_delay,
    };
    policy
        .check()
        .map_err(|why| format!("autoscaling: {why}"))?;
    let initial = table.initial_replicas.unwrap_or(policy.min_replicas);
    if policy.clamp(initial) != initial {
        return Err(format!(
            "autoscaling.initial_replicas: {initial} is outside [{}, {}]",
            policy.min_replicas, policy.max_replicas
        ));
    }
    Ok((policy, initial))
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
    let (autoscaling, replicas) = match file.autoscaling {
        Some(table) => {
            let (policy, initial) = autoscaling(table, file.replicas).map_err(invalid)?;
            (Some(policy), initial)
        }
        None => (
            None,
            file.replicas.ok_or_else(|| {
                invalid("missing field `replicas` (or an [autoscaling] table)".into())
            })?,
        ),
    };
    let most = arbor_scheduler::state::MAX_REPLICAS;
    let (field, asked) = match &autoscaling {
        Some(p) => ("autoscaling.max_replicas", p.max_replicas),
        None => ("replicas", replicas),
    };
    if asked > most {
        return Err(invalid(format!(
            "{field}: {asked} is more than the {most} a deployment may have"
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
        replicas,
        resources,
        strategy: file.strategy,
        constraints: file.constraints,
        anti_affinity: file.anti_affinity,
        max_unavailable: file.max_unavailable,
        version: file.version,
        config,
        collection: None,
        idempotent: file.idempotent,
        autoscaling,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str) -> Result<DeploymentSpec, DeploymentFileError> {
        parse(Path::new("d.toml"), text)
    }

    #[test]
    fn an_autoscaling_table_sets_the_policy_and_the_first_count() {
        let spec = toml(
            "name = \"e\"\nkind = \"echo\"\n[autoscaling]\nmax_replicas = 4\n\
             target_ongoing_requests = 1.5\nupscale_delay = \"2s\"\n",
        )
        .unwrap();
        let policy = spec.autoscaling.unwrap();
        assert_eq!(spec.replicas, 1);
        assert_eq!((policy.min_replicas, policy.max_replicas), (1, 4));
        assert_eq!(policy.target_ongoing_milli, 1500);
        assert_eq!(policy.upscale_delay, Duration::from_secs(2));
        assert_eq!(policy.downscale_delay, Duration::from_secs(600));
        let initial = toml(
            "name = \"e\"\nkind = \"echo\"\n[autoscaling]\nmin_replicas = 0\n\
             max_replicas = 4\ninitial_replicas = 3\n",
        )
        .unwrap();
        assert_eq!(initial.replicas, 3);
        for (table, says) in [
            (
                "replicas = 2\n[autoscaling]\nmax_replicas = 4\n",
                "use initial_replicas",
            ),
            (
                "[autoscaling]\nmin_replicas = 5\nmax_replicas = 4\n",
                "min_replicas (5)",
            ),
            (
                "[autoscaling]\nmax_replicas = 4\ninitial_replicas = 9\n",
                "initial_replicas: 9 is outside [1, 4]",
            ),
            (
                "[autoscaling]\nmax_replicas = 4\ntarget_ongoing_requests = 0\n",
                "target_ongoing_requests",
            ),
            ("[autoscaling]\nmax_replicas = 4\ntypo = 1\n", "typo"),
            (
                "[autoscaling]\nmax_replicas = 4000000\n",
                "autoscaling.max_replicas",
            ),
            ("", "missing field `replicas`"),
        ] {
            let err = toml(&format!("name = \"e\"\nkind = \"echo\"\n{table}")).unwrap_err();
            assert!(err.to_string().contains(says), "{table}: {err}");
        }
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
