//! The exact scan on a CUDA GPU: fp16 rows resident on the device, cuBLAS scoring with fp32
//! accumulation, and a tiled top-k kernel (compiled with NVRTC when the index is built).
//!
//! A search processes the rows one tile at a time: `cublasGemmEx` scores the tile against
//! the batch of queries into a scratch matrix, and `tile_topk` reduces every 2,048-row chunk
//! of it to `k` candidates per query; `select_final` then picks each query's `k` best of all
//! candidates. The tile is sized so that its scores stay within [`SCORE_BUDGET`] floats, so
//! the full queries × rows score matrix is never materialized for big batches.
//!
//! The constructor checks the driver, NVRTC and cuBLAS libraries before any other cudarc
//! call (cudarc panics when a library is missing) and answers with an error instead; callers
//! then use [`super::CpuIndex`] (see [`super::ExactIndex::new_or_cpu`]).
//!
//! Scores are computed from fp16-rounded rows and queries, so they differ from the CPU's by
//! about 1e-3 relative, and rows whose scores are that close may swap places.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{CudaBlas, result as blas, sys as blas_sys};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig,
    PushKernelArg,
};
use half::f16;

use super::{Filter, Hit, MemoryUsage, Metric, TopKError, VectorIndex, check_queries, check_rows};
use crate::device::{NoGpu, cuda_driver};

const KERNELS: &str = include_str!("kernels.cu");
/// Rows per candidate chunk; matches `CHUNK` in kernels.cu.
const CHUNK: usize = 2048;
/// Threads per block; matches `THREADS` in kernels.cu.
const THREADS: u32 = 256;
/// The largest k the GPU selection supports.
pub const MAX_K: usize = 256;
/// Floats in one tile's score scratch (128 MiB).
const SCORE_BUDGET: usize = 1 << 25;
/// Queries per pass (the kernel grid's second dimension is limited to 65,535).
const MAX_BATCH: usize = 4096;
/// Rows allocated up front.
const INITIAL_CAPACITY: usize = 1024;
/// Past this many rows, capacity grows by this many rows at a time rather than doubling.
const GROW_STEP_ROWS: usize = 32 * 1024;
/// The row that marks an empty candidate slot.
const NO_ROW: u32 = u32::MAX;

fn cuda_err<E: std::fmt::Debug>(context: &'static str) -> impl FnOnce(E) -> TopKError {
    move |e| TopKError::Cuda {
        context,
        message: format!("{e:?}"),
    }
}

/// Checks that a dynamically loaded CUDA library is present, without letting cudarc panic.
fn library_present(name: &'static str, check: unsafe fn() -> bool) -> Result<(), TopKError> {
    // SAFETY: the presence checks only try to dlopen the library.
    let present = std::panic::catch_unwind(|| unsafe { check() }).unwrap_or(false);
    if present {
        Ok(())
    } else {
        Err(TopKError::NoGpu(NoGpu::Driver(format!(
            "the {name} library is not present on this machine"
        ))))
    }
}

/// An exact index whose rows live on one GPU as fp16.
pub struct CudaIndex {
    dim: usize,
    metric: Metric,
    ordinal: usize,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    tile_topk: CudaFunction,
    select_final: CudaFunction,
    /// `capacity × dim`, row-major; the first `ids.len()` rows are live.
    vectors: CudaSlice<f16>,
    /// `|v|²` of the fp16 row, per row (used by L2).
    sq_norms: CudaSlice<f32>,
    capacity: usize,
    ids: Vec<u64>,
    rows: HashMap<u64, usize>,
}

