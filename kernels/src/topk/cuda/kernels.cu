// Tiled top-k selection for the GPU exact scan. Compiled at run time with NVRTC.
//
// cuBLAS scores one tile of rows against a batch of queries into a column-major scratch
// matrix (rows_in_tile x queries, one column per query). tile_topk then reduces each
// CHUNK-row piece of a column to its k best (score, row) candidates, written to a candidate
// buffer that holds every chunk of the whole collection. Once all tiles are done,
// select_final reduces each query's candidates to its k best. The full queries x rows score
// matrix never exists: only one tile of it, and k candidates per chunk.
//
// Keys are higher-is-better (for L2: 2 q.v - |v|^2). Rows that are masked out or past the
// end get -inf and row NO_ROW. Ties go to the smaller row.

#define CHUNK 2048
#define THREADS 256
#define NEG_INF __int_as_float((int)0xff800000u)
#define NO_ROW 0xffffffffu

__device__ __forceinline__ bool beats(float a, unsigned ra, float b, unsigned rb) {
    return a > b || (a == b && ra < rb);
}

// The block-wide best (s, r); every thread gets it back in s and r.
__device__ void block_best(float& s, unsigned& r) {
    __shared__ float ws[THREADS / 32];
    __shared__ unsigned wr[THREADS / 32];
    for (int off = 16; off > 0; off >>= 1) {
        float os = __shfl_down_sync(0xffffffffu, s, off);
        unsigned orow = __shfl_down_sync(0xffffffffu, r, off);
        if (beats(os, orow, s, r)) { s = os; r = orow; }
    }
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    if (lane == 0) { ws[warp] = s; wr[warp] = r; }
    __syncthreads();
    if (warp == 0) {
        s = lane < THREADS / 32 ? ws[lane] : NEG_INF;
        r = lane < THREADS / 32 ? wr[lane] : NO_ROW;
        for (int off = 16; off > 0; off >>= 1) {
            float os = __shfl_down_sync(0xffffffffu, s, off);
            unsigned orow = __shfl_down_sync(0xffffffffu, r, off);
            if (beats(os, orow, s, r)) { s = os; r = orow; }
        }
        if (lane == 0) { ws[0] = s; wr[0] = r; }
    }
    __syncthreads();
    s = ws[0];
    r = wr[0];
    __syncthreads();
}

// grid (chunks in this tile, queries), block THREADS.
extern "C" __global__ void tile_topk(
    const float* __restrict__ scores, int ld, int rows_in_tile, unsigned row0,
    const float* __restrict__ sq_norms, const unsigned char* __restrict__ mask, int l2,
    int k, int chunks_total, int chunk0,
    float* __restrict__ cand_s, unsigned* __restrict__ cand_r)
{
    __shared__ float vals[CHUNK];
    const int q = blockIdx.y;
    const int local0 = blockIdx.x * CHUNK;
    const float* col = scores + (size_t)q * ld;
    for (int i = threadIdx.x; i < CHUNK; i += THREADS) {
        const int local = local0 + i;
        float v = NEG_INF;
        if (local < rows_in_tile) {
            const unsigned row = row0 + local;
            if (mask == 0 || mask[row]) {
                v = col[local];
                if (l2) v = 2.0f * v - sq_norms[row];
            }
        }
        vals[i] = v;
    }
    __syncthreads();
    const size_t out = ((size_t)q * chunks_total + chunk0 + blockIdx.x) * k;
    for (int j = 0; j < k; ++j) {
        float s = NEG_INF;
        unsigned r = NO_ROW;
        for (int i = threadIdx.x; i < CHUNK; i += THREADS) {
            const float v = vals[i];
            if (beats(v, i, s, r)) { s = v; r = i; }
        }
        block_best(s, r);
        if (s == NEG_INF) {
            // Nothing left in this chunk (the same answer in every thread).
            for (int jj = j + threadIdx.x; jj < k; jj += THREADS) {
                cand_s[out + jj] = NEG_INF;
                cand_r[out + jj] = NO_ROW;
            }
            return;
        }
        if (threadIdx.x == 0) {
            cand_s[out + j] = s;
            cand_r[out + j] = row0 + local0 + r;
            vals[r] = NEG_INF;
        }
        __syncthreads();
    }
}

// grid (queries), block THREADS. Consumes cand_s (selected entries are knocked out).
extern "C" __global__ void select_final(
    float* __restrict__ cand_s, const unsigned* __restrict__ cand_r, int n_cand, int k,
    float* __restrict__ out_s, unsigned* __restrict__ out_r)
{
    const int q = blockIdx.x;
    float* cs = cand_s + (size_t)q * n_cand;
    const unsigned* cr = cand_r + (size_t)q * n_cand;
    for (int j = 0; j < k; ++j) {
        float mine_s = NEG_INF;
        unsigned mine_r = NO_ROW;
        int mine_at = -1;
        for (int i = threadIdx.x; i < n_cand; i += THREADS) {
            const float v = cs[i];
            const unsigned row = cr[i];
            if (beats(v, row, mine_s, mine_r)) { mine_s = v; mine_r = row; mine_at = i; }
        }
        float s = mine_s;
        unsigned r = mine_r;
        block_best(s, r);
        if (s == NEG_INF) {
            for (int jj = j + threadIdx.x; jj < k; jj += THREADS) {
                out_s[(size_t)q * k + jj] = NEG_INF;
                out_r[(size_t)q * k + jj] = NO_ROW;
            }
            return;
        }
        // Rows are unique among live candidates, so exactly one thread holds the winner.
        if (mine_at >= 0 && mine_r == r && mine_s == s) cs[mine_at] = NEG_INF;
        if (threadIdx.x == 0) {
            out_s[(size_t)q * k + j] = s;
            out_r[(size_t)q * k + j] = r;
        }
        __syncthreads();
    }
}
