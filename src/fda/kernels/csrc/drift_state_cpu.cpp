// drift_state_cpu.cpp -- the fused FDA drift-state ops (CPU) and the op schemas.
//
//   fda::drift_state(Tensor w, Tensor w0, Tensor? xi, int depth, int width, int seed)
//       -> (Tensor stats, Tensor sketch)
//   fda::drift_state_out(Tensor w, Tensor w0, Tensor? xi, int depth, int width, int seed,
//                        Tensor(a!) out) -> ()
//
// stats:  float64 [2] = (||u||^2, <xi, u>) with u = w - w0 (float32 subtraction); dot is 0
//         without xi.  On w's device.
// sketch: float32 [depth, width] AMS sketch of u (shape [0, 0] when depth == width == 0).
// out:    float64 [2 + depth * width], contiguous, on w's device: out[0:2] = stats and out[2:] =
//         the sketch row-major, each value the float32 sketch value widened exactly (same bits as
//         drift_state's).  Nothing is allocated on the device and nothing waits for it (CUDA:
//         launched on the current stream), so a caller can pack the whole state into one buffer
//         and move it with one transfer.
//
// One pass reads w and w0 once (plus xi when given).  Work is split into fixed-size blocks that
// do NOT depend on the thread count; every block produces its own partials (float64 norm/dot,
// float32 sketch) and partials are combined in block-index order, so results are bit-for-bit
// identical for any number of threads.  Within a block each row's hash values are three table
// lookups and two XORs per element (csrc/hash.h), in groups of 16 consecutive indices that share
// their high character, so the loads are contiguous and the loop vectorises; the sketch update is
// a scalar scatter into an L1-resident per-block table, in element order for every row.
//
// The inner kernel is compiled for several ISAs (target_clones: baseline, x86-64-v3, x86-64-v4)
// and picked at load time; floating-point contraction is disabled (-ffp-contract=off), so every
// clone gives the same bits.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "drift_state.h"
#include "hash.h"

namespace fda {

void check_drift_state_inputs(const at::Tensor& w, const at::Tensor& w0,
                              const c10::optional<at::Tensor>& xi, int64_t depth, int64_t width) {
  TORCH_CHECK(w.dtype() == at::kFloat && w0.dtype() == at::kFloat, "drift_state: w and w0 must be float32");
  TORCH_CHECK(w.dim() == 1 && w0.dim() == 1, "drift_state: w and w0 must be 1-D");
  TORCH_CHECK(w.is_contiguous() && w0.is_contiguous(), "drift_state: w and w0 must be contiguous");
  TORCH_CHECK(w.numel() == w0.numel(), "drift_state: w and w0 differ in length");
  TORCH_CHECK(w.device() == w0.device(), "drift_state: w and w0 are on different devices");
  if (xi.has_value()) {
    const at::Tensor& x = *xi;
    TORCH_CHECK(x.dtype() == at::kFloat && x.dim() == 1 && x.is_contiguous(),
                "drift_state: xi must be a contiguous 1-D float32 tensor");
    TORCH_CHECK(x.numel() == w.numel(), "drift_state: xi and w differ in length");
    TORCH_CHECK(x.device() == w.device(), "drift_state: xi and w are on different devices");
  }
  TORCH_CHECK(depth >= 0 && width >= 0 && (depth == 0) == (width == 0),
              "drift_state: depth and width must both be > 0 or both be 0");
  TORCH_CHECK(depth * width < (int64_t(1) << 31), "drift_state: sketch too large");
  TORCH_CHECK(w.numel() <= hash::kMaxIndex, "drift_state: vectors must have at most 2^31 elements");
}

void check_drift_state_out(const at::Tensor& w, const at::Tensor& out, int64_t depth, int64_t width) {
  TORCH_CHECK(out.dtype() == at::kDouble, "drift_state_out: out must be float64, got ", out.dtype());
  TORCH_CHECK(out.dim() == 1 && out.is_contiguous(), "drift_state_out: out must be a contiguous 1-D tensor");
  TORCH_CHECK(out.numel() == 2 + depth * width, "drift_state_out: out must have 2 + depth * width = ",
              2 + depth * width, " elements, got ", out.numel());
  TORCH_CHECK(out.device() == w.device(), "drift_state_out: out is on ", out.device(), " but w is on ",
              w.device());
}

namespace {

constexpr int64_t kNormBlock = 1 << 14;  // norm/dot partial granularity (fixed)
constexpr int kLanes = 16;               // hash lanes (elements i, i+16, i+32, ... per lane)
constexpr int kNormLanes = 16;           // float64 accumulators per norm partial
constexpr int64_t kSub = 512;            // sub-block staged in L1 (multiple of kLanes)

#define FDA_AI inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FDA_NO_CLONES)
#define FDA_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define FDA_CLONES
#endif

// Norm (and dot) partial of n elements, n <= kNormBlock.  Fixed lane structure (16 float64
// accumulators, element j goes to lane j % 16), written with GCC vector extensions, so the
// summation order is independent of the ISA clone and of the thread count.
typedef float v8f __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));

