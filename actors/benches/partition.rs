//! One vector partition on the CPU: what it costs in memory and how fast it answers.
//!
//! Writes `ARBOR_PARTITION_ROWS` rows (default 100,000) of dimension 384 with metadata shaped
//! like the coordinator's chunks (about 700 bytes each, most of it the chunk's text) into a
//! redb file (under `ARBOR_PARTITION_DIR`, or a temporary folder), loads them as a
//! replica does on start, prints the partition's `stats()` and the process's resident memory,
//! then measures single-query search latency for k = 10, with and without a filter.
//!
//! ```text
//! ARBOR_PARTITION_ROWS=1000000 ARBOR_PARTITION_DIR=/tmp/arbor-bench \
//!     cargo bench -p arbor-actors --bench partition
//! ```
//!
//! The target it checks: a partition of 1M × 384 f32 vectors uses at most 1.7 GB of RAM.

use arbor_latency::Latencies;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arbor_actors::partition::store::{CheckedBatch, Store, StoreName, store_path};
use arbor_actors::partition::{MetadataFilter, Partition, Rows, VectorRecord};
use arbor_kernels::device::Device;
use arbor_kernels::topk::Metric;
use criterion::{Criterion, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 384;
/// Rows per durable write: about what one partition of four gets from one `arbor ingest` job.
const BATCH: usize = 500;
const LATENCY_QUERIES: usize = 50;

fn rows_wanted() -> usize {
    std::env::var("ARBOR_PARTITION_ROWS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(100_000)
}

/// A field of /proc/self/status in bytes (Linux), e.g. `VmRSS` or `VmHWM`.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn random_vector(rng: &mut StdRng) -> Vec<f32> {
    (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Metadata shaped like the retrieval coordinator's chunks (document id, chunk number,
/// title, the chunk's ~600 characters of text) plus two small fields to filter on.
fn chunk_metadata(i: usize) -> String {
    const WORDS: [&str; 8] = [
        "replica",
        "partition",
        "vector",
        "cluster",
        "embedding",
        "scheduler",
        "node",
        "query",
    ];
    let mut text = String::with_capacity(640);
    let mut w = i;
    while text.len() < 600 {
        text.push_str(WORDS[w % WORDS.len()]);
        text.push(' ');
        w = w / 3 + 7 * text.len();
    }
    let lang = ["en", "fr", "de"][i % 3];
    serde_json::json!({
        "_doc": format!("doc-{}", i / 10),
        "_chunk": i % 10,
        "_title": format!("Notes on running document {}", i / 10),
        "_text": text,
        "page": i % 50,
        "lang": lang,
    })
    .to_string()
}

/// Writes the rows through the store only, so the writer holds one batch at a time.
fn write_rows(path: &Path, rows: usize) {
    let mut store = Store::open(path, DIM, Metric::Cosine).expect("store opens");
    let mut rng = StdRng::seed_from_u64(1);
    let start = Instant::now();
    for first in (0..rows).step_by(BATCH) {
        let records: Vec<VectorRecord> = (first..(first + BATCH).min(rows))
            .map(|i| VectorRecord {
                // Scattered, as chunk ids (hashes) are: rows do not arrive in id order.
                id: (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                vector: random_vector(&mut rng),
                metadata: chunk_metadata(i),
            })
            .collect();
        let columns = Rows::from_records(records).expect("one dimension");
        let batch = CheckedBatch::new(DIM, &columns).expect("valid rows");
        store.upsert(&batch, 1).expect("durable write");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "wrote {rows} rows in {} durable batches of {BATCH}: {secs:.1} s ({:.0} rows/s)",
        rows.div_ceil(BATCH),
        rows as f64 / secs
    );
}

fn partition(c: &mut Criterion) {
    let rows = rows_wanted();
    let (_tmp, dir) = match std::env::var_os("ARBOR_PARTITION_DIR") {
        Some(dir) => (None, PathBuf::from(dir)),
        None => {
            let tmp = tempfile::tempdir().expect("temp dir");
            let dir = tmp.path().to_path_buf();
            (Some(tmp), dir)
        }
    };
    let path = store_path(
        &dir,
        &StoreName {
            collection: "bench".into(),
            incarnation: 1,
            partition: 0,
            generation: 1,
        },
    );
    let _ = std::fs::remove_file(&path);
    write_rows(&path, rows);
    let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);

    let rss_before = proc_status_bytes("VmRSS").unwrap_or(0);
    let start = Instant::now();
    let p = Partition::open(
        &path,
        DIM,
        Metric::Cosine,
        Device::Cpu,
        arbor_proto::IndexSpec::Exact,
    )
    .expect("partition loads");
    let load = start.elapsed();
    let rss_after = proc_status_bytes("VmRSS").unwrap_or(0);
    let s = p.stats();
    println!(
        "loaded {} rows × {DIM} in {:.1} s; redb file {:.0} MB",
        s.count,
        load.as_secs_f64(),
        mb(file_bytes)
    );
    println!(
        "stats: index host {:.0} MB, metadata ≈ {:.0} MB, total {:.0} MB (device {} B)",
        mb(s.host_bytes),
        mb(s.metadata_bytes),
        mb(s.host_bytes + s.metadata_bytes),
        s.device_bytes
    );
    println!(
        "process RSS: {:.0} MB before load, {:.0} MB after (+{:.0} MB); peak {:.0} MB",
        mb(rss_before),
        mb(rss_after),
        mb(rss_after.saturating_sub(rss_before)),
        mb(proc_status_bytes("VmHWM").unwrap_or(0))
    );

    let mut rng = StdRng::seed_from_u64(2);
    let queries: Vec<Vec<f32>> = (0..LATENCY_QUERIES)
        .map(|_| random_vector(&mut rng))
        .collect();
    let en = MetadataFilter::parse(r#"{"op":"equal","key":"lang","value":"en"}"#).expect("filter");
    for (name, filter) in [("no filter", None), ("lang = en (1/3 of rows)", Some(&en))] {
        let times: Latencies = queries
            .iter()
            .map(|q| {
                let t = Instant::now();
                let hits = p
                    .search(std::slice::from_ref(q), 10, filter)
                    .expect("search");
                let took = t.elapsed();
                assert_eq!(hits[0].len(), 10);
                took
            })
            .collect();
        println!(
            "search k=10, 1 query, {name}: p50 {:.2} ms, p99 {:.2} ms over {LATENCY_QUERIES} queries",
            times.quantile(0.5).as_secs_f64() * 1e3,
            times.quantile(0.99).as_secs_f64() * 1e3
        );
    }

    let mut group = c.benchmark_group(format!("partition_{rows}x{DIM}"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    let mut i = 0;
    group.bench_function("search_k10", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            p.search(std::slice::from_ref(&queries[i]), 10, None)
                .expect("search")
        })
    });
    group.bench_function("search_k10_filtered", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            p.search(std::slice::from_ref(&queries[i]), 10, Some(&en))
                .expect("search")
        })
    });
    group.finish();
    if std::env::var_os("ARBOR_PARTITION_DIR").is_some() {
        drop(p);
        let _ = std::fs::remove_file(&path);
    }
}

criterion_group!(benches, partition);
criterion_main!(benches);
