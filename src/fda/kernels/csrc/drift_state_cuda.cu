// drift_state_cuda.cu -- the fused drift-state kernel (CUDA): ||u||^2, <xi, u> and the AMS sketch
// of u = w - w0 in one pass over w and w0 (and xi).  Plain CUDA, compiled by nvcc alone (no torch
// headers); the torch ops live in drift_state_cuda_op.cpp.
//
// BIT-REPRODUCIBLE: the same inputs give the same bits on every run, for every grid size and on
// every GPU.  Nothing here depends on which block handles which elements or in which order blocks
// or warps run; every floating-point sum has an order fixed by element indices alone:
//
//  * Indices are cut into chunks of kChunk = 4096 elements, chunks into norm tiles of G chunks and
//    tiles into units of K tiles.  G and K are functions of d and of the sketch size only (never
//    of the grid or the device): at most kMaxTiles tiles, and unit partials that fit kUnitBudget.
//  * Within a tile, thread t (of a fixed 256) always handles elements tile_begin + t + 256 j: it
//    accumulates ||u||^2 and <xi, u> in float64 in j order; a fixed shuffle/shared-memory tree
//    gives the tile's partial.  The finalize kernel sums the tile partials in a fixed tree.
//  * Sketch, within a chunk: EXACT integer arithmetic.  The chunk's L1 norm (float64, fixed tree)
//    gives a power-of-two scale 2^s with L1 * 2^s < 2^30; each term becomes q = rint(u * 2^s),
//    so |q| <= 2^30 and the sum of |q| over the chunk is < 2^30 + 2048 < 2^31: no int32 bucket sum
//    can overflow, and int32 shared-memory atomicAdd (native ATOMS.ADD) is exact, hence
//    order-independent.  The chunk table is then scaled back (exact: int -> double, times 2^-s)
//    and added to the unit's float64 table in chunk order by the thread that owns the entry; a
//    unit's table goes to global memory as float32 (one slot per unit, written by whichever block
//    ran it); the finalize kernel sums the unit partials of each entry in a fixed tree (float64)
//    and rounds once to float32.
//  Alternatives rejected: float atomics (order-dependent); one global fixed-point scale (needs
//  max|u| first, i.e. a second pass over w and w0: >= 2.5x the floor with xi); int64 atomics to
//  global memory (same scale problem, plus contention).
//  Error against the exact sketch: per term at most half a quantization step, 2^-(s+1) <=
//  L1_chunk * 2^-30; per bucket and chunk at most (terms of the chunk in the bucket) times that;
//  plus float32 rounding of each unit partial and of the result.  In practice ~1e-6 of the
//  bucket's magnitude (a few float32 ulps more than a float32 accumulation); exact on data whose
//  chunk sums are exact (e.g. small integers); the bound is tested in tests/kernels/cuda_checks.py.
//  Non-finite u (inf, NaN) are not scattered: each sets a 2-bit code in its bucket's entry (per
//  unit, integer atomicOr, so order-independent), and a coded entry's unit partial is that
//  infinity or NaN, what adding the term in float64 would give.
//
// FAST (target: <= 2x the time to read w and w0 once, l = 5, m = 250):
//  * hashes by tables (csrc/hash.h's family, same bits as the CPU), filled by make_tables_kernel
//    before each row group: per element two vector loads (T0's entry, the same for the block, and
//    T2's) and an XOR with the thread's T1 entry (its low character is t) for all rows together;
//    per row a mask and one multiply-high give the signed bucket (sign * m + bucket), whose int32
//    table entry gets q: no select, no negation (rows unrolled: template NR).
//  * int32 shared-memory atomics, the rows interleaved (a row is the address offset), two chunk
//    tables used alternately so that one __syncthreads per chunk suffices (the chunk's L1
//    reduction) and the flush of the previous chunk overlaps; inf and NaN terms out of line.
//  * loads: coalesced 4-byte loads, a full chunk without bounds tests; chunk c + 1's loads are
//    issued before chunk c's reduction and scatter (48 values per thread in flight).
//  * grid from the occupancy API (FDA_CUDA_GRID=N forces N blocks: tests check the bits do not
//    change); more than 8 rows, or more than fit in shared memory, are done in row groups (one
//    launch per group, each re-reads w and w0), never with global atomics.
//  Machine instructions (sm_90, l = 5): bench/sass_count.py, figures in bench/results/sass.md.
//  Not yet timed on a GPU: bench/gpu_session.sh.  The design in full: DESIGN.md beside this file.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "drift_state.h"
#include "hash.h"