FDA_AI v8d load_v8d(const float* p) {
  v8f f;
  std::memcpy(&f, p, sizeof(f));
  return __builtin_convertvector(f, v8d);
}
FDA_AI v8d diff_v8d(const float* a, const float* b) {
  v8f x, y;
  std::memcpy(&x, a, sizeof(x));
  std::memcpy(&y, b, sizeof(y));
  return __builtin_convertvector(x - y, v8d);  // float32 subtraction, then widen
}

template <bool kDot>
FDA_AI void norm_partial(const float* __restrict w, const float* __restrict w0,
                         const float* __restrict xi, int64_t n, double* sq_out, double* dot_out) {
  static_assert(kNormLanes == 16, "two v8d accumulators");
  v8d s0 = {0}, s1 = {0}, t0 = {0}, t1 = {0};
  int64_t j = 0;
  for (; j + kNormLanes <= n; j += kNormLanes) {
    const v8d u0 = diff_v8d(w + j, w0 + j), u1 = diff_v8d(w + j + 8, w0 + j + 8);
    s0 += u0 * u0;
    s1 += u1 * u1;
    if (kDot) {
      t0 += load_v8d(xi + j) * u0;
      t1 += load_v8d(xi + j + 8) * u1;
    }
  }
  double sq[kNormLanes], dt[kNormLanes];
  std::memcpy(sq, &s0, sizeof(s0));
  std::memcpy(sq + 8, &s1, sizeof(s1));
  std::memcpy(dt, &t0, sizeof(t0));
  std::memcpy(dt + 8, &t1, sizeof(t1));
  for (int l = 0; j < n; ++j, ++l) {
    const double u = static_cast<double>(w[j] - w0[j]);
    sq[l] += u * u;
    if (kDot) dt[l] += static_cast<double>(xi[j]) * u;
  }
  double s = 0.0, t = 0.0;
  for (int l = 0; l < kNormLanes; ++l) {
    s += sq[l];
    t += dt[l];
  }
  *sq_out = s;
  *dot_out = t;
}

// The hash tables of one call (csrc/hash.h): row r's T0, T1 and T2 at t0[r * nh], t1[r * 256] and
// t2[r * ns], built from the seed and cached for the last (seed, depth, d / 256): a round's steps
// all hash with one seed.
struct Tables {
  uint64_t seed = 0;
  int64_t depth = 0, nh = 0, ns = 0;
  std::vector<uint32_t> t0, t1, t2;
};

void fill_table(uint64_t seed, int64_t depth, int t, int64_t n, uint32_t* dst) {
  const int64_t pairs = (depth + 1) / 2;
  at::parallel_for(0, n, 4096, [&](int64_t k0, int64_t k1) {
    for (int64_t p = 0; p < pairs; ++p)
      for (int64_t k = k0; k < k1; ++k) {
        const uint64_t z = hash::table_pair(seed, p, t, k);
        dst[2 * p * n + k] = static_cast<uint32_t>(z);
        if (2 * p + 1 < depth) dst[(2 * p + 1) * n + k] = static_cast<uint32_t>(z >> 32);
      }
  });
}