impl CudaIndex {
    /// Opens GPU `ordinal`, compiles the selection kernels and allocates an empty index.
    pub fn new(dim: usize, metric: Metric, ordinal: usize) -> Result<Self, TopKError> {
        if dim == 0 {
            return Err(TopKError::ZeroDimension);
        }
        cuda_driver()?;
        library_present("NVRTC", cudarc::nvrtc::sys::is_culib_present)?;
        library_present("cuBLAS", cudarc::cublas::sys::is_culib_present)?;
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("opening the device"))?;
        let stream = ctx.new_stream().map_err(cuda_err("creating a stream"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(cuda_err("starting cuBLAS"))?;
        let ptx = cudarc::nvrtc::compile_ptx(KERNELS).map_err(cuda_err("compiling kernels"))?;
        let module = ctx.load_module(ptx).map_err(cuda_err("loading kernels"))?;
        let tile_topk = module
            .load_function("tile_topk")
            .map_err(cuda_err("loading tile_topk"))?;
        let select_final = module
            .load_function("select_final")
            .map_err(cuda_err("loading select_final"))?;
        let vectors = stream
            .alloc_zeros::<f16>(INITIAL_CAPACITY * dim)
            .map_err(cuda_err("allocating rows"))?;
        let sq_norms = stream
            .alloc_zeros::<f32>(INITIAL_CAPACITY)
            .map_err(cuda_err("allocating norms"))?;
        tracing::debug!(ordinal, dim, %metric, "CUDA exact index ready");
        Ok(CudaIndex {
            dim,
            metric,
            ordinal,
            stream,
            blas,
            tile_topk,
            select_final,
            vectors,
            sq_norms,
            capacity: INITIAL_CAPACITY,
            ids: Vec::new(),
            rows: HashMap::new(),
        })
    }

    /// The GPU this index lives on.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Converts a row (or query) to what the GPU holds: prepared for the metric, in fp16.
    fn to_half(&self, v: &[f32]) -> Result<(Vec<f16>, f32), f32> {
        let mut v = v.to_vec();
        crate::topk::prepare(self.metric, &mut v);
        let max = f16::MAX.to_f32();
        if let Some(&bad) = v.iter().find(|x| x.abs() > max) {
            return Err(bad);
        }
        let half: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        let sq_norm = half.iter().map(|h| h.to_f32() * h.to_f32()).sum();
        Ok((half, sq_norm))
    }

    /// Makes room for `rows` rows, keeping the live ones: by doubling when `exact` is false
    /// (many small upserts), to exactly `rows` when it is true (a load of known size).
    fn grow_to(&mut self, rows: usize, exact: bool) -> Result<(), TopKError> {
        if rows <= self.capacity {
            return Ok(());
        }
        let capacity = next_capacity(self.capacity, rows, exact);
        let live = self.ids.len();
        let d = self.dim;
        let mut vectors = self
            .stream
            .alloc_zeros::<f16>(capacity * d)
            .map_err(cuda_err("growing rows"))?;
        let mut sq_norms = self
            .stream
            .alloc_zeros::<f32>(capacity)
            .map_err(cuda_err("growing norms"))?;
        if live > 0 {
            self.stream
                .memcpy_dtod(
                    &self.vectors.slice(..live * d),
                    &mut vectors.slice_mut(..live * d),
                )
                .map_err(cuda_err("copying rows"))?;
            self.stream
                .memcpy_dtod(
                    &self.sq_norms.slice(..live),
                    &mut sq_norms.slice_mut(..live),
                )
                .map_err(cuda_err("copying norms"))?;
        }
        self.vectors = vectors;
        self.sq_norms = sq_norms;
        self.capacity = capacity;
        Ok(())
    }

    /// Searches one batch of at most [`MAX_BATCH`] prepared fp16 queries.
    fn search_batch(
        &self,
        queries: &[f16],
        q_sq_norms: &[f32],
        k: usize,
        mask: Option<&CudaSlice<u8>>,
    ) -> Result<Vec<Vec<Hit>>, TopKError> {
        let d = self.dim;
        let nq = q_sq_norms.len();
        let len = self.ids.len();
        let stream = &self.stream;
        let chunks_total = len.div_ceil(CHUNK);
        let tile = (SCORE_BUDGET / nq / CHUNK).max(1) * CHUNK;
        let tile = tile.min(chunks_total * CHUNK);

        let q_dev = stream
            .clone_htod(queries)
            .map_err(cuda_err("copying queries"))?;
        let alloc = "allocating search scratch";
        let mut scores = stream
            .alloc_zeros::<f32>(tile * nq)
            .map_err(cuda_err(alloc))?;
        let mut cand_s = stream
            .alloc_zeros::<f32>(nq * chunks_total * k)
            .map_err(cuda_err(alloc))?;
        let mut cand_r = stream
            .alloc_zeros::<u32>(nq * chunks_total * k)
            .map_err(cuda_err(alloc))?;
        let mut out_s = stream.alloc_zeros::<f32>(nq * k).map_err(cuda_err(alloc))?;
        let mut out_r = stream.alloc_zeros::<u32>(nq * k).map_err(cuda_err(alloc))?;

        {
            let (vectors_ptr, _g1) = self.vectors.device_ptr(stream);
            let (norms_ptr, _g2) = self.sq_norms.device_ptr(stream);
            let (q_ptr, _g3) = q_dev.device_ptr(stream);
            let (scores_ptr, _g4) = scores.device_ptr_mut(stream);
            let (cand_s_ptr, _g5) = cand_s.device_ptr_mut(stream);
            let (cand_r_ptr, _g6) = cand_r.device_ptr_mut(stream);
            let (out_s_ptr, _g7) = out_s.device_ptr_mut(stream);
            let (out_r_ptr, _g8) = out_r.device_ptr_mut(stream);
            let mask_guard = mask.map(|m| m.device_ptr(stream));
            let mask_ptr: u64 = mask_guard.as_ref().map_or(0, |(p, _)| *p);

            let l2 = i32::from(self.metric == Metric::L2);
            let k_i = k as i32;
            let chunks_total_i = chunks_total as i32;
            let alpha = 1.0f32;
            let beta = 0.0f32;
            for t0 in (0..len).step_by(tile) {
                let rows_in = tile.min(len - t0);
                let a_ptr = vectors_ptr + (t0 * d * size_of::<f16>()) as u64;
                // Column-major view: the tile is a d × rows_in matrix, the queries d × nq.
                // scores (rows_in × nq) = tileᵀ · queries, so each query's scores are a column.
                // SAFETY: the pointers address live device buffers of the sizes named here,
                // all used on the stream the cuBLAS handle is bound to.
                unsafe {
                    blas::gemm_ex(
                        *self.blas.handle(),
                        blas_sys::cublasOperation_t::CUBLAS_OP_T,
                        blas_sys::cublasOperation_t::CUBLAS_OP_N,
                        rows_in as i32,
                        nq as i32,
                        d as i32,
                        (&alpha) as *const f32 as *const c_void,
                        a_ptr as *const c_void,
                        blas_sys::cudaDataType_t::CUDA_R_16F,
                        d as i32,
                        q_ptr as *const c_void,
                        blas_sys::cudaDataType_t::CUDA_R_16F,
                        d as i32,
                        (&beta) as *const f32 as *const c_void,
                        scores_ptr as *mut c_void,
                        blas_sys::cudaDataType_t::CUDA_R_32F,
                        rows_in as i32,
                        blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                }
                .map_err(cuda_err("scoring a tile (cublasGemmEx)"))?;

                let ld = rows_in as i32;
                let row0 = t0 as u32;
                let chunk0 = (t0 / CHUNK) as i32;
                let cfg = LaunchConfig {
                    grid_dim: (rows_in.div_ceil(CHUNK) as u32, nq as u32, 1),
                    block_dim: (THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut launch = stream.launch_builder(&self.tile_topk);
                launch
                    .arg(&scores_ptr)
                    .arg(&ld)
                    .arg(&ld)
                    .arg(&row0)
                    .arg(&norms_ptr)
                    .arg(&mask_ptr)
                    .arg(&l2)
                    .arg(&k_i)
                    .arg(&chunks_total_i)
                    .arg(&chunk0)
                    .arg(&cand_s_ptr)
                    .arg(&cand_r_ptr);
                // SAFETY: the arguments match tile_topk's signature in kernels.cu, and the
                // buffers hold every index the grid touches (see the sizes above).
                unsafe { launch.launch(cfg) }.map_err(cuda_err("launching tile_topk"))?;
            }

            let n_cand = (chunks_total * k) as i32;
            let cfg = LaunchConfig {
                grid_dim: (nq as u32, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = stream.launch_builder(&self.select_final);
            launch
                .arg(&cand_s_ptr)
                .arg(&cand_r_ptr)
                .arg(&n_cand)
                .arg(&k_i)
                .arg(&out_s_ptr)
                .arg(&out_r_ptr);
            // SAFETY: as above, for select_final.
            unsafe { launch.launch(cfg) }.map_err(cuda_err("launching select_final"))?;
        }

        let keys = stream
            .clone_dtoh(&out_s)
            .map_err(cuda_err("copying results"))?;
        let rows = stream
            .clone_dtoh(&out_r)
            .map_err(cuda_err("copying results"))?;
        stream.synchronize().map_err(cuda_err("searching"))?;
        Ok(keys
            .chunks_exact(k)
            .zip(rows.chunks_exact(k))
            .zip(q_sq_norms)
            .map(|((keys, rows), &q_sq)| {
                let mut hits: Vec<Hit> = keys
                    .iter()
                    .zip(rows)
                    .filter(|&(_, &row)| row != NO_ROW && (row as usize) < len)
                    .map(|(&key, &row)| Hit {
                        id: self.ids[row as usize],
                        score: crate::topk::score_from_key(self.metric, key, q_sq),
                    })
                    .collect();
                hits.sort_by(|a, b| crate::topk::compare(self.metric, a, b));
                hits
            })
            .collect())
    }
}

impl VectorIndex for CudaIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn metric(&self) -> Metric {
        self.metric
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), TopKError> {
        check_rows(self.dim, ids, vectors)?;
        let d = self.dim;
        let mut halves = Vec::with_capacity(ids.len());
        for (&id, v) in ids.iter().zip(vectors.chunks_exact(d)) {
            let row = self
                .to_half(v)
                .map_err(|value| TopKError::OutOfHalfRange { id, value })?;
            halves.push(row);
        }
        let new_ids = {
            let mut seen = std::collections::HashSet::new();
            ids.iter()
                .filter(|id| !self.rows.contains_key(id) && seen.insert(**id))
                .count()
        };
        let old_len = self.ids.len();
        let new_len = old_len + new_ids;
        if new_len > NO_ROW as usize {
            return Err(TopKError::TooManyRows {
                len: new_len,
                max: NO_ROW as usize,
            });
        }
        self.grow_to(new_len, false)?;

        // Appended rows are staged and copied at once; replaced rows are copied one by one.
        let mut staged = vec![f16::ZERO; new_ids * d];
        let mut staged_norms = vec![0.0f32; new_ids];
        let mut replaced = Vec::new();
        for (&id, (half, sq_norm)) in ids.iter().zip(halves) {
            let row = *self.rows.entry(id).or_insert_with(|| {
                self.ids.push(id);
                self.ids.len() - 1
            });
            if row >= old_len {
                let j = row - old_len;
                staged[j * d..(j + 1) * d].copy_from_slice(&half);
                staged_norms[j] = sq_norm;
            } else {
                replaced.push((row, half, sq_norm));
            }
        }
        let copy = cuda_err("copying rows to the GPU");
        if new_ids > 0 {
            self.stream
                .memcpy_htod(
                    &staged,
                    &mut self.vectors.slice_mut(old_len * d..new_len * d),
                )
                .map_err(copy)?;
            self.stream
                .memcpy_htod(
                    &staged_norms,
                    &mut self.sq_norms.slice_mut(old_len..new_len),
                )
                .map_err(cuda_err("copying norms to the GPU"))?;
        }
        for (row, half, sq_norm) in &replaced {
            let row = *row;
            self.stream
                .memcpy_htod(half, &mut self.vectors.slice_mut(row * d..(row + 1) * d))
                .map_err(cuda_err("copying rows to the GPU"))?;
            self.stream
                .memcpy_htod(
                    std::slice::from_ref(sq_norm),
                    &mut self.sq_norms.slice_mut(row..row + 1),
                )
                .map_err(cuda_err("copying norms to the GPU"))?;
        }
        // The host buffers above must outlive the asynchronous copies.
        self.stream
            .synchronize()
            .map_err(cuda_err("copying rows to the GPU"))?;
        Ok(())
    }

    fn reserve(&mut self, additional: usize) -> Result<(), TopKError> {
        self.ids.reserve_exact(additional);
        self.rows.reserve(additional);
        self.grow_to(self.ids.len() + additional, true)
    }

    fn remove(&mut self, ids: &[u64]) -> Result<usize, TopKError> {
        let d = self.dim;
        let row_bytes = d * size_of::<f16>();
        let mut removed = 0;
        for id in ids {
            let Some(row) = self.rows.remove(id) else {
                continue;
            };
            let last = self.ids.len() - 1;
            if row != last {
                let stream = self.stream.cu_stream();
                {
                    let (p, _g) = self.vectors.device_ptr_mut(&self.stream);
                    // SAFETY: rows `row` and `last` are distinct live rows of this buffer.
                    unsafe {
                        cudarc::driver::result::memcpy_dtod_async(
                            p + (row * row_bytes) as u64,
                            p + (last * row_bytes) as u64,
                            row_bytes,
                            stream,
                        )
                    }
                    .map_err(cuda_err("moving a row"))?;
                }
                let (p, _g) = self.sq_norms.device_ptr_mut(&self.stream);
                // SAFETY: as above, for the norms.
                unsafe {
                    cudarc::driver::result::memcpy_dtod_async(
                        p + (row * 4) as u64,
                        p + (last * 4) as u64,
                        4,
                        stream,
                    )
                }
                .map_err(cuda_err("moving a norm"))?;
                self.ids[row] = self.ids[last];
                self.rows.insert(self.ids[row], row);
            }
            self.ids.truncate(last);
            removed += 1;
        }
        Ok(removed)
    }

    fn search_filtered(
        &self,
        queries: &[f32],
        k: usize,
        filter: Option<Filter<'_>>,
    ) -> Result<Vec<Vec<Hit>>, TopKError> {
        let d = self.dim;
        let n = check_queries(d, queries)?;
        if k > MAX_K {
            return Err(TopKError::KTooLarge { k, max: MAX_K });
        }
        if k == 0 || self.ids.is_empty() {
            return Ok(vec![Vec::new(); n]);
        }
        let mut halves = Vec::with_capacity(n * d);
        let mut q_sq_norms = Vec::with_capacity(n);
        for (i, q) in queries.chunks_exact(d).enumerate() {
            let (half, _) = self
                .to_half(q)
                .map_err(|value| TopKError::QueryOutOfHalfRange { query: i, value })?;
            // The query's own |q|², in f32: the L2 distance is |q|² − (2 q·v − |v|²).
            q_sq_norms.push(q.iter().map(|x| x * x).sum());
            halves.extend(half);
        }
        let mask = filter
            .map(|f| {
                let mask: Vec<u8> = self.ids.iter().map(|&id| u8::from(f(id))).collect();
                self.stream
                    .clone_htod(&mask)
                    .map_err(cuda_err("copying the filter mask"))
            })
            .transpose()?;
        let mut hits = Vec::with_capacity(n);
        for (qs, norms) in halves
            .chunks(MAX_BATCH * d)
            .zip(q_sq_norms.chunks(MAX_BATCH))
        {
            hits.extend(self.search_batch(qs, norms, k, mask.as_ref())?);
        }
        Ok(hits)
    }

    fn memory(&self) -> MemoryUsage {
        let map = MemoryUsage::hash_map_bytes(
            self.rows.capacity(),
            size_of::<u64>() + size_of::<usize>(),
        );
        MemoryUsage {
            host_bytes: self.ids.capacity() * 8 + map,
            device_bytes: resident_device_bytes(self.capacity, self.dim),
        }
    }
}

/// The capacity to grow to when `rows` rows must fit: exactly `rows` for a load of known
/// size; otherwise doubling while small, then steps of [`GROW_STEP_ROWS`]. GPU memory is
/// committed when allocated, so doubling a million-row index would hold up to 0.77 GB that no
/// row uses; steps of 32k rows (25 MB at 384-d) cost a device-to-device copy each, which the
/// GPU does in about a millisecond.
fn next_capacity(capacity: usize, rows: usize, exact: bool) -> usize {
    if exact {
        rows
    } else {
        rows.max(capacity + capacity.min(GROW_STEP_ROWS))
    }
}

/// GPU memory an index keeps for `rows` rows of `dim` components: each row as fp16 plus its
/// f32 squared norm. Searches add transient scratch (scores of one tile, at most 128 MiB,
/// and `k` candidates per 2,048 rows per query) that is freed when they return.
pub fn resident_device_bytes(rows: usize, dim: usize) -> usize {
    rows * (dim * size_of::<f16>() + size_of::<f32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory target: a million 384-d rows in at most 0.8 GB of GPU memory, whether the
    /// partition was loaded at start (capacity reserved exactly) or filled by upserts.
    #[test]
    fn a_million_rows_of_384_fit_in_0_8_gb() {
        const TARGET: usize = 800_000_000;
        let loaded = next_capacity(INITIAL_CAPACITY, 1_000_000, true);
        assert_eq!(resident_device_bytes(loaded, 384), 772_000_000);
        let mut capacity = INITIAL_CAPACITY;
        let mut grown = 0;
        for rows in (32..=1_000_000).step_by(32) {
            if rows > capacity {
                capacity = next_capacity(capacity, rows, false);
                grown += 1;
            }
        }
        let bytes = resident_device_bytes(capacity, 384);
        assert!(
            bytes <= TARGET,
            "{capacity} rows of capacity take {bytes} bytes"
        );
        // Few enough copies to be cheap: doubling to 32k, then 32k rows at a time.
        assert!(grown < 40, "{grown} reallocations");
    }
}
