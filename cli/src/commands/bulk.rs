//! `arbor ingest NAME FILE.npy [--ids IDS.npy]`: a bulk load of rows that bring their own
//! vectors. The rows are read from the file a batch at a time and sent as `import` jobs with
//! the vectors packed (little-endian f32 in base64, see `arbor_proto::snapshot::PackedRows`),
//! several jobs in flight, each on a connection of its own: the gateway's and this client's
//! time goes to the rows rather than to printing and parsing decimal numbers. Every row is
//! written as any write is (durable on the partition's in-sync replicas before the job ends).
//!
//! Each row is a document of one chunk, as a `.jsonl` line that brings its `vector` is: its
//! document id is its id from `--ids` (a 1-D array of 64-bit integers, one per row) written in
//! decimal, or its position in the file (0, 1, 2...); it is stored under that document's chunk
//! id, with the metadata `ingest` gives a chunk (`_doc`, `_chunk`, `_chunks`, an empty
//! `_text`), and queries answer it with `doc_id`. Chunk ids are hashes, which is what spreads
//! rows evenly over the partitions. Writing a row again replaces it, so a load that failed
//! part way can be run again as it is. (Unlike `ingest`, a bulk load does not look for chunks
//! an earlier text ingest of the same document id left.)

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::{Mutex, mpsc};

use super::{GatewayArgs, failed, parse_data};
use crate::commands::npy::{Vectors, read_ids};
use arbor_actors::retrieval::route::chunk_id;
use arbor_client::GatewayClient;
use arbor_proto::ErrorCode;
use arbor_proto::gateway::JobSpec;
use arbor_proto::snapshot::{ImportJob, Imported, MAX_IMPORT_ROWS, PackedRows};

/// Import jobs kept in flight, each on its own connection.
pub const DEFAULT_IN_FLIGHT: usize = 4;
/// Room for an import job's envelope (collection name, ids as JSON) beside its vectors.
const ENVELOPE_BYTES: usize = 64 << 10;
/// How long a job is sent again while the collection answers `unavailable`.
const UNAVAILABLE_PATIENCE: Duration = Duration::from_secs(30);
/// Most bytes of one job (well under the gateway's default message limit of 4 MiB, so a
/// job is one frame the gateway takes at once).
const JOB_BYTES: usize = 3 << 20;

/// Rows per import job for `dim`-component vectors under a gateway message limit of `limit`
/// bytes: each row costs its base64 vector, its id and its metadata as JSON. Pure.
pub fn rows_per_job(dim: usize, limit: usize) -> usize {
    let budget = JOB_BYTES.min(limit).saturating_sub(ENVELOPE_BYTES);
    // The vector in base64, the id, and the metadata of a one-chunk document (as JSON text).
    let per_row = (dim * 4).div_ceil(3) * 4 + 22 + 90;
    (budget / per_row).clamp(1, MAX_IMPORT_ROWS)
}

/// One batch: its first row's position in the file, its ids and its vectors.
struct Batch {
    first: u64,
    ids: Vec<u64>,
    vectors: Vec<f32>,
}

