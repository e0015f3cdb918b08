//! `arbor bench run` against a running 3-node cluster of `arbor` processes, and
//! `arbor bench compare` on its report.

mod common;

use common::arbor_as;
use common::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_run_writes_a_report_and_compare_finds_regressions() {
    let c = Cluster::start("bench-cli", "bench-secret-padded-to-32-bytes-at-least").await;
    let out = c.path.with_file_name("bench-out");
    let args = [
        "bench",
        "run",
        "jobs",
        "call",
        "control",
        "deploy",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--connections",
        "2",
        "--in-flight",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    let printed = c.arbor(&args);
    eprintln!("{printed}");
    assert!(printed.contains("report: "), "{printed}");
    let path = out.join("report.json");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    check_schema(&path, &report);
    assert_eq!(report["nodes"], 3);
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    let scenarios = report["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "jobs",
            "call",
            "control",
            "deploy",
            "scale-up",
            "scale-down"
        ]
    );
    for s in scenarios {
        assert!(s["completed"].as_u64().unwrap() > 0, "{s}");
        assert!(s["throughput_per_s"].as_f64().unwrap() > 0.0, "{s}");
        assert_eq!(s["errors"], serde_json::json!({}), "{s}");
        let l = &s["latency_us"];
        let (p50, p99, max) = (
            l["p50"].as_f64().unwrap(),
            l["p99"].as_f64().unwrap(),
            l["max"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{l}");
        assert_eq!(s["per_second"].as_array().unwrap().len(), 2, "{s}");
        assert_eq!(s["load"]["connections"], 2);
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.starts_with("<!doctype html>"), "{html:.200}");
    assert_eq!(html.matches("<svg").count(), 18, "3 charts per scenario");
    if let Ok(copy) = std::env::var("ARBOR_BENCH_HTML_COPY") {
        std::fs::write(copy, &html).unwrap();
    }
    // What the call scenario deployed is gone.
    let left = c.deployments().await.unwrap();
    assert!(
        left.keys().all(|name| !name.starts_with("bench-echo-")),
        "{:?}",
        left.keys()
    );

    // The vector scenarios: their collections are created, loaded and deleted.
    let vectors = c.path.with_file_name("bench-vectors");
    let printed = c.arbor(&[
        "bench",
        "run",
        "ingest-vectors",
        "query-vector",
        "--rows",
        "1000",
        "--dimension",
        "16",
        "--filter",
        r#"{"op":"equal","key":"bucket","value":3}"#,
        "--duration",
        "2s",
        "--warmup",
        "300ms",
        "--connections",
        "2",
        "--out",
        vectors.to_str().unwrap(),
    ]);
    eprintln!("{printed}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vectors.join("report.json")).unwrap())
            .unwrap();
    for (i, name) in ["ingest-vectors", "query-vector"].into_iter().enumerate() {
        let s = &report["scenarios"][i];
        assert_eq!(s["name"], name);
        assert!(s["completed"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["errors"], serde_json::json!({}), "{s}");
    }
    let query = &report["scenarios"][1]["parameters"];
    assert_eq!(query["k"], 10, "{query}");
    assert_eq!(query["filter"]["key"], "bucket", "{query}");
    let collections = c.arbor(&["collections", "--json"]);
    assert!(!collections.contains("bench-vectors-"), "{collections}");
    let left = c.deployments().await.unwrap();
    assert!(
        left.keys().all(|name| !name.starts_with("bench-")),
        "the bench left {:?}",
        left.keys()
    );

    // An HNSW collection: created with its index, queried with a query's own ef.
    let hnsw = c.path.with_file_name("bench-hnsw");
    let printed = c.arbor(&[
        "bench",
        "run",
        "query-vector",
        "--rows",
        "1000",
        "--dimension",
        "16",
        "--index",
        "hnsw",
        "--ef-search",
        "32",
        "--ef",
        "256",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--connections",
        "2",
        "--out",
        hnsw.to_str().unwrap(),
    ]);
    eprintln!("{printed}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hnsw.join("report.json")).unwrap()).unwrap();
    let s = &report["scenarios"][0];
    assert!(s["completed"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["errors"], serde_json::json!({}), "{s}");
    let p = &s["parameters"];
    assert_eq!(p["search"], "hnsw", "{p}");
    assert_eq!(p["index"]["hnsw"]["ef_search"], 32, "{p}");
    assert_eq!(p["ef"], 256, "{p}");
    // By hand: the index reaches every partition, the listing shows it, and a bad setting
    // is refused before anything is made.
    let embedder = c.path.with_file_name("idle-embedder.toml");
    std::fs::write(
        &embedder,
        "name = \"idle\"\nkind = \"embedder\"\nreplicas = 0\n",
    )
    .unwrap();
    c.arbor(&["deploy", "-f", embedder.to_str().unwrap()]);
    c.arbor(&[
        "collection",
        "create",
        "graph",
        "--partitions",
        "2",
        "--replicas",
        "1",
        "--embedder",
        "idle",
        "--dim",
        "4",
        "--coordinators",
        "0",
        "--index",
        "hnsw",
        "--m",
        "8",
    ]);
    let listed: serde_json::Value =
        serde_json::from_str(&c.arbor(&["collections", "--json"])).unwrap();
    let graph = listed["collections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "graph")
        .unwrap();
    assert_eq!(graph["index"]["hnsw"]["m"], 8, "{graph}");
    assert!(
        c.arbor(&["collections"]).contains("index=hnsw(m=8,"),
        "the listing names the index"
    );
    for partition in ["graph.p0", "graph.p1"] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let stats = loop {
            let config = c.path.to_str().unwrap();
            let stats = r#"{"stats": true}"#;
            let out = arbor_as(
                &["call", partition, stats, "--config", config],
                None,
                Some(&c.token),
            );
            if out.status.success() {
                break String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{partition} never answered"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        assert!(stats.contains(r#""index":"hnsw""#), "{partition}: {stats}");
    }
    let refused = arbor_as(
        &[
            "collection",
            "create",
            "bad",
            "--partitions",
            "1",
            "--replicas",
            "1",
            "--embedder",
            "idle",
            "--m",
            "8",
            "--config",
            c.path.to_str().unwrap(),
        ],
        None,
        Some(&c.token),
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("add --index hnsw"),
        "{err}"
    );
    c.arbor(&["collection", "delete", "graph"]);

    // An open loop sends on its schedule: about rate × duration jobs (the ramp before the
    // warm-up is not measured).
    let open = c.path.with_file_name("bench-open");
    c.arbor(&[
        "bench",
        "run",
        "jobs",
        "--rate",
        "100",
        "--ramp",
        "1s",
        "--duration",
        "2s",
        "--warmup",
        "200ms",
        "--connections",
        "2",
        "--out",
        open.to_str().unwrap(),
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(open.join("report.json")).unwrap()).unwrap();
    let s = &report["scenarios"][0];
    assert_eq!(s["load"]["rate"], 100.0, "{s}");
    assert_eq!(s["load"]["ramp"], "1s", "{s}");
    let completed = s["completed"].as_u64().unwrap();
    assert!(
        (120..=280).contains(&completed),
        "{completed} jobs at 100/s for 2 s: {s}"
    );

    // The same report against itself: no change. A slower copy: a regression.
    let compare = |new: &std::path::Path| {
        arbor_as(
            &[
                "bench",
                "compare",
                path.to_str().unwrap(),
                new.to_str().unwrap(),
                "--fail-on-regression",
            ],
            None,
            None,
        )
    };
    let same = compare(&path);
    let table = String::from_utf8_lossy(&same.stdout);
    assert!(
        same.status.success() && table.contains("throughput/s") && !table.contains("REGRESSION"),
        "{table}"
    );
    assert!(table.contains("1.00x"), "{table}");
    // Several reports side by side on one page, each against the first.
    let side = out.join("side.html");
    let three = arbor_as(
        &[
            "bench",
            "compare",
            path.to_str().unwrap(),
            path.to_str().unwrap(),
            open.join("report.json").to_str().unwrap(),
            "--html",
            side.to_str().unwrap(),
        ],
        None,
        None,
    );
    let printed = String::from_utf8_lossy(&three.stdout);
    assert!(three.status.success(), "{printed}");
    assert_eq!(
        printed.matches("arbor ").count(),
        4,
        "two tables: {printed}"
    );
    let page = std::fs::read_to_string(&side).unwrap();
    assert!(
        page.contains("<h2>jobs</h2>") && page.contains("<svg"),
        "{page:.300}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut slower = report.clone();
    let jobs = &mut slower["scenarios"][0];
    let halved = jobs["throughput_per_s"].as_f64().unwrap() / 2.0;
    jobs["throughput_per_s"] = serde_json::json!(halved);
    let slower_path = out.join("slower.json");
    std::fs::write(&slower_path, slower.to_string()).unwrap();
    let worse = compare(&slower_path);
    let table = String::from_utf8_lossy(&worse.stdout);
    let err = String::from_utf8_lossy(&worse.stderr);
    assert!(
        !worse.status.success() && table.contains("REGRESSION") && err.contains("regression"),
        "{table}{err}"
    );
    let bad = out.join("bad.json");
    std::fs::write(&bad, "{\"schema\": \"something else\"}").unwrap();
    let refused = compare(&bad);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("not a bench report"),
        "{err}"
    );
}

/// `report` (the file at `path`) against docs/bench-report.schema.json, with the schema's
/// own checker (Python's `jsonschema`, from `$ARBOR_PYTHON`): what other tools reading the
/// file rely on.
fn check_schema(path: &std::path::Path, report: &serde_json::Value) {
    assert_eq!(report["schema"], "arbor-bench-report/2");
    assert_eq!(report["system"]["name"], "arbor", "{}", report["system"]);
    assert!(
        report["system"]["commit"].is_string(),
        "{}",
        report["system"]
    );
    let python = std::env::var("ARBOR_PYTHON").expect(
        "ARBOR_PYTHON is not set: run the tests through scripts/test.sh, or \
         export ARBOR_PYTHON=$(scripts/python-env.sh)",
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(&python)
        .arg(root.join("scripts/check-bench-report.py"))
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "{} breaks the schema: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The schema itself is checked: a report missing a field is refused.
    let mut broken = report.clone();
    broken["scenarios"][0]
        .as_object_mut()
        .unwrap()
        .remove("latency_us");
    let broken_path = path.with_file_name("broken.json");
    std::fs::write(&broken_path, broken.to_string()).unwrap();
    let out = std::process::Command::new(&python)
        .arg(root.join("scripts/check-bench-report.py"))
        .arg(&broken_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("latency_us"),
        "a report without latency_us passed: {err}"
    );
}

/// `arbor bench local` starts its own cluster (what CI runs as a smoke test), writes a report
/// of the schema, and stops the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_local_runs_the_scenarios_on_a_cluster_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench");
    let run = arbor_as(
        &[
            "bench",
            "local",
            "jobs",
            "call",
            "query-vector",
            "kill-node",
            "kill-leader",
            "--nodes",
            "3",
            "--duration",
            "2s",
            "--warmup",
            "300ms",
            "--rows",
            "1000",
            "--dimension",
            "16",
            "--deploy",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/echo.toml"),
            "--out",
            out.to_str().unwrap(),
        ],
        None,
        None,
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(run.status.success(), "{stdout}{stderr}");
    // --deploy: deployed, and waited for, before the scenarios.
    let deployed = stdout.find("deployment echo created").expect(&stdout);
    assert!(deployed < stdout.find("jobs ").expect(&stdout), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    check_schema(&out.join("report.json"), &report);
    assert_eq!(report["nodes"], 3);
    let names: Vec<&str> = report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["jobs", "call", "query-vector", "kill-node", "kill-leader"]
    );
    for s in report["scenarios"].as_array().unwrap() {
        assert!(s["completed"].as_u64().unwrap() > 0, "{s}");
    }
    for s in &report["scenarios"].as_array().unwrap()[..3] {
        assert_eq!(s["errors"], serde_json::json!({}), "{s}");
    }
    // The node was killed under load, its replicas ran elsewhere, and it came back.
    let fault = &report["scenarios"][3]["fault"];
    assert_eq!(fault["what"], "SIGKILL node 3", "{fault}");
    let recovered = fault["recovered_after_s"].as_f64().unwrap();
    assert!(recovered > 0.0 && recovered < 60.0, "{fault}");
    // The jobs around it, in 100 ms slices, and their own charts.
    let around = fault["around"].as_array().unwrap();
    let jobs: u64 = around
        .iter()
        .map(|s| s["succeeded"].as_u64().unwrap() + s["errors"].as_u64().unwrap())
        .sum();
    assert!(around.len() >= 40 && jobs > 0, "{fault}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(
        html.matches("around the fault").count(),
        4,
        "two charts per fault"
    );
    let log3 = std::fs::read_to_string(out.join("cluster/node-3.log")).unwrap();
    assert!(
        log3.matches("node started").count() == 2,
        "node 3 was not restarted:\n{log3}"
    );
    // Stopped: its logs are kept, its data is not, and its nodes are gone.
    let cluster = out.join("cluster");
    assert!(cluster.join("node-1.log").exists());
    assert!(!cluster.join("data").exists());
    let log = std::fs::read_to_string(cluster.join("node-1.log")).unwrap();
    assert!(
        log.contains("node stopped"),
        "node 1 did not stop cleanly:\n{log}"
    );
    // A second run into the same folder is refused rather than mixed with the first.
    let again = arbor_as(
        &["bench", "local", "jobs", "--out", out.to_str().unwrap()],
        None,
        None,
    );
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && err.contains("already holds a cluster"),
        "{err}"
    );
}