namespace fda {
namespace {

// Knobs (compile time; every setting is bit-reproducible, but results differ between settings;
// tests/kernels/test_drift_state_cuda_emulated.py also builds small tiles and units)
#ifndef FDA_CUDA_MAX_TILES_LOG2
#define FDA_CUDA_MAX_TILES_LOG2 11
#endif
#ifndef FDA_CUDA_PER_THREAD
#define FDA_CUDA_PER_THREAD 16
#endif
#ifndef FDA_CUDA_UNIT_BUDGET_LOG2
#define FDA_CUDA_UNIT_BUDGET_LOG2 21
#endif
#ifndef FDA_CUDA_MIN_BLOCKS
#define FDA_CUDA_MIN_BLOCKS 2
#endif

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPerThread = FDA_CUDA_PER_THREAD;
constexpr int64_t kChunk = int64_t(kThreads) * kPerThread;  // 4096
constexpr int64_t kMaxTiles = int64_t(1) << FDA_CUDA_MAX_TILES_LOG2;  // norm partials at most
constexpr int64_t kUnitBudget = int64_t(1) << FDA_CUDA_UNIT_BUDGET_LOG2;  // floats of unit partials
constexpr int kMaxRows = 8;                                 // rows per launch (registers)
constexpr int kFinCols = 32, kFinSlices = 32;               // finalize block: 32 x 32 threads
constexpr int kProfileRows = 5;                             // rows of the profiling variants

static_assert(kThreads == int(hash::kLowSize), "thread t's elements share the low character t");

// Words of a table entry for NR rows: narrow rows two to a word (16-bit fields), wide rows one to a
// word; padded to a power of two for vector loads.
__host__ __device__ constexpr int words_of(int nr, bool wide) { return wide ? nr : (nr + 1) / 2; }
__host__ __device__ constexpr int padded_words(int n) { return n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : 8; }

// What the kernels need, by value (kernel parameter space: no device allocation for it).
struct Params {
  const float* w;
  const float* w0;
  const float* xi;
  int64_t d;
  int64_t n_chunks, chunks_per_tile, tiles_per_unit, n_tiles, n_units;
  int row0;          // first sketch row of this launch
  uint32_t width;    // m
  int64_t S;         // depth * width: row length of the unit partials
  int norms;         // this launch writes the norm partials
  double* norm_parts;  // [n_tiles][2]
  float* sk_parts;     // [n_units][S]
  // this launch's rows' hash tables: entries of padded_words(words_of(NR, wide)) words, T0 (nh
  // entries), then T1 (256), then T2 (nh + 255); see make_tables_kernel
  const uint32_t* tables;
  int64_t nh;
};

// One table entry's words (vector loads; entries are aligned to their size).
template <int NWP>
__device__ __forceinline__ void load_words(const uint32_t* p, uint32_t* v) {
  if constexpr (NWP == 1) {
    v[0] = __ldg(p);
  } else if constexpr (NWP == 2) {
    const uint2 x = __ldg(reinterpret_cast<const uint2*>(p));
    v[0] = x.x;
    v[1] = x.y;
  } else {
#pragma unroll
    for (int k = 0; k < NWP; k += 4) {
      const uint4 x = __ldg(reinterpret_cast<const uint4*>(p + k));
      v[k] = x.x;
      v[k + 1] = x.y;
      v[k + 2] = x.z;
      v[k + 3] = x.w;
    }
  }
}

// Row r's (of the launch) signed bucket sign * m + bucket from its entry words: the field masked
// in place and one multiply-high by 2m shifted to the field's position (csrc/hash.h:
// e = (f * 2m) >> F).  r is a constant once the caller's row loop is unrolled.
template <bool kWide>
__device__ __forceinline__ uint32_t row_index(const uint32_t* v, int r, uint32_t m2, uint32_t m2_lo) {
  const uint32_t f = kWide ? v[r] : (r & 1) ? (v[r / 2] & 0xFFFF0000u) : (v[r / 2] & 0xFFFFu);
  return __umulhi(f, kWide || (r & 1) ? m2 : m2_lo);
}

// The same for a row index known only at run time (the rare non-finite path).
template <bool kWide>
__device__ __forceinline__ uint32_t row_index_rt(const uint32_t* v, int r, uint32_t m) {
  const uint32_t word = kWide ? v[r] : v[r / 2];
  return hash::signed_bucket(kWide ? word : (r & 1) ? word >> 16 : word & 0xFFFFu, m);
}

// Tables of rows row0 .. row0 + nr - 1 (csrc/hash.h's entries), one thread per entry.
__global__ void __launch_bounds__(256) make_tables_kernel(uint64_t seed, int row0, int nr, int wide, int nwp,
                                                          int64_t nh, uint32_t* __restrict__ out) {
  const int64_t n = 2 * nh + 2 * int64_t(hash::kLowSize) - 1;
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= n) return;
  const int t = k < nh ? 0 : k < nh + hash::kLowSize ? 1 : 2;
  const int64_t kk = t == 0 ? k : t == 1 ? k - nh : k - nh - hash::kLowSize;
  for (int j = 0; j < nwp; ++j) {
    uint32_t word = 0;
    if (wide) {
      if (j < nr) word = hash::table_entry(seed, uint64_t(row0 + j), uint64_t(t), uint64_t(kk));
    } else {
      if (2 * j < nr) word = hash::table_entry(seed, uint64_t(row0 + 2 * j), uint64_t(t), uint64_t(kk)) & 0xFFFFu;
      if (2 * j + 1 < nr)
        word |= hash::table_entry(seed, uint64_t(row0 + 2 * j + 1), uint64_t(t), uint64_t(kk)) << 16;
    }
    out[k * nwp + j] = word;
  }
}

// Fixed-order reduction of a double over the block: shuffle tree in each warp, then warps in
// index order.  Every thread returns the total.  `red` holds kWarps doubles; callers alternate
// buffers so that one __syncthreads suffices.
__device__ __forceinline__ double block_sum_all(double v, double* red) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  double s = 0.0;
#pragma unroll
  for (int k = 0; k < kWarps; ++k) s += red[k];
  return s;
}

