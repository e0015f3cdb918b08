//! Builds an [`HnswIndex`] (or, with `--quantization int8`, a [`QuantizedHnsw`]) from raw rows
//! and sweeps `ef`: queries/s (one query per call) and recall@k against given exact answers.
//! `benches/peers/hnsw.py` runs it beside hnswlib on the same vectors and prints the
//! comparison; by hand:
//!
//! ```sh
//! cargo run --release -p arbor-kernels --example hnsw_sweep -- --rows R.f32 --queries Q.f32 \
//!     --truth T.u64 --dim 384 [--k 10] [--m 16] [--ef-construction 128] [--ef 16,32,64] \
//!     [--threads 1] [--quantization none|int8] [--save GRAPH]
//! ```
//!
//! The files are little-endian and headerless: rows and queries `f32` (row after row), the
//! exact answers `u64` (k row numbers per query, best first). Prints one JSON object:
//! `{"build_s": .., "build_cpu_s": .., "threads": .., "rows": .., "quantization": "none",
//! "index_bytes": .., "vector_bytes": .., "points": [{"ef": .., "qps": .., "cpu_qps": ..,
//! "recall": ..}, ..]}` (`cpu_*`: by the process's CPU time rather than the wall clock, a
//! steadier figure on a shared machine). `index_bytes` is the index's
//! [`VectorIndex::memory`] (host bytes: vectors, graph, id map); `vector_bytes` the part of it
//! that is the vectors alone, as the index lays them out in 64-byte lines (f32 rows, or int8
//! codes; no padding at dimension 384).
//!
//! `--quantization int8` does what a collection with `--index hnsw --quantization int8` does:
//! a [`ScalarQuantizer`] is trained on up to 32,768 of the rows taken evenly (as the partition
//! samples its store), the graph is built on their int8 codes, and each query takes the
//! graph's [`quant::candidates`]`(k)` hits (so `ef` is at least that many: smaller values of
//! `--ef` are raised to it) and rescores them with [`quant::rescore`] on the f32 rows. Here the
//! f32 rows stay in a plain `Vec` in memory; the partition reads them from disk instead, so
//! they are not in `index_bytes` (the partition does not hold them either) and the rescoring
//! here costs less than it does there. The JSON then also has `"candidates"` and `train_s`
//! (training is part of `build_s`).
//!
//! `--threads N` builds with [`HnswIndex::upsert_parallel`] on a pool of N threads (1, the
//! default, is the deterministic sequential [`VectorIndex::upsert`]); queries always run one
//! at a time on the calling thread. `--save GRAPH` also writes the graph to GRAPH, reads it
//! back, checks that the copy answers alike and adds `save_s`, `load_s` and `file_bytes`;
//! `--load GRAPH` searches a graph so saved instead of building one (`build_s` is then the
//! time it took to read).

use std::collections::HashSet;
use std::time::Instant;

use arbor_kernels::hnsw::{HnswIndex, HnswParams, QuantizedHnsw};
use arbor_kernels::quant::{self, ScalarQuantizer, TrainOptions};
use arbor_kernels::topk::{Hit, Metric, VectorIndex};

/// Rows a quantizer is trained on at most, taken evenly through the rows: the partition's
/// sample (`SAMPLE_ROWS` in `actors/src/partition`).
const SAMPLE_ROWS: usize = 32_768;

struct Args {
    rows: String,
    queries: String,
    truth: String,
    dim: usize,
    k: usize,
    m: usize,
    ef_construction: usize,
    efs: Vec<usize>,
    threads: usize,
    int8: bool,
    save: Option<String>,
    load: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        rows: String::new(),
        queries: String::new(),
        truth: String::new(),
        dim: 0,
        k: 10,
        m: 16,
        ef_construction: 128,
        efs: vec![16, 32, 64, 128, 256],
        threads: 1,
        int8: false,
        save: None,
        load: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag} {v}: not a number"))
        };
        match flag.as_str() {
            "--rows" => args.rows = value,
            "--queries" => args.queries = value,
            "--truth" => args.truth = value,
            "--dim" => args.dim = number(&value)?,
            "--k" => args.k = number(&value)?,
            "--m" => args.m = number(&value)?,
            "--ef-construction" => args.ef_construction = number(&value)?,
            "--threads" => args.threads = number(&value)?.max(1),
            "--quantization" => {
                args.int8 = match value.as_str() {
                    "none" => false,
                    "int8" => true,
                    other => return Err(format!("--quantization {other}: none or int8")),
                }
            }
            "--save" => args.save = Some(value),
            "--load" => args.load = Some(value),
            "--ef" => {
                args.efs = value
                    .split(',')
                    .map(number)
                    .collect::<Result<Vec<_>, _>>()?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.rows.is_empty() || args.queries.is_empty() || args.truth.is_empty() || args.dim == 0 {
        return Err("--rows, --queries, --truth and --dim are needed".into());
    }
    Ok(args)
}

/// CPU seconds this process has used (all its threads): on a shared machine the wall clock
/// also counts the time other processes held the cores, CPU time does not.
fn cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn read_f32(path: &str) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn read_u64(path: &str) -> Result<Vec<u64>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(bytes
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        .collect())
}

