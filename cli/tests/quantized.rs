//! A collection created with `--index hnsw --quantization int8`, across processes: a 3-node
//! cluster holds it (2 partitions × 2 replicas) beside an exact f32 collection of the same
//! rows. Every replica trains its quantizer on its own rows, builds its graph over the codes,
//! and the collection answers with recall@10 ≥ 0.97 against the exact one, with the exact
//! scores (the candidates are rescored on the f32 rows). A node killed and started again
//! holds codes again and answers as well.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use arbor_proto::gateway::{JobSpec, QueryJob};
use common::chaos::{Chaos, ONE_AT_A_TIME, vector};

/// Rows per collection: 6,000 per partition, past the 4,096 a partition trains on.
const ROWS: u64 = 12_000;

/// The hits (document id, score) of `k` = 10 for each query.
async fn search(c: &Chaos, collection: &str, queries: &[Vec<f32>]) -> Vec<Vec<(String, f32)>> {
    let mut client = c.client().await;
    let mut all = Vec::new();
    for q in queries {
        let job = JobSpec::Query(QueryJob {
            collection: collection.into(),
            text: None,
            vector: Some(q.clone()),
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

/// Recall@10 of `got` against `truth`; asserts that every hit found in both has the same
/// score.
fn recall(got: &[Vec<(String, f32)>], truth: &[Vec<(String, f32)>]) -> f64 {
    let mut found = 0usize;
    for (g, t) in got.iter().zip(truth) {
        assert_eq!(g.len(), 10, "{g:?}");
        for (id, score) in g {
            if let Some((_, want)) = t.iter().find(|(x, _)| x == id) {
                found += 1;
                assert!((score - want).abs() < 1e-5, "{id}: {score} vs {want}");
            }
        }
    }
    found as f64 / (truth.len() * 10) as f64
}

/// Waits until every in-sync replica of `collection` searches on `kind`, not building.
async fn until_indexed(c: &Chaos, collection: &str, kind: &str) -> BTreeMap<String, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let stats = c.replica_stats(collection).await;
        let kinds: BTreeMap<String, String> = stats
            .iter()
            .map(|(r, s)| {
                (
                    r.clone(),
                    format!(
                        "{}{}",
                        s.index,
                        if s.index_building { " (building)" } else { "" }
                    ),
                )
            })
            .collect();
        if kinds.len() == 4 && kinds.values().all(|k| k == kind) {
            return kinds;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{collection}'s replicas never all searched on {kind}: {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_int8_hnsw_collection_answers_as_the_exact_one_does() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = Chaos::start("quant", 3, |t| t).await;
    c.collection("flat", 2, 2).await;
    c.collection_with(
        "graph",
        2,
        2,
        &[
            "--index",
            "hnsw",
            "--ef-search",
            "128",
            "--quantization",
            "int8",
        ],
    )
    .await;
    let listed = c.arbor(&["collections"]).await.unwrap();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("graph ") && l.contains("quantization=int8")),
        "{listed}"
    );

    let mut client = c.client().await;
    let docs: Vec<(String, Vec<f32>)> = (0..ROWS).map(|i| (format!("d{i}"), vector(i))).collect();
    for batch in docs.chunks(500) {
        for collection in ["flat", "graph"] {
            c.ingest(&mut client, collection, batch).await.unwrap();
        }
    }
    let kinds = until_indexed(&c, "graph", "hnsw+int8").await;
    c.note(format!("graph's replicas: {kinds:?}"));
    for (replica, s) in c.replica_stats("graph").await {
        // Past the rows it trains on: it holds codes from its own quantizer.
        assert!(s.count > 4096, "{replica}: {s:?}");
    }

    let queries: Vec<Vec<f32>> = (0..100).map(|i| vector(1_000_000 + i)).collect();
    let truth = search(&c, "flat", &queries).await;
    let r = recall(&search(&c, "graph", &queries).await, &truth);
    c.note(format!("recall@10 {r}"));
    assert!(r >= 0.97, "recall@10 {r}");

    // A node killed and started again: its replicas hold codes and a graph again (the saved
    // graph, with the writes since, or trained and built anew), and answers are as good.
    c.sigkill(3);
    c.start_node(3);
    c.until_whole("graph", Duration::from_secs(90)).await;
    until_indexed(&c, "graph", "hnsw+int8").await;
    let r = recall(&search(&c, "graph", &queries).await, &truth);
    c.note(format!("recall@10 after a restart {r}"));
    assert!(r >= 0.97, "recall@10 after a restart {r}");
}