// Non-finite terms: a 2-bit code per table entry and unit, OR-ed in (order-independent):
// +inf = 1, -inf = 2, NaN = 3, so that +inf | -inf = NaN, as their sum is.  Entry e's code lives in
// the word its flushing thread (e mod 256) owns: word (e mod 256) + 256 (e / 4096), bits
// 2 ((e / 256) mod 16).  At the end of a unit a nonzero code replaces the entry's value: the sum
// of the finite terms and of the flagged ones would be that infinity or NaN.
constexpr uint32_t kPosInf = 1, kNegInf = 2, kNaN = 3;
constexpr float kFloatMax = 3.402823466e38f;

__host__ __device__ __forceinline__ int64_t flag_words(int64_t entries) {
  return int64_t(kThreads) * ((entries + 4095) / 4096);
}
__device__ __forceinline__ uint32_t* flag_word(uint32_t* flags, int64_t e) {
  return flags + (e & (kThreads - 1)) + kThreads * (e >> 12);
}
__device__ __forceinline__ uint32_t flag_shift(int64_t e) { return 2u * static_cast<uint32_t>((e >> 8) & 15); }

// The value of a unit's entry: its float64 sum, or the infinity or NaN its code stands for.
__device__ __forceinline__ float unit_value(double v, uint32_t code) {
  if (code == 0) return static_cast<float>(v);
  return code == kPosInf ? INFINITY : code == kNegInf ? -INFINITY : NAN;
}

// The emulation (tests/kernels/cuda_emu) records plain accesses to the flag words, to find races
// with the atomics; on a GPU this is nothing.
#ifndef FDA_SHARED_PLAIN_ACCESS
#define FDA_SHARED_PLAIN_ACCESS(ptr) ((void)0)
#endif

// Chunk c's elements of thread t (c * 4096 + t + 256 j): w, w0 and (dot) xi.  A full chunk (all
// but maybe the last) loads without bounds tests.
__device__ __forceinline__ void load_full_chunk(const Params& p, int64_t c, bool dot, float* a, float* b, float* x) {
  const int64_t base = c * kChunk + threadIdx.x;
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    a[j] = __ldg(p.w + base + j * kThreads);
    b[j] = __ldg(p.w0 + base + j * kThreads);
    x[j] = dot ? __ldg(p.xi + base + j * kThreads) : 0.0f;
  }
}

__device__ __forceinline__ void load_partial_chunk(const Params& p, int64_t c, bool dot, float* a, float* b,
                                                   float* x) {
  const int64_t base = c * kChunk + threadIdx.x;
  const int left = static_cast<int>(p.d - base);  // this thread's elements left, maybe none
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const bool in = j * kThreads < left;
    a[j] = in ? __ldg(p.w + base + j * kThreads) : 0.0f;
    b[j] = in ? __ldg(p.w0 + base + j * kThreads) : 0.0f;
    x[j] = (in && dot) ? __ldg(p.xi + base + j * kThreads) : 0.0f;
  }
}

__device__ __forceinline__ void load_chunk(const Params& p, int64_t c, bool dot, float* a, float* b, float* x) {
  if ((c + 1) * kChunk <= p.d)
    load_full_chunk(p, c, dot, a, b, x);
  else
    load_partial_chunk(p, c, dot, a, b, x);
}

// Chunk table -> unit table: entry e = r m + b (row r, column b) gets its positive half's sum less
// its negative half's (exact in int64), scaled back exactly; the chunk table is cleared.  The
// chunk table interleaves the rows: signed bucket j of row r is at j * rows + r.  Thread t owns
// the entries e = t, t + 256, ... (as in flush_unit), starting at row r0 = t / m, column
// b0 = t mod m (computed once per block).
__device__ __forceinline__ void add_chunk(double* acc, int* tab, int rows, int64_t rows_len, uint32_t m,
                                          double scale, uint32_t r0, uint32_t b0) {
  uint32_t r = r0, b = b0;
  for (int64_t e = threadIdx.x; e < rows_len; e += kThreads) {
    int* pos = tab + int64_t(b) * rows + r;
    int* neg = pos + int64_t(m) * rows;
    const int64_t v = int64_t(*pos) - int64_t(*neg);
    *pos = 0;
    *neg = 0;
    acc[e] += static_cast<double>(v) * scale;
    for (b += kThreads; b >= m; b -= m) ++r;
  }
}

