// drift_state_cuda.cu -- fused drift-state kernel (CUDA).  Plain CUDA: compiles with nvcc alone
// (no torch headers); the torch op lives in drift_state_cuda_op.cpp.
//
// Grid-stride loop over u = w - w0.  Per element: float64 ||u||^2 and <xi, u> partials in
// registers, and for every sketch row a hash (csrc/hash.h, the same family as the CPU and the
// reference) plus a shared-memory atomicAdd into the block's private copy of the sketch.  At
// the end: warp-shuffle + shared-memory reduction of the norms (one double atomicAdd per block
// and quantity) and one global atomicAdd per non-zero sketch bucket per block.  When the sketch
// does not fit in shared memory the kernel adds straight into global memory.
#include <cuda_runtime.h>
#include <stdint.h>

#include "drift_state.h"
#include "hash.h"

namespace fda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

template <bool kDot, bool kShared>
__global__ void __launch_bounds__(kThreads)
drift_state_kernel(const float* __restrict__ w, const float* __restrict__ w0,
                   const float* __restrict__ xi, int64_t d, int depth, uint32_t width,
                   uint64_t seed, float* __restrict__ sketch, double* __restrict__ stats) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ double red[2][kWarps];
  uint32_t* coeffs = reinterpret_cast<uint32_t*>(smem_raw);  // 4 * depth
  float* table = reinterpret_cast<float*>(coeffs + 4 * depth);  // depth * width (kShared)
  const int64_t S = static_cast<int64_t>(depth) * width;

  for (int t = threadIdx.x; t < 4 * depth; t += blockDim.x)
    coeffs[t] = hash::coefficient(seed, static_cast<uint64_t>(t >> 2), static_cast<uint64_t>(t & 3));
  if (kShared)
    for (int64_t t = threadIdx.x; t < S; t += blockDim.x) table[t] = 0.0f;
  __syncthreads();

  float* acc = kShared ? table : sketch;
  double sq = 0.0, dt = 0.0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < d; i += stride) {
    const float u = __ldg(w + i) - __ldg(w0 + i);
    const double ud = static_cast<double>(u);
    sq += ud * ud;
    if (kDot) dt += static_cast<double>(__ldg(xi + i)) * ud;
    const uint32_t x = static_cast<uint32_t>(i);  // i < 2^31 - 1 (checked by the op)
    for (int r = 0; r < depth; ++r) {
      const uint32_t* c = coeffs + 4 * r;
      const uint32_t g = hash::poly(c[0], c[1], c[2], c[3], x);
      const float v = __uint_as_float(__float_as_uint(u) ^ hash::sign_mask(g));
      atomicAdd(acc + static_cast<int64_t>(r) * width + hash::bucket(g, width), v);
    }
  }

  // norms: warp shuffles, then one value per warp through shared memory
  for (int off = 16; off > 0; off >>= 1) {
    sq += __shfl_down_sync(0xffffffffu, sq, off);
    if (kDot) dt += __shfl_down_sync(0xffffffffu, dt, off);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    red[0][warp] = sq;
    red[1][warp] = dt;
  }
  __syncthreads();
  if (warp == 0) {
    sq = lane < kWarps ? red[0][lane] : 0.0;
    dt = lane < kWarps ? red[1][lane] : 0.0;
    for (int off = 16; off > 0; off >>= 1) {
      sq += __shfl_down_sync(0xffffffffu, sq, off);
      if (kDot) dt += __shfl_down_sync(0xffffffffu, dt, off);
    }
    if (lane == 0) {
      atomicAdd(stats, sq);  // native double atomics: sm_60+
      if (kDot) atomicAdd(stats + 1, dt);
    }
  }
  if (kShared) {  // one global atomic per (non-zero) bucket per block
    for (int64_t t = threadIdx.x; t < S; t += blockDim.x) {
      const float v = table[t];
      if (v != 0.0f) atomicAdd(sketch + t, v);
    }
  }
}

template <bool kDot, bool kShared>
cudaError_t launch(const float* w, const float* w0, const float* xi, int64_t d, int depth,
                   uint32_t width, uint64_t seed, float* sketch, double* stats, size_t smem,
                   int grid, cudaStream_t stream) {
  auto* kern = drift_state_kernel<kDot, kShared>;
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  kern<<<grid, kThreads, smem, stream>>>(w, w0, xi, d, depth, width, seed, sketch, stats);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_drift_state_cuda(const float* w, const float* w0, const float* xi, int64_t d,
                                    int depth, uint32_t width, uint64_t seed, float* sketch,
                                    double* stats, cudaStream_t stream) {
  if (d <= 0) return cudaSuccess;
  int dev = 0, sms = 1, smem_optin = 48 * 1024;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  const size_t coeff_bytes = 16 * static_cast<size_t>(depth);
  const size_t table_bytes = 4 * static_cast<size_t>(depth) * width;
  const bool shared = depth > 0 && coeff_bytes + table_bytes <= static_cast<size_t>(smem_optin) - 1024;
  const size_t smem = coeff_bytes + (shared ? table_bytes : 0);
  // Enough blocks to fill the GPU; with a shared table fewer, larger blocks amortise its merge.
  const int64_t need = (d + kThreads - 1) / kThreads;
  const int64_t cap = static_cast<int64_t>(sms) * (shared ? 4 : 8);
  const int grid = static_cast<int>(need < cap ? need : cap);
  if (xi) {
    return shared ? launch<true, true>(w, w0, xi, d, depth, width, seed, sketch, stats, smem, grid, stream)
                  : launch<true, false>(w, w0, xi, d, depth, width, seed, sketch, stats, smem, grid, stream);
  }
  return shared ? launch<false, true>(w, w0, xi, d, depth, width, seed, sketch, stats, smem, grid, stream)
                : launch<false, false>(w, w0, xi, d, depth, width, seed, sketch, stats, smem, grid, stream);
}

}  // namespace fda
