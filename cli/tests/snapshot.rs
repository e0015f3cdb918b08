//! `arbor collection snapshot|restore` and `arbor cluster backup|restore`, across processes:
//! a 3-node cluster's collection (2 partitions × 2 replicas) is snapshotted, once quiet and
//! once while documents keep being written; its control plane is backed up; then a fresh
//! 3-node cluster takes the backup and the snapshot, and every row is compared, on every
//! in-sync replica, and by the answers to the same queries. Corrupt and truncated files are
//! refused and change nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arbor_proto::gateway::{JobSpec, QueryJob};
use common::chaos::{Chaos, ONE_AT_A_TIME, vector};

/// A snapshot's rows by id (vector bits, metadata), read as the README describes the format,
/// independently of the CLI's reader. Checks the seal.
fn rows_of(path: &Path) -> (serde_json::Value, BTreeMap<u64, (Vec<u32>, String)>) {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    let magic = b"ARBOR-SNAPSHOT 1\n";
    assert!(bytes.starts_with(magic));
    let (body, seal) = bytes.split_at(bytes.len() - 32);
    assert_eq!(sha2::Sha256::digest(body).as_slice(), seal, "the seal");
    let mut at = magic.len();
    let newline = body[at..].iter().position(|b| *b == b'\n').unwrap();
    let header: serde_json::Value = serde_json::from_slice(&body[at..at + newline]).unwrap();
    at += newline + 1;
    let dim = header["dimension"].as_u64().unwrap() as usize;
    let take = |at: &mut usize, n: usize| {
        let s = &body[*at..*at + n];
        *at += n;
        s
    };
    let u64_at = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap());
    let mut rows = BTreeMap::new();
    while at < body.len() {
        let _partition = take(&mut at, 4);
        let _seq = take(&mut at, 8);
        let n = u64_at(take(&mut at, 8));
        for _ in 0..n {
            let id = u64_at(take(&mut at, 8));
            let len = u32::from_le_bytes(take(&mut at, 4).try_into().unwrap()) as usize;
            let metadata = String::from_utf8(take(&mut at, len).to_vec()).unwrap();
            let vector = take(&mut at, dim * 4)
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert!(
                rows.insert(id, (vector, metadata)).is_none(),
                "row {id} twice"
            );
        }
    }
    (header, rows)
}