// Unit table -> global memory (one slot per unit), non-finite codes applied and cleared; each
// thread touches only the entries and flag words it owns.
__device__ __forceinline__ void flush_unit(double* acc, uint32_t* flags, int64_t rows_len, float* dst, bool clear) {
  for (int64_t e = threadIdx.x; e < rows_len; e += kThreads) {
    uint32_t* fw = flag_word(flags, e);
    FDA_SHARED_PLAIN_ACCESS(fw);
    const uint32_t code = (*fw >> flag_shift(e)) & 3u;
    dst[e] = unit_value(acc[e], code);
    if (clear) acc[e] = 0.0;
  }
  if (clear)
    for (int64_t k = threadIdx.x; k < flag_words(rows_len); k += kThreads) {
      FDA_SHARED_PLAIN_ACCESS(flags + k);
      flags[k] = 0;
    }
}

// The rare path of a chunk with inf or NaN terms (out of line: the chunk loop stays small): each
// such term of thread t sets a code per row in its bucket's entry and becomes 0 in u; returns the
// L1 norm of the finite terms (in j order).  t0c, t2c: the chunk's T0 and thread t's T2 entries.
template <int NR, bool kWide>
__device__ __noinline__ double flag_non_finite(float* u, const uint32_t* t0c, const uint32_t* t2c,
                                               const uint32_t* t1, uint32_t m, uint32_t* flags) {
  constexpr int NWP = padded_words(words_of(NR > 0 ? NR : 1, kWide));
  double l1 = 0.0;
  for (int j = 0; j < kPerThread; ++j) {
    if (!(fabsf(u[j]) <= kFloatMax)) {
      uint32_t x0[NWP], x2[NWP], v[NWP];
      load_words<NWP>(t0c + j * NWP, x0);
      load_words<NWP>(t2c + j * NWP, x2);
#pragma unroll
      for (int k = 0; k < NWP; ++k) v[k] = x0[k] ^ t1[k] ^ x2[k];
      for (int r = 0; r < NR; ++r) {
        const uint32_t sb = row_index_rt<kWide>(v, r, m);
        const bool negative = sb >= m;
        const uint32_t code = u[j] != u[j] ? kNaN : (u[j] > 0.0f) != negative ? kPosInf : kNegInf;
        const int64_t e = int64_t(r) * m + (negative ? sb - m : sb);
        atomicOr(flag_word(flags, e), code << flag_shift(e));
      }
      u[j] = 0.0f;
    }
    l1 += fabs(static_cast<double>(u[j]));
  }
  return l1;
}

