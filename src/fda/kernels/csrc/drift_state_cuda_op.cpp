// drift_state_cuda_op.cpp -- registers the CUDA implementations of fda::drift_state,
// fda::drift_state_out and, in the benchmark build, fda::_drift_state_profile (schemas in
// drift_state_cpu.cpp).  Kernels
// run on torch's current stream of w's device; scratch memory comes from torch's caching
// allocator (no cudaMalloc per call, no host synchronisation).  Only c10/cuda headers: no
// ATen/cuda (which pulls in the cuBLAS/cuSPARSE/cuSOLVER headers), so a CUDA toolkit with the
// runtime headers is all a GPU node needs.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include "drift_state.h"

namespace fda {
namespace {

void run_cuda(const at::Tensor& w, const at::Tensor& w0, const c10::optional<at::Tensor>& xi, int64_t depth,
              int64_t width, int64_t seed, int mode, const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(w.device());
  if (depth > 0) {
    const int64_t max_width = drift_state_cuda_max_width(w.get_device());
    TORCH_CHECK(width <= max_width, "drift_state (CUDA): sketch width ", width,
                " is too large for this GPU's shared memory (at most ", max_width, ")");
  }
  const size_t bytes = drift_state_cuda_scratch_bytes(w.numel(), static_cast<int>(depth),
                                                      static_cast<uint32_t>(width));
  const at::Tensor scratch = at::empty({static_cast<int64_t>(bytes)}, w.options().dtype(at::kByte));
  const cudaError_t err = launch_drift_state_cuda(
      w.data_ptr<float>(), w0.data_ptr<float>(), xi.has_value() ? xi->data_ptr<float>() : nullptr, w.numel(),
      static_cast<int>(depth), static_cast<uint32_t>(width), static_cast<uint64_t>(seed), mode,
      bytes ? scratch.data_ptr() : nullptr, out.data_ptr<double>(), c10::cuda::getCurrentCUDAStream().stream());
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // this error is ours: don't leave it for torch's next launch check
    TORCH_CHECK(false, "drift_state (CUDA): kernel launch failed: ", cudaGetErrorString(err));
  }
}

void drift_state_out_cuda(const at::Tensor& w, const at::Tensor& w0, const c10::optional<at::Tensor>& xi,
                          int64_t depth, int64_t width, int64_t seed, const at::Tensor& out) {
  check_drift_state_inputs(w, w0, xi, depth, width);
  check_drift_state_out(w, out, depth, width);
  run_cuda(w, w0, xi, depth, width, seed, 0, out);
}

std::tuple<at::Tensor, at::Tensor> packed_to_pair(const at::Tensor& out, int64_t depth, int64_t width) {
  return {out.narrow(0, 0, 2), out.narrow(0, 2, depth * width).to(at::kFloat).view({depth, width})};
}

std::tuple<at::Tensor, at::Tensor> drift_state_cuda(const at::Tensor& w, const at::Tensor& w0,
                                                    const c10::optional<at::Tensor>& xi, int64_t depth,
                                                    int64_t width, int64_t seed) {
  check_drift_state_inputs(w, w0, xi, depth, width);
  const at::Tensor out = at::empty({2 + depth * width}, w.options().dtype(at::kDouble));
  run_cuda(w, w0, xi, depth, width, seed, 0, out);
  return packed_to_pair(out, depth, width);
}

#ifdef FDA_PROFILING
// bench/kernel.py only, in the benchmark build (results meaningless): mode 1 = hashing without the scatter, 2 = scatter
// without the hashing.
std::tuple<at::Tensor, at::Tensor> drift_state_profile_cuda(const at::Tensor& w, const at::Tensor& w0,
                                                            int64_t depth, int64_t width, int64_t seed,
                                                            int64_t mode) {
  TORCH_CHECK(mode == 1 || mode == 2, "_drift_state_profile: mode must be 1 or 2");
  TORCH_CHECK(depth == 5, "_drift_state_profile (CUDA): depth must be 5");
  check_drift_state_inputs(w, w0, c10::nullopt, depth, width);
  const at::Tensor out = at::empty({2 + depth * width}, w.options().dtype(at::kDouble));
  run_cuda(w, w0, c10::nullopt, depth, width, seed, static_cast<int>(mode), out);
  return packed_to_pair(out, depth, width);
}
#endif

}  // namespace
}  // namespace fda

TORCH_LIBRARY_IMPL(fda, CUDA, m) {
  m.impl("drift_state", &fda::drift_state_cuda);
  m.impl("drift_state_out", &fda::drift_state_out_cuda);
#ifdef FDA_PROFILING
  m.impl("_drift_state_profile", &fda::drift_state_profile_cuda);
#endif
}