std::shared_ptr<const Tables> hash_tables(uint64_t seed, int64_t depth, int64_t d) {
  static std::mutex mu;
  static std::shared_ptr<const Tables> last;
  const int64_t nh = hash::high_entries(d);
  {
    std::lock_guard<std::mutex> lock(mu);
    if (last && last->seed == seed && last->depth == depth && last->nh == nh) return last;
  }
  auto tab = std::make_shared<Tables>();
  tab->seed = seed;
  tab->depth = depth;
  tab->nh = nh;
  tab->ns = hash::sum_entries(d);
  tab->t0.resize(depth * nh);
  tab->t1.resize(depth * hash::kLowSize);
  tab->t2.resize(depth * tab->ns);
  fill_table(seed, depth, 0, nh, tab->t0.data());
  fill_table(seed, depth, 1, hash::kLowSize, tab->t1.data());
  fill_table(seed, depth, 2, tab->ns, tab->t2.data());
  std::lock_guard<std::mutex> lock(mu);
  last = tab;
  return tab;
}

// One row's tables.
struct RowTables {
  const uint32_t* t0;
  const uint32_t* t1;
  const uint32_t* t2;
};

// Bucket (plus off) and the sign as an IEEE-754 sign-bit mask of row value v.
template <bool kNarrow>
FDA_AI void bucket_and_sign(uint32_t v, uint32_t m, uint32_t off, uint32_t* idx, uint32_t* sign) {
  if (kNarrow) {
    *idx = off + (((v & 0x7FFFu) * m) >> 15);
    *sign = (v & 0x8000u) << 16;
  } else {
    *idx = off + static_cast<uint32_t>((uint64_t(v & 0x7FFFFFFFu) * m) >> 31);
    *sign = v & 0x80000000u;
  }
}

constexpr int64_t kMini = 128;  // elements hashed before they are scattered (multiple of kLanes)

// One row over ns elements starting at index first (first % kLanes == 0, ns % kLanes == 0): bucket
// indices (plus off) and signed values to idx/val, kMini elements at a time, each batch then added
// into sk (when given) in element order.  Hashing and scattering in small batches lets the
// out-of-order core overlap the vector hash with the scalar scatter.
template <bool kNarrow>
FDA_AI void hash_scatter_row(const RowTables& T, int64_t first, const uint32_t* __restrict ubits, int64_t ns,
                             uint32_t off, uint32_t m, uint32_t* __restrict idx, uint32_t* __restrict val,
                             float* __restrict sk) {
  for (int64_t j0 = 0; j0 < ns; j0 += kMini) {
    const int64_t je = std::min(ns, j0 + kMini);
    for (int64_t j = j0; j < je; j += kLanes) {
      const int64_t i = first + j;  // a is the same for these kLanes indices (256 % kLanes == 0)
      const uint32_t a = static_cast<uint32_t>(i >> hash::kLowBits);
      const uint32_t b = static_cast<uint32_t>(i & (hash::kLowSize - 1));
      const uint32_t c = T.t0[a];
      const uint32_t* t1 = T.t1 + b;
      const uint32_t* t2 = T.t2 + a + b;
      for (int l = 0; l < kLanes; ++l) {
        uint32_t s;
        bucket_and_sign<kNarrow>(c ^ t1[l] ^ t2[l], m, off, &idx[j + l], &s);
        val[j + l] = ubits[j + l] ^ s;
      }
    }
    if (!sk) continue;
#pragma GCC unroll 8
    for (int64_t j = j0; j < je; ++j) {
      float v;
      std::memcpy(&v, &val[j], 4);
      sk[idx[j]] += v;
    }
  }
}