// mode: 0 = the op, 1 = hashing without the scatter, 2 = scatter without hashing (benchmark build).
// kWide: sketch widths above hash::kNarrowMaxWidth (32-bit fields, a word per row).
template <int NR, int kMode, bool kWide>
__global__ void __launch_bounds__(kThreads, FDA_CUDA_MIN_BLOCKS) drift_state_kernel(const Params p) {
  constexpr int NWP = padded_words(words_of(NR > 0 ? NR : 1, kWide));
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t m = p.width;
  const uint32_t m2 = 2 * m, m2_lo = kWide ? 0 : m2 << 16;
  const int64_t rows_len = int64_t(NR) * m;
  double* acc = reinterpret_cast<double*>(smem_raw);                  // [NR * m] unit table (float64)
  int* tab0 = reinterpret_cast<int*>(acc + (NR > 0 ? rows_len : 0));  // [2m][NR] chunk table A
  int* tab1 = tab0 + (NR > 0 ? 2 * rows_len : 0);                     // [2m][NR] chunk table B
  uint32_t* flags = reinterpret_cast<uint32_t*>(tab1 + (NR > 0 ? 2 * rows_len : 0));  // non-finite codes
  __shared__ double red_l1[2][kWarps], red_fin[kWarps];
  __shared__ int red_bad[2][kWarps];
  __shared__ double red_sq[kWarps], red_dt[kWarps];

  // this block's units: a balanced contiguous range
  const int64_t u_begin = p.n_units * blockIdx.x / gridDim.x;
  const int64_t u_end = p.n_units * (blockIdx.x + 1) / gridDim.x;
  if (u_begin >= u_end) return;
  const int64_t chunks_per_unit = p.chunks_per_tile * p.tiles_per_unit;
  const int64_t c_begin = u_begin * chunks_per_unit;
  const int64_t c_end = min(p.n_chunks, u_end * chunks_per_unit);
  // the unit and the tile under way, and the chunks where they end (no divisions in the loop)
  int64_t unit = u_begin, unit_end = c_begin + chunks_per_unit;
  int64_t tile = u_begin * p.tiles_per_unit, tile_end = c_begin + p.chunks_per_tile;

  // element c * kChunk + t + 256 j has the characters a = c * kPerThread + j and b = t: thread t's
  // T1 entry is one for all its elements; T0 (the same for the whole block) and T2 per element
  const uint32_t r0 = NR > 0 ? threadIdx.x / m : 0, b0 = NR > 0 ? threadIdx.x % m : 0;  // t's first entry
  uint32_t t1[NWP];
  const uint32_t* T0 = p.tables;
  const uint32_t* T2 = p.tables + (p.nh + hash::kLowSize + threadIdx.x) * NWP;
  if constexpr (NR > 0) {
    load_words<NWP>(p.tables + (p.nh + threadIdx.x) * NWP, t1);
    for (int64_t e = threadIdx.x; e < rows_len; e += kThreads) acc[e] = 0.0;
    for (int64_t e = threadIdx.x; e < 2 * rows_len; e += kThreads) {
      tab0[e] = 0;
      tab1[e] = 0;
    }
    for (int64_t k = threadIdx.x; k < flag_words(rows_len); k += kThreads) flags[k] = 0;
  }
  __syncthreads();

  const bool dot = p.norms && p.xi != nullptr;  // uniform: xi's loads and products
  double sq = 0.0, dt = 0.0;
  double prev_scale = 0.0;  // 2^-s of the previous chunk (its table is flushed in this one)
  uint32_t sink = 0;        // mode 1: keeps the hashes alive
  // chunk c + 1's loads are issued before chunk c's reduction and scatter
  float nw[kPerThread], nw0[kPerThread], nxi[kPerThread];
  load_chunk(p, c_begin, dot, nw, nw0, nxi);
  for (int64_t c = c_begin; c < c_end; ++c) {
    const int buf = static_cast<int>(c & 1);
    int* tab = buf ? tab1 : tab0;
    int* prev_tab = buf ? tab0 : tab1;

    float u[kPerThread];
    double l1 = 0.0;  // the chunk's L1 norm (fixed order); inf or NaN after a non-finite term
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      u[j] = nw[j] - nw0[j];
      const double ud = static_cast<double>(u[j]);
      // one rounding each (fused, whatever --fmad says); without xi nxi is 0, and without the
      // norms (a later row group) nothing reads sq and dt: no branches in the element loop
      sq = __fma_rn(ud, ud, sq);
      dt = __fma_rn(static_cast<double>(nxi[j]), ud, dt);
      if constexpr (NR > 0) l1 += fabs(ud);
    }
    const bool bad = !(l1 <= 1.0e300);  // a non-finite term (16 finite ones sum to < 2^133)
    if (c + 1 < c_end) load_chunk(p, c + 1, dot, nw, nw0, nxi);

    if constexpr (NR > 0) {
      const int bad_warp = __any_sync(0xffffffffu, bad);
      if ((threadIdx.x & 31) == 0) red_bad[buf][threadIdx.x >> 5] = bad_warp;
      l1 = block_sum_all(l1, red_l1[buf]);  // the one barrier of the chunk
      int any_bad = 0;
#pragma unroll
      for (int k = 0; k < kWarps; ++k) any_bad |= red_bad[buf][k];
      // flush the previous chunk's table into the unit table (owner threads, fixed order), and
      // the unit table to global memory when that chunk ended a unit
      if (c > c_begin) {
        add_chunk(acc, prev_tab, NR, rows_len, m, prev_scale, r0, b0);
        if (c == unit_end) {  // the previous chunk ended unit `unit`
          flush_unit(acc, flags, rows_len, p.sk_parts + unit * p.S + int64_t(p.row0) * m, true);
          ++unit;
          unit_end += chunks_per_unit;
        }
      }

      if (kMode == 0 && any_bad) {  // rare (uniform): a code per inf/NaN term and row
        // The flush above reads and clears the flag words of the unit that just ended, each
        // thread its own; this barrier keeps the codes of this chunk (the next unit) from landing
        // in a word not yet read and cleared (a lost or misplaced code).
        __syncthreads();
        float uf[kPerThread];  // local memory, touched only here
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) uf[j] = u[j];
        const double l1f = flag_non_finite<NR, kWide>(uf, T0 + c * kPerThread * NWP, T2 + c * kPerThread * NWP,
                                                      t1, m, flags);
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) u[j] = uf[j];
        l1 = block_sum_all(l1f, red_fin);
      }

      // scale: L1 < 2^e, s = 30 - e, so L1 * 2^s < 2^30 (s in [-111, 179] for finite float32 u)
      int ex = 0;
      if (l1 > 0.0) frexp(l1, &ex);
      const int s = 30 - ex;
      prev_scale = ldexp(1.0, -s);
      const int s1 = s < 127 ? s : 127;
      const float f1 = ldexpf(1.0f, s1), f2 = ldexpf(1.0f, s - s1);

      const uint32_t* t0c = T0 + c * kPerThread * NWP;
      const uint32_t* t2c = T2 + c * kPerThread * NWP;
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const int q = __float2int_rn((u[j] * f1) * f2);  // |q| <= 2^30
        uint32_t v[NWP];
        if constexpr (kMode != 2) {
          uint32_t x0[NWP], x2[NWP];
          load_words<NWP>(t0c + j * NWP, x0);
          load_words<NWP>(t2c + j * NWP, x2);
#pragma unroll
          for (int k = 0; k < NWP; ++k) v[k] = x0[k] ^ t1[k] ^ x2[k];
        }
