//! Builds an [`HnswIndex`] from raw rows and sweeps `ef`: queries/s (one query per call) and
//! recall@k against given exact answers. `benches/peers/hnsw.py` runs it beside hnswlib on the
//! same vectors and prints the comparison; by hand:
//!
//! ```sh
//! cargo run --release -p arbor-kernels --example hnsw_sweep -- --rows R.f32 --queries Q.f32 \
//!     --truth T.u64 --dim 384 [--k 10] [--m 16] [--ef-construction 128] [--ef 16,32,64]
//! ```
//!
//! The files are little-endian and headerless: rows and queries `f32` (row after row), the
//! exact answers `u64` (k row numbers per query, best first). Prints one JSON object:
//! `{"build_s": .., "points": [{"ef": .., "qps": .., "recall": ..}, ..]}`.

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
    let started = Instant::now();
    index.upsert(&ids, &rows).map_err(|e| e.to_string())?;
    let build_s = started.elapsed().as_secs_f64();
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
        let (mut done, started) = (0usize, Instant::now());
        while started.elapsed().as_secs_f64() < 1.0 {
            for q in queries.chunks_exact(a.dim) {
                std::hint::black_box(search(q)?);
            }
            done += nq;
        }
        let qps = done as f64 / started.elapsed().as_secs_f64();
        points.push(format!(
            r#"{{"ef": {ef}, "qps": {qps:.1}, "recall": {recall:.5}}}"#
        ));
    }
    println!(
        r#"{{"build_s": {build_s:.3}, "rows": {n}, "points": [{}]}}"#,
        points.join(", ")
    );
    Ok(())
}
