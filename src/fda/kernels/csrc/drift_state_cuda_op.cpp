// drift_state_cuda_op.cpp -- registers the CUDA implementation of fda::drift_state (the schema
// is defined in drift_state_cpu.cpp) and launches the kernel on torch's current stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include "drift_state.h"

namespace fda {
namespace {

std::tuple<at::Tensor, at::Tensor> drift_state_cuda(const at::Tensor& w, const at::Tensor& w0,
                                                    const c10::optional<at::Tensor>& xi,
                                                    int64_t depth, int64_t width, int64_t seed) {
  check_drift_state_inputs(w, w0, xi, depth, width);
  const c10::cuda::CUDAGuard guard(w.device());
  at::Tensor stats = at::zeros({2}, w.options().dtype(at::kDouble));
  at::Tensor sketch = at::zeros({depth, width}, w.options());
  if (w.numel() == 0) return {stats, sketch};
  const cudaError_t err = launch_drift_state_cuda(
      w.data_ptr<float>(), w0.data_ptr<float>(), xi.has_value() ? xi->data_ptr<float>() : nullptr,
      w.numel(), static_cast<int>(depth), static_cast<uint32_t>(width), static_cast<uint64_t>(seed),
      sketch.data_ptr<float>(), stats.data_ptr<double>(), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "drift_state: CUDA launch failed: ", cudaGetErrorString(err));
  return {stats, sketch};
}

void drift_state_out_cuda(const at::Tensor& w, const at::Tensor& w0, const c10::optional<at::Tensor>& xi,
                          int64_t depth, int64_t width, int64_t seed, const at::Tensor& out) {
  check_drift_state_inputs(w, w0, xi, depth, width);
  check_drift_state_out(w, out, depth, width);
  auto [stats, sketch] = drift_state_cuda(w, w0, xi, depth, width, seed);
  out.narrow(0, 0, 2).copy_(stats);
  out.narrow(0, 2, depth * width).copy_(sketch.reshape(-1));
}

}  // namespace
}  // namespace fda

TORCH_LIBRARY_IMPL(fda, CUDA, m) {
  m.impl("drift_state", &fda::drift_state_cuda);
  m.impl("drift_state_out", &fda::drift_state_out_cuda);
}