#pragma unroll
        for (int r = 0; r < NR; ++r) {
          if constexpr (kMode == 2) {  // bench: a cheap pseudo-random bucket instead of the hash
            const uint32_t x = static_cast<uint32_t>(c * kChunk + threadIdx.x + j * kThreads) * 0x9E3779B9u + r;
            atomicAdd(tab + __umulhi(x, m2) * NR + r, q);
          } else {
            const uint32_t e = row_index<kWide>(v, r, m2, m2_lo);
            if constexpr (kMode == 1)
              sink += e;
            else
              atomicAdd(tab + e * NR + r, q);  // rows interleaved: r is the address's immediate
          }
        }
      }

    }

    // end of a norm tile: its partial, in a fixed order
    if (p.norms && (c + 1 == tile_end || c + 1 == p.n_chunks)) {
      for (int off = 16; off > 0; off >>= 1) {
        sq += __shfl_down_sync(0xffffffffu, sq, off);
        dt += __shfl_down_sync(0xffffffffu, dt, off);
      }
      if ((threadIdx.x & 31) == 0) {
        red_sq[threadIdx.x >> 5] = sq;
        red_dt[threadIdx.x >> 5] = dt;
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        double s1 = 0.0, s2 = 0.0;
#pragma unroll
        for (int k = 0; k < kWarps; ++k) {
          s1 += red_sq[k];
          s2 += red_dt[k];
        }
        p.norm_parts[2 * tile] = s1;
        p.norm_parts[2 * tile + 1] = dot ? s2 : 0.0;  // 0 * inf would be NaN without xi
      }
      __syncthreads();  // red_sq is reused by the next tile
      sq = 0.0;
      dt = 0.0;
      ++tile;
      tile_end += p.chunks_per_tile;
    }
  }

  if constexpr (NR > 0) {  // the last chunk's table, and the block's last unit
    __syncthreads();
    add_chunk(acc, (c_end - 1) & 1 ? tab1 : tab0, NR, rows_len, m, prev_scale, r0, b0);
    float* dst = p.sk_parts + (u_end - 1) * p.S + int64_t(p.row0) * m;
    if constexpr (kMode == 1) {
      for (int64_t e = threadIdx.x; e < rows_len; e += kThreads) dst[e] = static_cast<float>(sink & 1u);
    } else {
      flush_unit(acc, flags, rows_len, dst, false);
    }
  }
}

// out[0..1] = sums of the tile norm partials; out[2 + e] = float32(sum of the unit partials of
// entry e) widened.  Both sums in a fixed tree: slices of a block take indices k, k + 32, ... in
// order, then a pairwise tree over the 32 slices.  Block 0 does the norms, the others 32 entries.
__global__ void __launch_bounds__(kFinCols* kFinSlices)
finalize_kernel(const double* __restrict__ norm_parts, int64_t n_tiles, const float* __restrict__ sk_parts,
                int64_t n_units, int64_t S, double* __restrict__ out) {
  __shared__ double red[kFinSlices][kFinCols + 1];
  const int col = threadIdx.x % kFinCols, slice = threadIdx.x / kFinCols;
  double v = 0.0;
  int64_t e = -1;
  if (blockIdx.x == 0) {
    if (col < 2)
      for (int64_t k = slice; k < n_tiles; k += kFinSlices) v += norm_parts[2 * k + col];
  } else {
    e = int64_t(blockIdx.x - 1) * kFinCols + col;
    if (e < S) {
      int64_t k = slice;
      for (; k + 3 * kFinSlices < n_units; k += 4 * kFinSlices) {  // 4 loads in flight
        const float a0 = sk_parts[k * S + e], a1 = sk_parts[(k + kFinSlices) * S + e];
        const float a2 = sk_parts[(k + 2 * kFinSlices) * S + e], a3 = sk_parts[(k + 3 * kFinSlices) * S + e];
        v += static_cast<double>(a0);
        v += static_cast<double>(a1);
        v += static_cast<double>(a2);
        v += static_cast<double>(a3);
      }
      for (; k < n_units; k += kFinSlices) v += static_cast<double>(sk_parts[k * S + e]);
    }
  }
  red[slice][col] = v;
  __syncthreads();
  for (int half = kFinSlices / 2; half > 0; half >>= 1) {
    if (slice < half) red[slice][col] += red[slice + half][col];
    __syncthreads();
  }
  if (slice != 0) return;
  if (blockIdx.x == 0) {
    if (col < 2) out[col] = red[0][col];
  } else if (e < S) {
    out[2 + e] = static_cast<double>(static_cast<float>(red[0][col]));
  }
}

