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
// identical for any number of threads.  Within a block the hashes are evaluated with exact
// finite differences of the hash polynomial over GF(2^31 - 1) in 16 independent lanes
// (3 modular additions per row and element, all 32-bit, vectorisable); the sketch update is a
// scalar scatter into an L1-resident per-block table, in element order for every row.
//
// The inner kernel is compiled for several ISAs (target_clones: baseline, x86-64-v3, x86-64-v4)
// and picked at load time; floating-point contraction is disabled (-ffp-contract=off), so every
// clone gives the same bits.  On CPUs with AVX-512 (F/BW/DQ/VL, checked at run time) the per-row
// hash + scatter runs in an explicit AVX-512 function instead (hash_scatter_row_avx512): same
// hash values, same update order, so the same bits.
#include <ATen/Parallel.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#include <torch/library.h>
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
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
  TORCH_CHECK(width < static_cast<int64_t>(hash::kPrime), "drift_state: width must be < 2^31 - 1");
  TORCH_CHECK(depth * width < (int64_t(1) << 31), "drift_state: sketch too large");
  TORCH_CHECK(w.numel() < static_cast<int64_t>(hash::kPrime),
              "drift_state: vectors must have fewer than 2^31 - 1 elements");
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

struct Coeffs {
  uint32_t a0, a1, a2, a3;
};

FDA_AI uint32_t sub_mod(uint32_t a, uint32_t b) { return hash::add_mod(a, hash::kPrime - b); }

// Hash state of one row for 16 lanes: lane l sits at element x_l and steps by kLanes.
struct alignas(64) RowState {
  uint32_t P[kLanes], D1[kLanes], D2[kLanes], D3[kLanes];
};

inline void init_row(RowState& s, const Coeffs& c, int64_t first) {
  for (int l = 0; l < kLanes; ++l) {
    uint32_t g[4];
    for (int k = 0; k < 4; ++k) {
      const uint64_t x = static_cast<uint64_t>(first + l + k * kLanes) % hash::kPrime;
      g[k] = hash::poly(c.a0, c.a1, c.a2, c.a3, static_cast<uint32_t>(x));
    }
    // forward differences with step kLanes
    const uint32_t d1_0 = sub_mod(g[1], g[0]), d1_1 = sub_mod(g[2], g[1]), d1_2 = sub_mod(g[3], g[2]);
    const uint32_t d2_0 = sub_mod(d1_1, d1_0), d2_1 = sub_mod(d1_2, d1_1);
    s.P[l] = g[0];
    s.D1[l] = d1_0;
    s.D2[l] = d2_0;
    s.D3[l] = sub_mod(d2_1, d2_0);
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FDA_AVX512_ROW 1
bool cpu_has_avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return ok;
}
// FDA_KERNELS_NO_AVX512=1 (read once) selects the generic path, to compare the two paths' bits.
bool force_generic_sketch() {
  static const bool off = [] {
    const char* e = std::getenv("FDA_KERNELS_NO_AVX512");
    return e != nullptr && e[0] == '1';
  }();
  return off;
}

constexpr int64_t kMini = 128;  // elements hashed before they are scattered (multiple of kLanes)

// One row over ns elements (ns % kLanes == 0): the row's hash state S advances by ns; bucket
// indices (plus off) and signed values go to idx/val; when sk is given they are also added into
// sk, kMini elements at a time.  Explicit intrinsics because GCC's generic code emits the 3-uop
// vpmullq for the bucket's 32x32->64 multiplies (vpmuludq here) and, when the hash and the scatter
// share a loop, extracts lanes with shuffles instead of a store/reload.  Interleaving the two in
// kMini steps lets the out-of-order core overlap the vector hash with the scalar scatter
// (-29% at d = 25M against a whole-sub-block hash followed by a whole-sub-block scatter).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 intrinsic headers
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) void hash_scatter_row_avx512(
    RowState& S, const uint32_t* __restrict ubits, int64_t ns, uint32_t off, uint32_t width,
    uint32_t* __restrict idx, uint32_t* __restrict val, float* __restrict sk) {
  static_assert(kLanes == 16 && kMini % kLanes == 0, "one zmm per lane set");
  __m512i P = _mm512_load_si512(S.P), D1 = _mm512_load_si512(S.D1), D2 = _mm512_load_si512(S.D2);
  const __m512i D3 = _mm512_load_si512(S.D3);
  const __m512i prime = _mm512_set1_epi32(static_cast<int>(hash::kPrime));
  const __m512i m = _mm512_set1_epi32(static_cast<int>(width));
  const __m512i offv = _mm512_set1_epi32(static_cast<int>(off));
  for (int64_t j0 = 0; j0 < ns; j0 += kMini) {
    const int64_t je = std::min(ns, j0 + kMini);
    for (int64_t j = j0; j < je; j += kLanes) {
      // bucket = ((g >> 1) * m) >> 30: even lanes from the low, odd lanes from the high dwords
      const __m512i t = _mm512_srli_epi32(P, 1);
      const __m512i ev = _mm512_srli_epi64(_mm512_mul_epu32(t, m), 30);
      const __m512i od = _mm512_slli_epi64(_mm512_mul_epu32(_mm512_srli_epi64(t, 32), m), 2);
      _mm512_store_si512(idx + j, _mm512_add_epi32(_mm512_mask_blend_epi32(0xAAAA, ev, od), offv));
      _mm512_store_si512(val + j, _mm512_xor_si512(_mm512_load_si512(ubits + j), _mm512_slli_epi32(P, 31)));
      __m512i s = _mm512_add_epi32(P, D1);  // add_mod: min(s, s - p) in unsigned 32-bit
      P = _mm512_min_epu32(s, _mm512_sub_epi32(s, prime));
      s = _mm512_add_epi32(D1, D2);
      D1 = _mm512_min_epu32(s, _mm512_sub_epi32(s, prime));
      s = _mm512_add_epi32(D2, D3);
      D2 = _mm512_min_epu32(s, _mm512_sub_epi32(s, prime));
    }
    if (!sk) continue;
    asm volatile("" ::: "memory");  // scatter from memory, not from lanes extracted by shuffles
#pragma GCC unroll 8
    for (int64_t j = j0; j < je; ++j) {
      float v;
      std::memcpy(&v, &val[j], 4);
      sk[idx[j]] += v;
    }
  }
  _mm512_store_si512(S.P, P);
  _mm512_store_si512(S.D1, D1);
  _mm512_store_si512(S.D2, D2);
}
#pragma GCC diagnostic pop
#endif

