// drift_state.h -- declarations shared by the CPU op, the CUDA op and the CUDA launcher.
#pragma once

#include <stdint.h>

#if !defined(__CUDACC__)
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
namespace fda {
// Validates the op's inputs (TORCH_CHECK); shared by the CPU and CUDA implementations.
void check_drift_state_inputs(const at::Tensor& w, const at::Tensor& w0,
                              const c10::optional<at::Tensor>& xi, int64_t depth, int64_t width);
// Validates drift_state_out's `out` (float64, contiguous 1-D, 2 + depth * width, on w's device).
void check_drift_state_out(const at::Tensor& w, const at::Tensor& out, int64_t depth, int64_t width);
}  // namespace fda
#endif

#if defined(FDA_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
namespace fda {
// Launches the fused drift-state kernel on `stream`.  `sketch` (depth*width floats) and `stats`
// (2 doubles: sqnorm, dot) must be zeroed device memory; xi may be null.  Results are accumulated
// with atomics (not bitwise reproducible run to run).  Returns the launch status.
cudaError_t launch_drift_state_cuda(const float* w, const float* w0, const float* xi, int64_t d,
                                    int depth, uint32_t width, uint64_t seed, float* sketch,
                                    double* stats, cudaStream_t stream);
}  // namespace fda
#endif