// ---------------------------------------------------------------------------------------- host
struct Plan {
  int64_t n_chunks = 0, chunks_per_tile = 1, n_tiles = 0, tiles_per_unit = 1, n_units = 0, S = 0;
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

Plan make_plan(int64_t d, int depth, uint32_t width) {
  Plan pl;
  pl.S = int64_t(depth) * width;
  pl.n_chunks = ceil_div(d, kChunk);
  if (pl.n_chunks == 0) return pl;
  pl.chunks_per_tile = ceil_div(pl.n_chunks, kMaxTiles);
  pl.n_tiles = ceil_div(pl.n_chunks, pl.chunks_per_tile);
  pl.tiles_per_unit = pl.S > 0 ? std::max<int64_t>(1, ceil_div(pl.n_tiles * pl.S, kUnitBudget)) : 1;
  pl.tiles_per_unit = std::min(pl.tiles_per_unit, pl.n_tiles);
  pl.n_units = ceil_div(pl.n_tiles, pl.tiles_per_unit);
  return pl;
}

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

// T0's entries on the GPU: every chunk's, the last one's whole too (its elements past d read
// entries of their own, whose values do not matter: their terms are 0), so T0 and T2 are read
// within bounds.
int64_t gpu_high_entries(int64_t d) { return ceil_div(d, kChunk) * kPerThread; }

// Hash tables of a launch of at most `rows` rows: T0, T1 and T2 for d elements.
size_t hash_table_bytes(int64_t d, int rows, uint32_t width) {
  if (rows == 0) return 0;
  const int64_t entries = 2 * gpu_high_entries(d) + 2 * int64_t(hash::kLowSize) - 1;
  return sizeof(uint32_t) * size_t(entries) * padded_words(words_of(rows, !hash::narrow(width)));
}

size_t scratch_bytes(const Plan& pl, int64_t d, int depth, uint32_t width) {
  return align256(sizeof(double) * 2 * pl.n_tiles) + align256(sizeof(float) * pl.n_units * pl.S) +
         hash_table_bytes(d, std::min(depth, kMaxRows), width);
}

// Dynamic shared memory of a launch of `rows` rows: the unit table (8 bytes an entry), two chunk
// tables of a positive and a negative half (2 x 2 x 4) and the non-finite codes (1 KB per 4096
// entries).
size_t table_bytes(int rows, uint32_t width) {
  const int64_t entries = int64_t(rows) * width;
  return rows > 0 ? size_t(entries) * 24 + sizeof(uint32_t) * size_t(flag_words(entries)) : 0;
}

// Blocks of `kern` per SM for `smem` bytes of dynamic shared memory.  The opt-in attribute is set
// once per (device, kernel), to everything the device allows a block beyond the kernel's static
// shared memory, so that any later request fits (setting it to each request would leave it too
// small for a larger one that was cached earlier); the occupancy answer is cached per request.
int blocks_per_sm(const void* kern, size_t smem, cudaError_t* err) {
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, bool> opted_in;
  static std::map<std::tuple<int, const void*, size_t>, int> occupancy;
  int dev = 0;
  *err = cudaGetDevice(&dev);
  if (*err != cudaSuccess) return 0;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(dev, kern, smem);
  auto it = occupancy.find(key);
  if (it != occupancy.end()) return it->second;
  if (!opted_in[{dev, kern}]) {
    int optin = 0;
    cudaFuncAttributes attr = {};
    if ((*err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess) return 0;
    if ((*err = cudaFuncGetAttributes(&attr, kern)) != cudaSuccess) return 0;
    const int most = optin - static_cast<int>(attr.sharedSizeBytes);
    *err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, most);
    if (*err != cudaSuccess) return 0;
    opted_in[{dev, kern}] = true;
  }
  int n = 0;
  *err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kern, kThreads, smem);
  if (*err != cudaSuccess) return 0;
  occupancy[key] = n;
  return n;
}

// FDA_CUDA_GRID=N (N >= 1) forces the number of blocks (tests: the bits must not change).
int64_t forced_grid() {
  const char* s = getenv("FDA_CUDA_GRID");
  if (s == nullptr || *s == '\0') return 0;
  const long long v = atoll(s);
  return v > 0 ? v : 0;
}

template <int NR, int kMode, bool kWide>
cudaError_t launch_pass(const Params& p, cudaStream_t stream) {
  const void* kern = reinterpret_cast<const void*>(&drift_state_kernel<NR, kMode, kWide>);
  const size_t smem = table_bytes(NR, p.width);
  cudaError_t err = cudaSuccess;
  int per_sm = blocks_per_sm(kern, smem, &err);
  if (err != cudaSuccess) return err;
  if (per_sm < 1) return cudaErrorInvalidConfiguration;
  int dev = 0, sms = 1;
  if ((err = cudaGetDevice(&dev)) != cudaSuccess) return err;
  if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess) return err;
  int64_t grid = forced_grid();
  if (grid == 0) grid = int64_t(sms) * per_sm;
  grid = std::max<int64_t>(1, std::min(grid, p.n_units));
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(grid));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  // the launch's own status (not an earlier asynchronous error, as cudaGetLastError could be)
  return cudaLaunchKernelEx(&cfg, drift_state_kernel<NR, kMode, kWide>, p);
}

