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
#include <stddef.h>
namespace fda {
// Bytes of device scratch (norm and sketch partials) that launch_drift_state_cuda needs: a
// function of d, depth and width only.
size_t drift_state_cuda_scratch_bytes(int64_t d, int depth, uint32_t width);
// The largest sketch width the CUDA kernel handles on `device` (one row's tables must fit in a
// block's shared memory); 0 when the device cannot be queried.
int64_t drift_state_cuda_max_width(int device);
// Launches the fused drift-state kernels on `stream` (no allocation, no host synchronisation):
// out[0] = ||u||^2, out[1] = <xi, u> (0 without xi), out[2 + r * width + j] = sketch[r][j] as a
// float32 value widened.  Bit-reproducible (see drift_state_cuda.cu).  xi may be null; `scratch`
// holds drift_state_cuda_scratch_bytes(d, depth, width) bytes of device memory (no contents
// needed).  mode 0 = the op; 1 and 2 = bench/kernel.py's profiling variants (hashing without the
// scatter, scatter without the hashing; depth 5 only; results meaningless).  Returns the status of this call's
// own launches.
cudaError_t launch_drift_state_cuda(const float* w, const float* w0, const float* xi, int64_t d,
                                    int depth, uint32_t width, uint64_t seed, int mode,
                                    void* scratch, double* out, cudaStream_t stream);
}  // namespace fda
#endif
