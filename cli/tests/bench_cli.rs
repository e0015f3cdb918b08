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
    check_schema(&report);
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
    let collections = c.arbor(&["collections", "--json"]);
    assert!(!collections.contains("bench-vectors-"), "{collections}");
    let left = c.deployments().await.unwrap();
    assert!(
        left.keys().all(|name| !name.starts_with("bench-")),
        "the bench left {:?}",
        left.keys()
    );

    // An open loop sends on its schedule: about rate × duration jobs.
    let open = c.path.with_file_name("bench-open");
    c.arbor(&[
        "bench",
        "run",
        "jobs",
        "--rate",
        "100",
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

/// Every field of `arbor-bench-report/1`, with its type, in `report` (what other tools
/// reading the file rely on).
fn check_schema(report: &serde_json::Value) {
    assert_eq!(report["schema"], "arbor-bench-report/1");
    for field in ["arbor", "started"] {
        assert!(report[field].is_string(), "{field}: {report}");
    }
    assert!(report["nodes"].is_u64());
    let m = &report["machine"];
    assert!(
        m["cpu"].is_string() && m["cores"].is_u64() && m["memory_bytes"].is_u64(),
        "{m}"
    );
    assert!(m["gpus"].is_array() && report["cluster_gpus"].is_array());
    for s in report["scenarios"].as_array().unwrap() {
        assert!(s["name"].is_string(), "{s}");
        let load = &s["load"];
        assert!(
            load["connections"].is_u64() && load["in_flight"].is_u64(),
            "{load}"
        );
        assert!(
            load["warmup"].is_string() && load["duration"].is_string(),
            "{load}"
        );
        assert!(s["completed"].is_u64() && s["errors"].is_object(), "{s}");
        assert!(s["throughput_per_s"].is_f64(), "{s}");
        for q in ["p50", "p90", "p99", "p999", "max"] {
            assert!(s["latency_us"][q].is_f64(), "{q}: {s}");
        }
        for second in s["per_second"].as_array().unwrap() {
            assert!(
                second["second"].is_u64() && second["succeeded"].is_u64(),
                "{second}"
            );
            assert!(
                second["p50_us"].is_f64() && second["p99_us"].is_f64(),
                "{second}"
            );
        }
        for point in s["cdf"].as_array().unwrap() {
            assert!(point[0].is_f64() && point[1].is_f64(), "{point}");
        }
    }
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
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    check_schema(&report);
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
