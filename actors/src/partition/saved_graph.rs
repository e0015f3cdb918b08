//! A partition's HNSW graph saved beside its store (`<store file>.hnsw`), so that a restart
//! loads it and replays the writes made since, instead of building the graph again.
//!
//! Layout: the magic `ARBSAVED`, the store's sequence number and history when the graph was
//! saved (`u64`, then a `u32` count of `(epoch, first seq)` pairs), an FNV-1a checksum of
//! those bytes, then the graph as [`HnswIndex::write_to`] (or, over int8 codes,
//! [`QuantizedHnsw::write_to`], with its quantizer) writes it, with a checksum of its own.
//! Little-endian.
//!
//! A saved graph is used only when the store's history still starts with the saved one:
//! the writes after the saved sequence number are then exactly the store's changes after it
//! ([`Store::changes_after`]). A replica that undid writes (a divergence), or copied its
//! partition anew, has another history, and builds its graph again. Anything wrong with the
//! file (truncated, corrupt, other settings) is logged and the graph is built again: the
//! file is a cache of what the store holds, never the only copy of anything.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use arbor_kernels::hnsw::{HnswIndex, HnswParams, QuantizedHnsw};

use super::index::PartitionIndex;
use super::store::{Change, History, Store};

const MAGIC: &[u8; 8] = b"ARBSAVED";
/// The most history entries a header may claim (a replica's history is a few epochs).
const MAX_HISTORY: u32 = 1 << 20;
/// Changes replayed per read of the store.
const REPLAY_PAGE: usize = 4096;

/// Where the graph of the store at `store` is saved.
pub fn path_of(store: &str) -> PathBuf {
    PathBuf::from(format!("{store}.hnsw"))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn header(seq: u64, history: &History) -> Vec<u8> {
    let mut h = Vec::with_capacity(20 + history.len() * 16);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&seq.to_le_bytes());
    h.extend_from_slice(&(history.len() as u32).to_le_bytes());
    for (epoch, first) in history {
        h.extend_from_slice(&epoch.to_le_bytes());
        h.extend_from_slice(&first.to_le_bytes());
    }
    h
}

/// Saves `graph`, which holds the store's rows up to `seq` with `history`: written beside,
/// synced, then renamed over the previous save, so a crash leaves one whole file or the
/// other. `Ok(false)`: the index is not a graph, nothing is saved.
pub fn save(
    path: &Path,
    graph: &PartitionIndex,
    seq: u64,
    history: &History,
) -> std::io::Result<bool> {
    if !matches!(
        graph,
        PartitionIndex::Hnsw(_) | PartitionIndex::CodeGraph(_)
    ) {
        return Ok(false);
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    let head = header(seq, history);
    out.write_all(&head)?;
    out.write_all(&fnv1a(&head).to_le_bytes())?;
    match graph {
        PartitionIndex::Hnsw(g) => g.write_to(&mut out)?,
        PartitionIndex::CodeGraph(g) => g.write_to(&mut out)?,
        PartitionIndex::Exact(_) | PartitionIndex::Codes(_) => unreachable!("checked above"),
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

/// The saved graph at `path` (over int8 codes when `codes`) with the store's later writes
/// replayed into it: `Ok(None)` when none is saved, `Err` (why) when the one saved cannot be
/// used.
pub fn load(
    path: &Path,
    store: &Store,
    params: HnswParams,
    codes: bool,
    rows: usize,
) -> Result<Option<PartitionIndex>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    let mut input = BufReader::with_capacity(1 << 20, file);
    let (seq, history) = read_header(&mut input)?;
    let current = store.history();
    if seq > store.seq() || current.get(..history.len()) != Some(&history[..]) {
        return Err(format!(
            "it was saved at write {seq} of history {history:?}; the store is at write {} of \
             history {current:?}",
            store.seq()
        ));
    }
    let (dim, metric) = (store.dim(), store.metric());
    let (saved, mut graph) = if codes {
        let mut g = QuantizedHnsw::read_from(&mut input, dim, metric).map_err(|e| e.to_string())?;
        g.set_ef_search(params.ef_search);
        (g.params(), PartitionIndex::CodeGraph(g))
    } else {
        let mut g = HnswIndex::read_from(&mut input, dim, metric).map_err(|e| e.to_string())?;
        g.set_ef_search(params.ef_search);
        (g.params(), PartitionIndex::Hnsw(g))
    };
    if (saved.m, saved.ef_construction) != (params.m, params.ef_construction) {
        return Err(format!(
            "it was built with m {} and ef_construction {}, the collection asks for {} and {}",
            saved.m, saved.ef_construction, params.m, params.ef_construction
        ));
    }
    replay(&mut graph, store, seq)?;
    if graph.len() != rows {
        return Err(format!(
            "after the writes since it was saved it holds {} rows, the store {rows}",
            graph.len()
        ));
    }
    Ok(Some(graph))
}

fn read_header(input: &mut impl Read) -> Result<(u64, History), String> {
    let short = |_| "it ends inside its header".to_string();
    let mut fixed = [0u8; 20];
    input.read_exact(&mut fixed).map_err(short)?;
    if &fixed[..8] != MAGIC {
        return Err("it is not a saved graph".into());
    }
    let seq = u64::from_le_bytes(fixed[8..16].try_into().expect("8 bytes"));
    let n = u32::from_le_bytes(fixed[16..20].try_into().expect("4 bytes"));
    if n > MAX_HISTORY {
        return Err(format!("its header claims {n} history entries"));
    }
    let mut pairs = vec![0u8; n as usize * 16];
    input.read_exact(&mut pairs).map_err(short)?;
    let history: History = pairs
        .chunks_exact(16)
        .map(|p| {
            (
                u64::from_le_bytes(p[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(p[8..].try_into().expect("8 bytes")),
            )
        })
        .collect();
    let mut sum = [0u8; 8];
    input.read_exact(&mut sum).map_err(short)?;
    if u64::from_le_bytes(sum) != fnv1a(&header(seq, &history)) {
        return Err("its header's checksum does not match".into());
    }
    Ok((seq, history))
}

/// Applies the store's changes after write `seq` to `graph`, in order.
fn replay(graph: &mut PartitionIndex, store: &Store, seq: u64) -> Result<(), String> {
    let mut after = (seq, u64::MAX);
    loop {
        let (changes, next) = store
            .changes_after(after, REPLAY_PAGE, usize::MAX)
            .map_err(|e| e.to_string())?;
        let mut gone = Vec::new();
        let (mut ids, mut vectors) = (Vec::new(), Vec::new());
        for change in changes {
            match change {
                Change::Row { record, .. } => {
                    ids.push(record.id);
                    vectors.extend_from_slice(&record.vector);
                }
                Change::Gone { id, .. } => gone.push(id),
            }
        }
        // Each id appears once in the changes (at its last write), so the order of the two
        // kinds within a page does not matter.
        graph.upsert(&ids, &vectors).map_err(|e| e.to_string())?;
        graph.remove(&gone).map_err(|e| e.to_string())?;
        match next {
            Some(n) => after = n,
            None => return Ok(()),
        }
    }
}

/// Removes a saved graph that cannot be used (a missing one is fine).
pub fn discard(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), "cannot remove a stale saved graph: {e}");
    }
}