/// Loads the rows of `vectors` (and `ids`) into `collection`.
pub async fn load(
    gw: &GatewayArgs,
    collection: String,
    vectors: &Path,
    ids: Option<&Path>,
    in_flight: usize,
) -> anyhow::Result<()> {
    let mut file = Vectors::open(vectors)?;
    let (rows, dim) = (file.rows(), file.dim());
    let ids = match ids {
        Some(path) => {
            let ids = read_ids(path)?;
            if ids.len() as u64 != rows {
                bail!(
                    "{} holds {} ids but {} holds {rows} vectors; give one id per vector",
                    path.display(),
                    ids.len(),
                    vectors.display()
                );
            }
            Some(ids)
        }
        None => None,
    };
    if rows == 0 {
        bail!("{} holds no rows", vectors.display());
    }
    let in_flight = in_flight.max(1);
    let mut clients = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        clients.push(gw.connect().await?);
    }
    let per_job = rows_per_job(dim, clients[0].limits().max_message_bytes);

    let bar = super::rows_bar(&format!("load {collection}"), Some(rows));
    let started = Instant::now();
    let written = Arc::new(AtomicU64::new(0));

    // The file is read on a thread of its own, a few batches ahead of the jobs.
    let (tx, rx) = mpsc::channel::<anyhow::Result<Batch>>(in_flight * 2);
    let reader = tokio::task::spawn_blocking(move || {
        let mut first = 0u64;
        loop {
            let batch = file.next_batch(per_job).map_err(anyhow::Error::from);
            let batch = match batch {
                Ok(v) if v.is_empty() => return,
                Ok(vectors) => {
                    let n = (vectors.len() / dim) as u64;
                    let ids = match &ids {
                        Some(ids) => ids[first as usize..(first + n) as usize].to_vec(),
                        None => (first..first + n).collect(),
                    };
                    let b = Batch {
                        first,
                        ids,
                        vectors,
                    };
                    first += n;
                    Ok(b)
                }
                Err(e) => Err(e),
            };
            let stop = batch.is_err();
            if tx.blocking_send(batch).is_err() || stop {
                return;
            }
        }
    });
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = tokio::task::JoinSet::new();
    for mut client in clients {
        let (rx, written, bar, collection) =
            (rx.clone(), written.clone(), bar.clone(), collection.clone());
        workers.spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some(batch) = next else {
                    client.close().await;
                    return Ok(());
                };
                let batch = batch?;
                let (first, n) = (batch.first, batch.ids.len() as u64);
                let (ids, metadata) = documents(&batch.ids);
                let packed = PackedRows::pack(ids, &batch.vectors, metadata);
                let job = JobSpec::Import(ImportJob {
                    collection: collection.clone(),
                    rows: Vec::new(),
                    packed: Some(packed),
                });
                let data = import(&mut client, job)
                    .await
                    .with_context(|| format!("rows {first}..{} of the file", first + n))?;
                let done = parse_data::<Imported>(data, "import")?.rows;
                written.fetch_add(done, Ordering::Relaxed);
                bar.inc(n);
            }
        });
    }
    let outcome = tokio::select! {
        failed = async {
            while let Some(done) = workers.join_next().await {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(anyhow::anyhow!("a load task failed: {e}")),
                }
            }
            Ok(())
        } => failed,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!(
            "interrupted: the jobs in flight may have stored part of their rows; running the \
             same load again writes every row again"
        )),
    };
    workers.abort_all();
    reader.abort();
    let secs = started.elapsed().as_secs_f64();
    let written = written.load(Ordering::Relaxed);
    if let Err(e) = outcome {
        bar.abandon();
        return Err(e.context(format!(
            "{written} rows were written into {collection} before the load stopped; running \
             it again writes every row again"
        )));
    }
    bar.finish_and_clear();
    println!(
        "loaded {written} rows of {dim} dimensions into {collection} in {secs:.1}s: {:.0} rows/s \
         ({per_job} rows per job, {in_flight} jobs in flight)",
        written as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// The chunk id and metadata of each row, a document of one chunk named by its id. Pure.
pub fn documents(ids: &[u64]) -> (Vec<u64>, Vec<String>) {
    ids.iter()
        .map(|id| {
            let doc = id.to_string();
            // Written out rather than built as a JSON value: a number needs no escaping, and
            // this runs once per row of a load.
            let metadata = format!(r#"{{"_doc":"{doc}","_chunk":0,"_chunks":1,"_text":""}}"#);
            (chunk_id(&doc, 0), metadata)
        })
        .unzip()
}

/// One import job, sent again while the collection is briefly unavailable (a new one whose
/// coordinator is starting, a partition electing a new primary): writing rows again writes
/// the same rows, so it is safe.
async fn import(client: &mut GatewayClient, job: JobSpec) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + UNAVAILABLE_PATIENCE;
    loop {
        let outcome = client.run(job.clone(), |_| {}).await;
        match outcome.and_then(|o| o.into_data()) {
            Ok(data) => return Ok(data),
            Err(e) if e.code() == Some(ErrorCode::Unavailable) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(failed("import", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_documents_of_one_chunk() {
        let (ids, metadata) = documents(&[7, 0]);
        assert_eq!(ids, [chunk_id("7", 0), chunk_id("0", 0)]);
        let m: serde_json::Value = serde_json::from_str(&metadata[0]).unwrap();
        assert_eq!(
            m,
            serde_json::json!({"_doc": "7", "_chunk": 0, "_chunks": 1, "_text": ""})
        );
        // Hashed ids spread rows over the partitions, where ids 0, 1, 2... would not.
        let (spread, _) = documents(&(0..1000).collect::<Vec<u64>>());
        let mut per = [0; 4];
        for id in spread {
            per[arbor_actors::retrieval::route::partition_of(id, 4) as usize] += 1;
        }
        assert!(per.iter().all(|&n| n > 200), "{per:?}");
    }

    #[test]
    fn jobs_fit_the_gateways_messages() {
        // 384-d: 2,048 base64 characters a row.
        assert_eq!(rows_per_job(384, 4 << 20), 3_080_192 / 2160);
        assert!(rows_per_job(384, 1 << 20) * 2160 < 1 << 20);
        assert_eq!(rows_per_job(4, 4 << 20), MAX_IMPORT_ROWS);
        assert_eq!(rows_per_job(1 << 20, 4 << 20), 1);
    }
}