// Sketch + norms for one chunk [begin, begin + n).  sk: zeroed float [depth * width].
// kMode: 0 = the op; 1 = hash only (no scatter; bench/kernel.py's breakdown); 2 = no hashing
// (scatter u_i into bucket i % width of every row; bench only).
template <bool kDot, int kMode = 0>
FDA_AI void chunk_sketch_impl(const float* __restrict w, const float* __restrict w0,
                              const float* __restrict xi, int64_t begin, int64_t n,
                              const Coeffs* coeffs, int depth, uint32_t width, float* __restrict sk,
                              double* sq_parts, double* dot_parts, bool avx512) {
  // norms: per kNormBlock partials (identical to the norm-only path)
  for (int64_t b = 0; b < n; b += kNormBlock) {
    const int64_t nb = std::min(kNormBlock, n - b);
    norm_partial<kDot>(w + begin + b, w0 + begin + b, kDot ? xi + begin + b : nullptr, nb,
                       sq_parts + b / kNormBlock, dot_parts + b / kNormBlock);
  }
  const int64_t nv = n - n % kLanes;  // stepped part; the (last chunk's) tail is hashed directly
  alignas(64) uint32_t ubits[kSub];
  alignas(64) uint32_t idx[kSub];
  alignas(64) uint32_t val[kSub];
  std::vector<RowState> st(depth);
  for (int r = 0; r < depth; ++r) init_row(st[r], coeffs[r], begin);
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
      RowState& S = st[r];
      const uint32_t off = static_cast<uint32_t>(r) * width;
#ifdef FDA_AVX512_ROW
      if (kMode != 2 && avx512) {
        hash_scatter_row_avx512(S, ubits, ns, off, width, idx, val, kMode == 0 ? sk : nullptr);
        if (kMode == 1) {  // keep the hash work alive without scattering
          uint32_t x = 0;
          for (int64_t j = 0; j < ns; ++j) x ^= idx[j] + val[j];
          sk[x % width] += 1e-30f;
        }
        continue;
      }
#endif
      uint32_t P[kLanes], D1[kLanes], D2[kLanes], D3[kLanes];
      for (int l = 0; l < kLanes; ++l) {
        P[l] = S.P[l];
        D1[l] = S.D1[l];
        D2[l] = S.D2[l];
        D3[l] = S.D3[l];
      }
      if (kMode == 2) {
        uint32_t b = static_cast<uint32_t>(s0 % width);
        for (int64_t j = 0; j < ns; ++j) {
          float v;
          std::memcpy(&v, &ubits[j], 4);
          sk[off + b] += v;
          b = b + 1 == width ? 0 : b + 1;
        }
        continue;
      }
      for (int64_t j = 0; j < ns; j += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          const uint32_t g = P[l];
          idx[j + l] = off + hash::bucket(g, width);
          val[j + l] = ubits[j + l] ^ hash::sign_mask(g);
          P[l] = hash::add_mod(P[l], D1[l]);
          D1[l] = hash::add_mod(D1[l], D2[l]);
          D2[l] = hash::add_mod(D2[l], D3[l]);
        }
      }
      for (int l = 0; l < kLanes; ++l) {
        S.P[l] = P[l];
        S.D1[l] = D1[l];
        S.D2[l] = D2[l];
      }
      if (kMode == 1) {  // keep the hash work alive without scattering
        uint32_t x = 0;
        for (int64_t j = 0; j < ns; ++j) x ^= idx[j] + val[j];
        sk[x % width] += 1e-30f;
        continue;
      }
