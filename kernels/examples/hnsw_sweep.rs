//! Builds an [`HnswIndex`] from raw rows and sweeps `ef`: queries/s (one query per call) and
//! recall@k against given exact answers. `benches/peers/hnsw.py` runs it beside hnswlib on the
//! same vectors and prints the comparison; by hand:
//!
//! ```sh
//! cargo run --release -p arbor-kernels --example hnsw_sweep -- --rows R.f32 --queries Q.f32 \
//!     --truth T.u64 --dim 384 [--k 10] [--m 16] [--ef-construction 128] [--ef 16,32,64] \
//!     [--threads 1] [--save GRAPH]
//! ```
//!
//! The files are little-endian and headerless: rows and queries `f32` (row after row), the
//! exact answers `u64` (k row numbers per query, best first). Prints one JSON object:
//! `{"build_s": .., "build_cpu_s": .., "threads": .., "points": [{"ef": .., "qps": ..,
//! "cpu_qps": .., "recall": ..}, ..]}` (`cpu_*`: by the process's CPU time rather than the wall
//! clock, a steadier figure on a shared machine).
//!
//! `--threads N` builds with [`HnswIndex::upsert_parallel`] on a pool of N threads (1, the
//! default, is the deterministic sequential [`VectorIndex::upsert`]); queries always run one
//! at a time on the calling thread. `--save GRAPH` also writes the graph to GRAPH, reads it
//! back, checks that the copy answers alike and adds `save_s`, `load_s` and `file_bytes`;
//! `--load GRAPH` searches a graph so saved instead of building one (`build_s` is then the
//! time it took to read).

use std::collections::HashSet;
use std::time::Instant;

use arbor_kernels::hnsw::{HnswIndex, HnswParams};
use arbor_kernels::topk::{Metric, VectorIndex};

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
    let mut index = HnswIndex::new(a.dim, Metric::Cosine, params).map_err(|e| e.to_string())?;
    let ids: Vec<u64> = (0..n as u64).collect();
    let (started, cpu_started) = (Instant::now(), cpu_seconds());
    if let Some(path) = &a.load {
        let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
        index = HnswIndex::read_from(&mut std::io::BufReader::new(file), a.dim, Metric::Cosine)
            .map_err(|e| format!("{path}: {e}"))?;
    } else if a.threads == 1 {
        index.upsert(&ids, &rows).map_err(|e| e.to_string())?;
    } else {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(a.threads)
            .build()
            .map_err(|e| e.to_string())?;
        pool.install(|| index.upsert_parallel(&ids, &rows))
            .map_err(|e| e.to_string())?;
    }
    let build_s = started.elapsed().as_secs_f64();
    let build_cpu_s = cpu_seconds() - cpu_started;
    let mut persisted = String::new();
    if let Some(path) = &a.save {
        let started = Instant::now();
        let mut file = std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?;
        index
            .write_to(&mut file)
            .map_err(|e| format!("{path}: {e}"))?;
        file.sync_all().map_err(|e| format!("{path}: {e}"))?;
        let save_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
        let loaded =
            HnswIndex::read_from(&mut std::io::BufReader::new(file), a.dim, Metric::Cosine)
                .map_err(|e| format!("{path}: {e}"))?;
        let load_s = started.elapsed().as_secs_f64();
        let bytes = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
        let ef = a.efs.first().copied().unwrap_or(64);
        for q in queries.chunks_exact(a.dim).take(100) {
            let want = index.search_with_ef(q, a.k, None, Some(ef));
            let got = loaded.search_with_ef(q, a.k, None, Some(ef));
            if want.map_err(|e| e.to_string())? != got.map_err(|e| e.to_string())? {
                return Err(format!("{path}: the loaded graph answers differently"));
            }
        }
        persisted =
            format!(r#", "save_s": {save_s:.3}, "load_s": {load_s:.3}, "file_bytes": {bytes}"#);
    }
    let mut points = Vec::new();
    for &ef in &a.efs {
        let search = |q: &[f32]| {
            index
                .search_with_ef(q, a.k, None, Some(ef))
                .map_err(|e| e.to_string())
        };
        let mut found = 0usize;
        for (i, q) in queries.chunks_exact(a.dim).enumerate() {
            let want: HashSet<u64> = truth[i * a.k..(i + 1) * a.k].iter().copied().collect();
            found += search(q)?[0]
                .iter()
                .filter(|h| want.contains(&h.id))
                .count();
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
        r#"{{"build_s": {build_s:.3}, "build_cpu_s": {build_cpu_s:.3}, "threads": {}, "rows": {n}{persisted}, "points": [{}]}}"#,
        a.threads,
        points.join(", ")
    );
    Ok(())
}