// Sketch + norms for one chunk [begin, begin + n) (begin % kSub == 0).  sk: zeroed float [depth * width].
// kMode: 0 = the op; 1 = hash only (no scatter; bench/kernel.py's breakdown); 2 = no hashing
// (scatter u_i into bucket i % width of every row; bench only).
template <bool kDot, bool kNarrow, int kMode = 0>
FDA_AI void chunk_sketch_impl(const float* __restrict w, const float* __restrict w0,
                              const float* __restrict xi, int64_t begin, int64_t n, const Tables& tab,
                              int depth, uint32_t width, float* __restrict sk, double* sq_parts,
                              double* dot_parts) {
  // norms: per kNormBlock partials (identical to the norm-only path)
  for (int64_t b = 0; b < n; b += kNormBlock) {
    const int64_t nb = std::min(kNormBlock, n - b);
    norm_partial<kDot>(w + begin + b, w0 + begin + b, kDot ? xi + begin + b : nullptr, nb,
                       sq_parts + b / kNormBlock, dot_parts + b / kNormBlock);
  }
  const int64_t nv = n - n % kLanes;  // whole lane groups; the (last chunk's) tail one by one
  alignas(64) uint32_t ubits[kSub];
  alignas(64) uint32_t idx[kSub];
  alignas(64) uint32_t val[kSub];
  for (int64_t s0 = 0; s0 < nv; s0 += kSub) {
    const int64_t ns = std::min(kSub, nv - s0);
    const float* ws = w + begin + s0;
    const float* w0s = w0 + begin + s0;
    for (int64_t j = 0; j < ns; ++j) {
      const float u = ws[j] - w0s[j];
      uint32_t b;
      std::memcpy(&b, &u, 4);
      ubits[j] = b;
    }
    for (int r = 0; r < depth; ++r) {
      const uint32_t off = static_cast<uint32_t>(r) * width;
      if (kMode == 2) {
        uint32_t b = static_cast<uint32_t>((begin + s0) % width);
        for (int64_t j = 0; j < ns; ++j) {
          float v;
          std::memcpy(&v, &ubits[j], 4);
          sk[off + b] += v;
          b = b + 1 == width ? 0 : b + 1;
        }
        continue;
      }
      const RowTables T = {tab.t0.data() + r * tab.nh, tab.t1.data() + r * int64_t(hash::kLowSize),
                           tab.t2.data() + r * tab.ns};
      hash_scatter_row<kNarrow>(T, begin + s0, ubits, ns, off, width, idx, val, kMode == 0 ? sk : nullptr);
      if (kMode == 1) {  // keep the hash work alive without scattering
        uint32_t x = 0;
        for (int64_t j = 0; j < ns; ++j) x ^= idx[j] + val[j];
        sk[x % width] += 1e-30f;
      }
    }
  }
  for (int64_t j = nv; j < n; ++j) {  // tail (< kLanes elements, last chunk only)
    const int64_t i = begin + j;
    const float u = w[i] - w0[i];
    const int64_t a = i >> hash::kLowBits, b = i & (hash::kLowSize - 1);
    for (int r = 0; r < depth; ++r) {
      const uint32_t v = tab.t0[r * tab.nh + a] ^ tab.t1[r * int64_t(hash::kLowSize) + b] ^ tab.t2[r * tab.ns + a + b];
      uint32_t e, s;
      bucket_and_sign<kNarrow>(v, width, static_cast<uint32_t>(r) * width, &e, &s);
      sk[e] += s ? -u : u;
    }
  }
}

template <bool kNarrow>
FDA_AI void chunk_sketch_mode(const float* w, const float* w0, const float* xi, int64_t begin, int64_t n,
                              const Tables& tab, int depth, uint32_t width, float* sk, double* sq_parts,
                              double* dot_parts, int mode) {
#ifdef FDA_PROFILING  // the benchmark build (CMake FDA_BENCHMARK=ON) only
  if (mode == 1)
    return chunk_sketch_impl<false, kNarrow, 1>(w, w0, xi, begin, n, tab, depth, width, sk, sq_parts, dot_parts);
  if (mode == 2)
    return chunk_sketch_impl<false, kNarrow, 2>(w, w0, xi, begin, n, tab, depth, width, sk, sq_parts, dot_parts);
#endif
  (void)mode;
  if (xi)
    chunk_sketch_impl<true, kNarrow>(w, w0, xi, begin, n, tab, depth, width, sk, sq_parts, dot_parts);
  else
    chunk_sketch_impl<false, kNarrow>(w, w0, xi, begin, n, tab, depth, width, sk, sq_parts, dot_parts);
}