#pragma GCC unroll 8
      for (int64_t j = 0; j < ns; ++j) {
        float v;
        std::memcpy(&v, &val[j], 4);
        sk[idx[j]] += v;
      }
    }
  }
  for (int64_t j = nv; j < n; ++j) {  // tail (< kLanes elements, last chunk only)
    const float u = w[begin + j] - w0[begin + j];
    const uint32_t x = static_cast<uint32_t>(static_cast<uint64_t>(begin + j) % hash::kPrime);
    for (int r = 0; r < depth; ++r) {
      const Coeffs& c = coeffs[r];
      const uint32_t g = hash::poly(c.a0, c.a1, c.a2, c.a3, x);
      sk[static_cast<uint32_t>(r) * width + hash::bucket(g, width)] += hash::sign(g) > 0 ? u : -u;
    }
  }
}

FDA_CLONES void chunk_sketch(const float* w, const float* w0, const float* xi, int64_t begin,
                             int64_t n, const Coeffs* coeffs, int depth, uint32_t width, float* sk,
                             double* sq_parts, double* dot_parts, int mode, bool avx512) {
#ifdef FDA_PROFILING  // the benchmark build (CMake FDA_BENCHMARK=ON) only
  if (mode == 1)
    chunk_sketch_impl<false, 1>(w, w0, xi, begin, n, coeffs, depth, width, sk, sq_parts, dot_parts,
                               avx512);
  else if (mode == 2)
    chunk_sketch_impl<false, 2>(w, w0, xi, begin, n, coeffs, depth, width, sk, sq_parts, dot_parts,
                               avx512);
  else
#endif
  if (xi)
    chunk_sketch_impl<true>(w, w0, xi, begin, n, coeffs, depth, width, sk, sq_parts, dot_parts,
                               avx512);
  else
    chunk_sketch_impl<false>(w, w0, xi, begin, n, coeffs, depth, width, sk, sq_parts, dot_parts,
                               avx512);
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
    std::vector<Coeffs> coeffs(depth);
    for (int64_t r = 0; r < depth; ++r) {
      const uint64_t s = static_cast<uint64_t>(seed);
      coeffs[r] = {hash::coefficient(s, r, 0), hash::coefficient(s, r, 1), hash::coefficient(s, r, 2),
                   hash::coefficient(s, r, 3)};
    }
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
#ifdef FDA_AVX512_ROW
    const bool avx512 = cpu_has_avx512() && !force_generic_sketch();
#else
    const bool avx512 = false;
#endif
    for (int64_t c0 = 0; c0 < n_chunks; c0 += wave) {
      const int64_t nw = std::min(wave, n_chunks - c0);
      at::parallel_for(0, nw, 1, [&](int64_t a, int64_t b) {
        for (int64_t c = a; c < b; ++c) {
          float* sk = parts.data() + c * S;
          std::fill(sk, sk + S, 0.0f);
          const int64_t begin = (c0 + c) * chunk, n = std::min(chunk, d - begin);
          chunk_sketch(wp, w0p, xip, begin, n, coeffs.data(), static_cast<int>(depth), m, sk,
                       sq_parts.data() + begin / kNormBlock, dot_parts.data() + begin / kNormBlock,
                       mode, avx512);
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
