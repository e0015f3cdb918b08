//! `arbor ingest NAME FILE.npy [--ids IDS.npy]`, across processes: a 3-node cluster's
//! collection (2 partitions × 2 replicas) takes a bulk load of rows with their own ids (each
//! a document of one chunk), and every row is then read back from every in-sync replica of
//! its partition, bit for bit, and found by a query under its id.
//! Files that cannot be loaded (ids of another length, non-finite values, not NumPy) are
//! refused with messages that name the problem. `arbor bench run query-vector --collection`
//! measures the loaded collection in place.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use arbor_actors::retrieval::route::chunk_id;
use arbor_proto::gateway::{JobSpec, QueryJob};
use common::chaos::{Chaos, DIM, ONE_AT_A_TIME, vector};

/// A `.npy` file (format 1.0) of `descr` values in `shape`.
fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bulk_load_reaches_every_replica_and_bad_files_are_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    let files = tempfile::tempdir().unwrap();
    let file = |name: &str| files.path().join(name);
    let c = Chaos::start("bulk", 3, |t| t).await;
    c.collection("rows", 2, 2).await;

    // 5,000 rows with ids of their own (not their positions): several jobs, in flight
    // together.
    let n = 5_000u64;
    let ids: Vec<u64> = (0..n).map(|i| 1_000_000 + i * 7).collect();
    let vectors: Vec<f32> = (0..n).flat_map(vector).collect();
    write_npy(
        &file("v.npy"),
        "<f4",
        &[n as usize, DIM],
        &f32_bytes(&vectors),
    );
    let id_bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    write_npy(&file("ids.npy"), "<u8", &[n as usize], &id_bytes);
    let out = c
        .arbor(&[
            "ingest",
            "rows",
            file("v.npy").to_str().unwrap(),
            "--ids",
            file("ids.npy").to_str().unwrap(),
            "--in-flight",
            "3",
        ])
        .await
        .unwrap();
    assert!(
        out.contains(&format!("loaded {n} rows of {DIM} dimensions into rows")),
        "{out}"
    );
    // Each row is a document named by its id, of one chunk.
    let acked: BTreeMap<String, Vec<f32>> = ids
        .iter()
        .zip(0..n)
        .map(|(&id, i)| (id.to_string(), vector(i)))
        .collect();
    c.verify("rows", 2, &acked).await;
    let mut client = c.client().await;
    let job = JobSpec::Query(QueryJob {
        collection: "rows".into(),
        text: None,
        vector: Some(vector(17)),
        k: 1,
        filter: None,
        ef: None,
    });
    let data = client.run(job, |_| {}).await.unwrap().into_data().unwrap();
    assert_eq!(data["results"][0]["doc_id"], ids[17].to_string(), "{data}");

    // What was loaded can be measured in place: `bench run query-vector --collection`
    // queries it, reports its own shape, and leaves it as it was.
    let bench = file("bench");
    c.arbor(&[
        "bench",
        "run",
        "query-vector",
        "--collection",
        "rows",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--out",
        bench.to_str().unwrap(),
    ])
    .await
    .unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bench.join("report.json")).unwrap()).unwrap();
    let s = &report["scenarios"][0];
    assert!(s["completed"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["errors"], serde_json::json!({}), "{s}");
    let p = &s["parameters"];
    assert_eq!(
        (
            &p["collection"],
            &p["dimension"],
            &p["partitions"],
            &p["replicas"]
        ),
        (
            &serde_json::json!("rows"),
            &serde_json::json!(DIM),
            &serde_json::json!(2),
            &serde_json::json!(2)
        ),
        "{p}"
    );
    let missing = c
        .arbor(&[
            "bench",
            "run",
            "query-vector",
            "--collection",
            "nope",
            "--duration",
            "1s",
            "--out",
            bench.to_str().unwrap(),
        ])
        .await
        .unwrap_err();
    assert!(missing.contains("no collection nope"), "{missing}");

    // Without --ids, rows are numbered by their position in the file.
    write_npy(
        &file("few.npy"),
        "<f4",
        &[3, DIM],
        &f32_bytes(&vectors[..3 * DIM]),
    );
    let out = c
        .arbor(&["ingest", "rows", file("few.npy").to_str().unwrap()])
        .await
        .unwrap();
    assert!(out.contains("loaded 3 rows"), "{out}");
    let few: BTreeMap<String, Vec<f32>> = (0..3).map(|i| (i.to_string(), vector(i))).collect();
    c.verify("rows", 2, &few).await;

    // Refused, each saying why.
    let refused = |args: Vec<String>| {
        let c = &c;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            c.arbor(&args).await.unwrap_err()
        }
    };
    let path = |name: &str| file(name).to_str().unwrap().to_owned();
    write_npy(&file("short-ids.npy"), "<u8", &[2], &id_bytes[..16]);
    let err = refused(vec![
        "ingest".into(),
        "rows".into(),
        path("v.npy"),
        "--ids".into(),
        path("short-ids.npy"),
    ])
    .await;
    assert!(
        err.contains("holds 2 ids but") && err.contains("5000 vectors"),
        "{err}"
    );
    let mut bad = vectors[..2 * DIM].to_vec();
    bad[DIM + 3] = f32::NAN;
    write_npy(&file("nan.npy"), "<f4", &[2, DIM], &f32_bytes(&bad));
    let err = refused(vec!["ingest".into(), "rows".into(), path("nan.npy")]).await;
    // Named by its place in the row: the packed values are one run of both rows.
    let second = chunk_id("1", 0);
    assert!(
        err.contains(&format!(
            "value 3 of row {second}'s vector is not a finite number"
        )),
        "{err}"
    );
    write_npy(&file("f64.npy"), "<f8", &[1, DIM], &[0u8; 8 * DIM]);
    let err = refused(vec!["ingest".into(), "rows".into(), path("f64.npy")]).await;
    assert!(err.contains("float32") && err.contains("<f8"), "{err}");
    let err = refused(vec![
        "ingest".into(),
        "rows".into(),
        path("v.npy"),
        path("few.npy"),
    ])
    .await;
    assert!(err.contains("one .npy file"), "{err}");
    // Nothing of the refused files was written: the good rows are all there, unchanged.
    c.verify("rows", 2, &acked).await;
}