FDA_CLONES void chunk_sketch(const float* w, const float* w0, const float* xi, int64_t begin, int64_t n,
                             const Tables& tab, int depth, uint32_t width, float* sk, double* sq_parts,
                             double* dot_parts, int mode) {
  if (hash::narrow(width))
    chunk_sketch_mode<true>(w, w0, xi, begin, n, tab, depth, width, sk, sq_parts, dot_parts, mode);
  else
    chunk_sketch_mode<false>(w, w0, xi, begin, n, tab, depth, width, sk, sq_parts, dot_parts, mode);
}

FDA_CLONES void norm_blocks(const float* w, const float* w0, const float* xi, int64_t d,
                            int64_t b0, int64_t b1, double* sq_parts, double* dot_parts) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t s = b * kNormBlock, n = std::min(kNormBlock, d - s);
    if (xi)
      norm_partial<true>(w + s, w0 + s, xi + s, n, sq_parts + b, dot_parts + b);
    else
      norm_partial<false>(w + s, w0 + s, nullptr, n, sq_parts + b, dot_parts + b);
  }
}

// The op's work (inputs already checked).  stats: 2 doubles; the sketch goes to sk32 (float32) or,
// widened from the same float32 values, to sk64 (exactly one of the two is given when depth > 0).
void drift_state_cpu_run(const at::Tensor& w, const at::Tensor& w0, const c10::optional<at::Tensor>& xi_opt,
                         int64_t depth, int64_t width, int64_t seed, int mode, double* stats,
                         float* sk32, double* sk64) {
  const int64_t d = w.numel();
  const float* wp = w.data_ptr<float>();
  const float* w0p = w0.data_ptr<float>();
  const float* xip = xi_opt.has_value() ? xi_opt->data_ptr<float>() : nullptr;
  const int64_t n_norm = (d + kNormBlock - 1) / kNormBlock;
  std::vector<double> sq_parts(n_norm, 0.0), dot_parts(n_norm, 0.0);

  if (depth == 0) {
    // grain 8 blocks (128K elements, ~20 us): small vectors (LeNet) run inline, no thread wake-up
    at::parallel_for(0, n_norm, 8, [&](int64_t b0, int64_t b1) {
      norm_blocks(wp, w0p, xip, d, b0, b1, sq_parts.data(), dot_parts.data());
    });
  } else {
    const std::shared_ptr<const Tables> tab = hash_tables(static_cast<uint64_t>(seed), depth, d);
    const int64_t S = depth * width;
    // Chunk = fixed function of the sketch size (never of the thread count): large enough that
    // zeroing + merging the per-chunk table stays small next to the scatter work.
    int64_t chunk = kNormBlock;
    while (chunk < 4 * S && chunk < (int64_t(1) << 24)) chunk *= 2;
    const int64_t n_chunks = (d + chunk - 1) / chunk;
    // Process chunks in waves (bounded buffer); merge each wave in chunk order.
    const int64_t max_buf = int64_t(1) << 24;  // floats (64 MiB)
    const int64_t wave = std::max<int64_t>(1, std::min<int64_t>(n_chunks, max_buf / S));
    std::vector<float> parts(static_cast<size_t>(std::min(wave, n_chunks) * S));
    std::vector<double> acc(S, 0.0);
    const uint32_t m = static_cast<uint32_t>(width);
    for (int64_t c0 = 0; c0 < n_chunks; c0 += wave) {
      const int64_t nw = std::min(wave, n_chunks - c0);
      at::parallel_for(0, nw, 1, [&](int64_t a, int64_t b) {
        for (int64_t c = a; c < b; ++c) {
          float* sk = parts.data() + c * S;
          std::fill(sk, sk + S, 0.0f);
          const int64_t begin = (c0 + c) * chunk, n = std::min(chunk, d - begin);
          chunk_sketch(wp, w0p, xip, begin, n, *tab, static_cast<int>(depth), m, sk,
                       sq_parts.data() + begin / kNormBlock, dot_parts.data() + begin / kNormBlock, mode);
        }
      });
      at::parallel_for(0, S, 2048, [&](int64_t a, int64_t b) {
        for (int64_t c = 0; c < nw; ++c) {
          const float* p = parts.data() + c * S;
          for (int64_t e = a; e < b; ++e) acc[e] += static_cast<double>(p[e]);
        }
      });
    }
    for (int64_t e = 0; e < S; ++e) {
      const float v = static_cast<float>(acc[e]);
      if (sk32)
        sk32[e] = v;
      else
        sk64[e] = static_cast<double>(v);
    }
  }
  double sq = 0.0, dt = 0.0;
  for (int64_t b = 0; b < n_norm; ++b) {
    sq += sq_parts[b];
    dt += dot_parts[b];
  }
  stats[0] = sq;
  stats[1] = dt;
}