/// The answers (ids and scores, in order) to a few vector queries.
async fn answers(c: &Chaos, collection: &str) -> Vec<Vec<(String, f32)>> {
    let mut client = c.client().await;
    let mut all = Vec::new();
    for seed in 0..5 {
        let job = JobSpec::Query(QueryJob {
            collection: collection.into(),
            text: None,
            vector: Some(vector(10_000 + seed)),
            k: 10,
            filter: None,
            ef: None,
        });
        let data = client.run(job, |_| {}).await.unwrap().into_data().unwrap();
        let hits = data["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["doc_id"].as_str().unwrap().to_owned(),
                    h["score"].as_f64().unwrap() as f32,
                )
            })
            .collect();
        all.push(hits);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_and_a_backup_restored_into_a_new_cluster_hold_every_row() {
    let _one = ONE_AT_A_TIME.lock().await;
    let files = tempfile::tempdir().unwrap();
    let file = |name: &str| files.path().join(name).display().to_string();

    // The source: 300 documents, 40 of them written again with new vectors.
    let a = Arc::new(Chaos::start("snap-a", 3, |t| t).await);
    a.collection("docs", 2, 2).await;
    let mut client = a.client().await;
    let mut acked: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let docs: Vec<(String, Vec<f32>)> = (0..300).map(|i| (format!("d{i}"), vector(i))).collect();
    for batch in docs.chunks(50) {
        a.ingest(&mut client, "docs", batch).await.unwrap();
        acked.extend(batch.iter().cloned());
    }
    let again: Vec<(String, Vec<f32>)> = (0..40)
        .map(|i| (format!("d{i}"), vector(5_000 + i)))
        .collect();
    a.ingest(&mut client, "docs", &again).await.unwrap();
    acked.extend(again);

    let quiet = a
        .arbor(&[
            "collection",
            "snapshot",
            "docs",
            "--out",
            &file("docs.snap"),
        ])
        .await
        .unwrap();
    assert!(quiet.contains("300 rows in 2 partitions"), "{quiet}");
    let left: Vec<_> = std::fs::read_dir(files.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["docs.snap"], "no spool or partial file is left");
    let (header, rows) = rows_of(Path::new(&file("docs.snap")));
    assert_eq!(header["partitions"], 2);
    assert_eq!(rows.len(), 300);
    let queried = answers(&a, "docs").await;

    // A snapshot while a writer adds documents: everything acknowledged before it started is
    // in it, as acknowledged; what it holds beyond that is what was written.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (a, stop) = (a.clone(), stop.clone());
        tokio::spawn(async move {
            let mut client = a.client().await;
            let mut written = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<(String, Vec<f32>)> = (0..10)
                    .map(|j| (format!("w{}", i * 10 + j), vector(20_000 + i * 10 + j)))
                    .collect();
                if a.ingest(&mut client, "docs", &batch).await.is_ok() {
                    written.extend(batch);
                }
                i += 1;
            }
            written
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live = a
        .arbor(&[
            "collection",
            "snapshot",
            "docs",
            "--out",
            &file("live.snap"),
        ])
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let written: BTreeMap<String, Vec<f32>> = writer.await.unwrap().into_iter().collect();
    let (_, live_rows) = rows_of(Path::new(&file("live.snap")));
    assert!(live_rows.len() >= 300, "{live}");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    for (id, (vector, metadata)) in &live_rows {
        let doc: serde_json::Value = serde_json::from_str(metadata).unwrap();
        let name = doc["_doc"].as_str().unwrap();
        let sent = acked.get(name).or_else(|| written.get(name));
        assert_eq!(
            sent.map(|v| bits(v)).as_ref(),
            Some(vector),
            "row {id} ({name})"
        );
    }
    for (id, row) in &rows {
        assert_eq!(
            live_rows.get(id),
            Some(row),
            "row {id} of the quiet snapshot"
        );
    }

    let backup = a
        .arbor(&[
            "cluster",
            "backup",
            "--out",
            &file("cluster.backup"),
            "--include-tokens",
        ])
        .await
        .unwrap();
    assert!(backup.contains("1 collections"), "{backup}");
    drop(a);

    // The destination: a new cluster.
    let b = Chaos::start("snap-b", 3, |t| t).await;
    // Broken files are refused, naming why, and make nothing.
    let whole = std::fs::read(file("docs.snap")).unwrap();
    std::fs::write(file("cut.snap"), &whole[..whole.len() / 2]).unwrap();
    let mut flipped = whole.clone();
    flipped[whole.len() / 3] ^= 1;
    std::fs::write(file("flipped.snap"), &flipped).unwrap();
    for broken in ["cut.snap", "flipped.snap"] {
        let e = b
            .arbor(&["collection", "restore", &file(broken)])
            .await
            .unwrap_err();
        assert!(
            e.contains("truncated or corrupt") && e.contains("nothing was restored"),
            "{e}"
        );
    }
    let e = b
        .arbor(&["cluster", "restore", &file("docs.snap")])
        .await
        .unwrap_err();
    assert!(e.contains("is not a cluster backup"), "{e}");
    assert!(b.collections().await.unwrap().is_empty());

    // The control plane's definitions: the collection (empty), its coordinator, the embedder.
    let e = b
        .arbor(&["cluster", "restore", &file("cluster.backup"), "--tokens"])
        .await
        .unwrap_err();
    assert!(e.contains("exists; move it away"), "{e}");
    let restored = b
        .arbor(&["cluster", "restore", &file("cluster.backup")])
        .await
        .unwrap();
    assert!(
        restored.contains("restored 1 collections (docs)"),
        "{restored}"
    );
    let deployments = b.deployments().await.unwrap();
    assert!(deployments.contains_key("embedder") && deployments.contains_key("docs-coord"));
    let e = b
        .arbor(&["cluster", "restore", &file("cluster.backup")])
        .await
        .unwrap_err();
    assert!(e.contains("already has") && e.contains("\"docs\""), "{e}");

    // The rows, under another name (docs is the backup's, empty).
    let e = b
        .arbor(&["collection", "restore", &file("docs.snap")])
        .await
        .unwrap_err();
    assert!(e.contains("already has a collection \"docs\""), "{e}");
    let out = b
        .arbor(&["collection", "restore", &file("docs.snap"), "--as", "docs2"])
        .await
        .unwrap();
    assert!(
        out.contains("restored 300 rows into collection \"docs2\""),
        "{out}"
    );
    b.verify("docs2", 2, &acked).await;
    let again = b
        .arbor(&[
            "collection",
            "snapshot",
            "docs2",
            "--out",
            &file("docs2.snap"),
        ])
        .await
        .unwrap();
    assert!(again.contains("300 rows"), "{again}");
    let (_, restored_rows) = rows_of(Path::new(&file("docs2.snap")));
    assert_eq!(restored_rows, rows, "every row, bit for bit");
    assert_eq!(answers(&b, "docs2").await, queried, "the same answers");
    let names: BTreeSet<String> = b.collections().await.unwrap().into_keys().collect();
    assert_eq!(names, BTreeSet::from(["docs".into(), "docs2".into()]));
}