template <bool kWide>
cudaError_t launch_rows(int nr, int mode, const Params& p, cudaStream_t stream) {
  if (mode != 0) {  // profiling variants (benchmark build only): l = 5 only (compile time)
#ifdef FDA_PROFILING
    if (nr != kProfileRows) return cudaErrorInvalidValue;
    return mode == 1 ? launch_pass<kProfileRows, 1, kWide>(p, stream) : launch_pass<kProfileRows, 2, kWide>(p, stream);
#else
    return cudaErrorInvalidValue;
#endif
  }
  switch (nr) {
    case 0: return launch_pass<0, 0, kWide>(p, stream);  // norms only
    case 1: return launch_pass<1, 0, kWide>(p, stream);
    case 2: return launch_pass<2, 0, kWide>(p, stream);
    case 3: return launch_pass<3, 0, kWide>(p, stream);
    case 4: return launch_pass<4, 0, kWide>(p, stream);
    case 5: return launch_pass<5, 0, kWide>(p, stream);
    case 6: return launch_pass<6, 0, kWide>(p, stream);
    case 7: return launch_pass<7, 0, kWide>(p, stream);
    case 8: return launch_pass<8, 0, kWide>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_any(int nr, int mode, const Params& p, cudaStream_t stream) {
  return hash::narrow(p.width) || nr == 0 ? launch_rows<false>(nr, mode, p, stream)
                                          : launch_rows<true>(nr, mode, p, stream);
}

// The hash tables of rows row0 .. row0 + nr - 1 into p.tables (make_tables_kernel).
cudaError_t launch_tables(const Params& p, uint64_t seed, int nr, cudaStream_t stream) {
  const bool wide = !hash::narrow(p.width);
  const int64_t n = 2 * p.nh + 2 * int64_t(hash::kLowSize) - 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(ceil_div(n, 256)));
  cfg.blockDim = dim3(256);
  cfg.stream = stream;
  return cudaLaunchKernelEx(&cfg, make_tables_kernel, seed, p.row0, nr, static_cast<int>(wide),
                            padded_words(words_of(nr, wide)), p.nh, const_cast<uint32_t*>(p.tables));
}

// Shared memory a block may have beyond the dynamic tables: the kernels' static arrays (320
// bytes) with room to spare.
constexpr int64_t kStaticReserve = 2048;

int rows_per_launch(uint32_t width, int smem_optin) {
  int rows = 0;
  while (rows < kMaxRows && int64_t(table_bytes(rows + 1, width)) <= smem_optin - kStaticReserve) ++rows;
  return rows;
}

}  // namespace

size_t drift_state_cuda_scratch_bytes(int64_t d, int depth, uint32_t width) {
  return scratch_bytes(make_plan(d, depth, width), d, depth, width);
}

int64_t drift_state_cuda_max_width(int device) {
  int smem_optin = 48 * 1024;
  if (cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    return 0;
  const int64_t room = int64_t(smem_optin) - kStaticReserve;
  int64_t w = std::max<int64_t>(0, room / 24);  // an upper bound (codes aside), then down to a fit
  while (w > 0 && int64_t(table_bytes(1, static_cast<uint32_t>(w))) > room) --w;
  return w;
}

cudaError_t launch_drift_state_cuda(const float* w, const float* w0, const float* xi, int64_t d,
                                    int depth, uint32_t width, uint64_t seed, int mode,
                                    void* scratch, double* out, cudaStream_t stream) {
  const Plan pl = make_plan(d, depth, width);
  if (pl.n_chunks == 0) return cudaMemsetAsync(out, 0, sizeof(double) * (2 + pl.S), stream);
  int dev = 0, smem_optin = 48 * 1024;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err != cudaSuccess) return err;

  Params p = {};
  p.w = w;
  p.w0 = w0;
  p.xi = xi;
  p.d = d;
  p.n_chunks = pl.n_chunks;
  p.chunks_per_tile = pl.chunks_per_tile;
  p.tiles_per_unit = pl.tiles_per_unit;
  p.n_tiles = pl.n_tiles;
  p.n_units = pl.n_units;
  p.width = width;
  p.S = pl.S;
  char* base = static_cast<char*>(scratch);
  p.norm_parts = reinterpret_cast<double*>(base);
  base += align256(sizeof(double) * 2 * pl.n_tiles);
  p.sk_parts = reinterpret_cast<float*>(base);
  base += align256(sizeof(float) * pl.n_units * pl.S);
  p.tables = reinterpret_cast<const uint32_t*>(base);
  p.nh = gpu_high_entries(d);

  const int per_launch = depth > 0 ? rows_per_launch(width, smem_optin) : 0;
  if (depth > 0 && per_launch < 1) return cudaErrorInvalidValue;  // the op checks the width first
  int row0 = 0;
  do {  // one launch per row group; the first also writes the norm partials
    const int nr = std::min(per_launch, depth - row0);
    p.row0 = row0;
    p.norms = row0 == 0;
    if (nr > 0 && (err = launch_tables(p, seed, nr, stream)) != cudaSuccess) return err;
    err = launch_any(nr, mode, p, stream);
    if (err != cudaSuccess) return err;
    row0 += nr;
  } while (row0 < depth);

  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(1 + ceil_div(pl.S, kFinCols)));
  cfg.blockDim = dim3(kFinCols * kFinSlices);
  cfg.stream = stream;
  return cudaLaunchKernelEx(&cfg, finalize_kernel, const_cast<const double*>(p.norm_parts), pl.n_tiles,
                            const_cast<const float*>(p.sk_parts), pl.n_units, pl.S, out);
}

}  // namespace fda