std::tuple<at::Tensor, at::Tensor> drift_state_cpu_impl(const at::Tensor& w, const at::Tensor& w0,
                                                        const c10::optional<at::Tensor>& xi,
                                                        int64_t depth, int64_t width, int64_t seed,
                                                        int mode) {
  check_drift_state_inputs(w, w0, xi, depth, width);
  at::Tensor stats = at::empty({2}, w.options().dtype(at::kDouble));
  at::Tensor sketch = at::zeros({depth, width}, w.options());
  drift_state_cpu_run(w, w0, xi, depth, width, seed, mode, stats.data_ptr<double>(),
                      sketch.data_ptr<float>(), nullptr);
  return {stats, sketch};
}

std::tuple<at::Tensor, at::Tensor> drift_state_cpu(const at::Tensor& w, const at::Tensor& w0,
                                                   const c10::optional<at::Tensor>& xi,
                                                   int64_t depth, int64_t width, int64_t seed) {
  return drift_state_cpu_impl(w, w0, xi, depth, width, seed, 0);
}

void drift_state_out_cpu(const at::Tensor& w, const at::Tensor& w0, const c10::optional<at::Tensor>& xi,
                         int64_t depth, int64_t width, int64_t seed, const at::Tensor& out) {
  check_drift_state_inputs(w, w0, xi, depth, width);
  check_drift_state_out(w, out, depth, width);
  double* o = out.data_ptr<double>();
  drift_state_cpu_run(w, w0, xi, depth, width, seed, 0, o, nullptr, o + 2);
}

#ifdef FDA_PROFILING
// Benchmark-only variants (see kMode); results are meaningless.
std::tuple<at::Tensor, at::Tensor> drift_state_profile_cpu(const at::Tensor& w, const at::Tensor& w0,
                                                           int64_t depth, int64_t width, int64_t seed,
                                                           int64_t mode) {
  TORCH_CHECK(mode == 1 || mode == 2, "_drift_state_profile: mode must be 1 or 2");
  return drift_state_cpu_impl(w, w0, c10::nullopt, depth, width, seed, static_cast<int>(mode));
}
#endif

}  // namespace
}  // namespace fda

TORCH_LIBRARY(fda, m) {
  m.def("drift_state(Tensor w, Tensor w0, Tensor? xi, int depth, int width, int seed) -> (Tensor, Tensor)");
  m.def("drift_state_out(Tensor w, Tensor w0, Tensor? xi, int depth, int width, int seed, Tensor(a!) out) -> ()");
#ifdef FDA_PROFILING
  // bench/kernel.py only (the benchmark build): mode 1 = hashing without the scatter, 2 = scatter
  // without hashing.
  m.def("_drift_state_profile(Tensor w, Tensor w0, int depth, int width, int seed, int mode) -> (Tensor, Tensor)");
#endif
}

TORCH_LIBRARY_IMPL(fda, CPU, m) {
  m.impl("drift_state", &fda::drift_state_cpu);
  m.impl("drift_state_out", &fda::drift_state_out_cpu);
#ifdef FDA_PROFILING
  m.impl("_drift_state_profile", &fda::drift_state_profile_cpu);
#endif
}