/// The graph under test: over f32 rows, or over int8 codes whose hits are rescored on f32.
enum Index {
    F32(HnswIndex),
    Int8(QuantizedHnsw),
}

impl Index {
    fn read(path: &str, dim: usize, int8: bool) -> Result<Index, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
        let mut r = std::io::BufReader::new(file);
        let index = if int8 {
            QuantizedHnsw::read_from(&mut r, dim, Metric::Cosine).map(Index::Int8)
        } else {
            HnswIndex::read_from(&mut r, dim, Metric::Cosine).map(Index::F32)
        };
        index.map_err(|e| format!("{path}: {e}"))
    }

    fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        match self {
            Index::F32(i) => i.write_to(w),
            Index::Int8(i) => i.write_to(w),
        }
    }

    fn len(&self) -> usize {
        match self {
            Index::F32(i) => i.len(),
            Index::Int8(i) => i.len(),
        }
    }

    /// [`VectorIndex::memory`]'s host bytes.
    fn memory(&self) -> usize {
        match self {
            Index::F32(i) => i.memory().host_bytes,
            Index::Int8(i) => i.memory().host_bytes,
        }
    }

    /// The bytes of the vectors alone, as the index lays them out: rows of 64-byte lines (16
    /// f32 components, or 64 codes, a line), the quantizer's ranges besides for int8.
    fn vector_bytes(&self, dim: usize) -> usize {
        match self {
            Index::F32(_) => self.len() * dim.div_ceil(16) * 64,
            Index::Int8(i) => self.len() * dim.div_ceil(64) * 64 + i.quantizer().to_bytes().len(),
        }
    }

    /// The graph's own hits for one query: `n` of them, `ef` candidates kept.
    fn graph_hits(&self, q: &[f32], n: usize, ef: usize) -> Result<Vec<Hit>, String> {
        let found = match self {
            Index::F32(i) => i.search_with_ef(q, n, None, Some(ef)),
            Index::Int8(i) => i.search_with_ef(q, n, None, Some(ef)),
        };
        Ok(found
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .unwrap_or_default())
    }

    /// The best `k` rows for one query: the f32 graph's hits, or the code graph's
    /// [`quant::candidates`]`(k)` hits rescored on the f32 `rows` (gathered from memory here,
    /// read from disk by the partition).
    fn search(&self, q: &[f32], k: usize, ef: usize, rows: &[f32]) -> Result<Vec<Hit>, String> {
        match self {
            Index::F32(_) => self.graph_hits(q, k, ef),
            Index::Int8(_) => {
                let dim = q.len();
                let found = self.graph_hits(q, quant::candidates(k), ef)?;
                let ids: Vec<u64> = found.iter().map(|h| h.id).collect();
                let mut vectors = Vec::with_capacity(ids.len() * dim);
                for &id in &ids {
                    let at = id as usize * dim;
                    vectors.extend_from_slice(&rows[at..at + dim]);
                }
                quant::rescore(Metric::Cosine, q, &ids, &vectors, k).map_err(|e| e.to_string())
            }
        }
    }
}

fn main() -> Result<(), String> {
    let a = parse()?;
    let rows = read_f32(&a.rows)?;
    let queries = read_f32(&a.queries)?;
    let truth = read_u64(&a.truth)?;
    let n = rows.len() / a.dim;
    let nq = queries.len() / a.dim;
    if truth.len() != nq * a.k {
        return Err(format!(
            "{} answers for {nq} queries of k {}",
            truth.len(),
            a.k
        ));
    }
    let params = HnswParams {
        m: a.m,
        ef_construction: a.ef_construction,
        ..HnswParams::default()
    };
    let ids: Vec<u64> = (0..n as u64).collect();
    let (started, cpu_started) = (Instant::now(), cpu_seconds());
    let pool = match a.threads {
        1 => None,
        t => Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .map_err(|e| e.to_string())?,
        ),
    };
    let on_pool = |f: &mut (dyn FnMut() -> Result<(), String> + Send)| match &pool {
        Some(pool) => pool.install(f),
        None => f(),
    };
    let mut train_s = None;
    let index = if let Some(path) = &a.load {
        Index::read(path, a.dim, a.int8)?
    } else if a.int8 {
        // The partition's sample: every `step`-th row, up to SAMPLE_ROWS of them.
        let trained = Instant::now();
        let step = n.div_ceil(SAMPLE_ROWS).max(1);
        let sample: Vec<f32> = rows
            .chunks_exact(a.dim)
            .step_by(step)
            .flatten()
            .copied()
            .collect();
        let mut quantizer = None;
        on_pool(&mut || {
            let q =
                ScalarQuantizer::train(a.dim, Metric::Cosine, &sample, &TrainOptions::default());
            quantizer = Some(q.map_err(|e| e.to_string())?);
            Ok(())
        })?;
        train_s = Some(trained.elapsed().as_secs_f64());
        let quantizer = quantizer.ok_or("no quantizer")?;
        let mut index = QuantizedHnsw::new(quantizer, params).map_err(|e| e.to_string())?;
        on_pool(&mut || match a.threads {
            1 => index.upsert(&ids, &rows).map_err(|e| e.to_string()),
            _ => index
                .upsert_parallel(&ids, &rows)
                .map_err(|e| e.to_string()),
        })?;
        Index::Int8(index)
    } else {
        let mut index = HnswIndex::new(a.dim, Metric::Cosine, params).map_err(|e| e.to_string())?;
        on_pool(&mut || match a.threads {
            1 => index.upsert(&ids, &rows).map_err(|e| e.to_string()),
            _ => index
                .upsert_parallel(&ids, &rows)
                .map_err(|e| e.to_string()),
        })?;
        Index::F32(index)
    };
    let build_s = started.elapsed().as_secs_f64();
    let build_cpu_s = cpu_seconds() - cpu_started;
    // A code graph's search asks for candidates(k) hits, so it keeps at least that many.
    let candidates = quant::candidates(a.k);
    let mut efs: Vec<usize> = Vec::new();
    for &ef in &a.efs {
        let ef = if a.int8 { ef.max(candidates) } else { ef };
        if !efs.contains(&ef) {
            efs.push(ef);
        }
    }
    let mut extra = String::new();
    if let Some(path) = &a.save {
        let started = Instant::now();
        let mut file = std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?;
        index
            .write_to(&mut file)
            .map_err(|e| format!("{path}: {e}"))?;
        file.sync_all().map_err(|e| format!("{path}: {e}"))?;
        let save_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let loaded = Index::read(path, a.dim, a.int8)?;
        let load_s = started.elapsed().as_secs_f64();
        let bytes = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
        let ef = efs.first().copied().unwrap_or(64);
        let n = if a.int8 { candidates } else { a.k };
        for q in queries.chunks_exact(a.dim).take(100) {
            if index.graph_hits(q, n, ef)? != loaded.graph_hits(q, n, ef)? {
                return Err(format!("{path}: the loaded graph answers differently"));
            }
        }
        extra = format!(r#", "save_s": {save_s:.3}, "load_s": {load_s:.3}, "file_bytes": {bytes}"#);
    }
    let (index_bytes, vector_bytes) = (index.memory(), index.vector_bytes(a.dim));
    extra += &format!(
        r#", "quantization": "{}", "index_bytes": {index_bytes}, "vector_bytes": {vector_bytes}"#,
        if a.int8 { "int8" } else { "none" }
    );
    if a.int8 {
        extra += &format!(r#", "candidates": {candidates}"#);
    }
    if let Some(t) = train_s {
        extra += &format!(r#", "train_s": {t:.3}"#);
    }
    let mut points = Vec::new();
    for &ef in &efs {
        let search = |q: &[f32]| index.search(q, a.k, ef, &rows);
        let mut found = 0usize;
        for (i, q) in queries.chunks_exact(a.dim).enumerate() {
            let want: HashSet<u64> = truth[i * a.k..(i + 1) * a.k].iter().copied().collect();
            found += search(q)?.iter().filter(|h| want.contains(&h.id)).count();
        }
        let recall = found as f64 / (nq * a.k) as f64;
        // Whole passes over the queries until a second has gone by.
        let (mut done, started, cpu_started) = (0usize, Instant::now(), cpu_seconds());
        while started.elapsed().as_secs_f64() < 1.0 {
            for q in queries.chunks_exact(a.dim) {
                std::hint::black_box(search(q)?);
            }
            done += nq;
        }
        let qps = done as f64 / started.elapsed().as_secs_f64();
        let cpu_qps = done as f64 / (cpu_seconds() - cpu_started);
        points.push(format!(
            r#"{{"ef": {ef}, "qps": {qps:.1}, "cpu_qps": {cpu_qps:.1}, "recall": {recall:.5}}}"#
        ));
    }
    println!(
        r#"{{"build_s": {build_s:.3}, "build_cpu_s": {build_cpu_s:.3}, "threads": {}, "rows": {}{extra}, "points": [{}]}}"#,
        a.threads,
        index.len(),
        points.join(", ")
    );
    Ok(())
}
