// sync_epilogue_cpu.cpp -- what a float32 sync does after its sum Allreduce, in one pass (CPU).
//
//   fda::mean_epilogue_(Tensor(a!) sum, float divisor, Tensor(b!)? ref, Tensor(c!)? update,
//                       Tensor(d!)[] copies) -> ()
//
// For every i:  m = sum[i] / divisor            (float32 true division: torch's div_ bits)
//               update[i] = m - ref[i]          (i < update.numel(); the OLD ref: torch.sub's bits)
//               ref[i] = m;  sum[i] = m;  copies[j][i] = m
// i.e. the mean over the K workers, the global update from the last global model (the caller
// normalises it into the direction xi), the
// refreshed global model (FDA's w0) and the other hosted workers' models, reading the sum once.
// The unfused sequence (div_, sub, copy_, copy_...) reads and writes every value once per op;
// on a sync that is memory-bound (a CPU, or a shared-memory Allreduce) the passes cost as much as
// a good part of the Allreduce itself.  Element-wise, so the bits do not depend on the threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FDA_NO_CLONES)
#define FDA_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define FDA_CLONES
#endif

namespace fda {
namespace {

// One tile [a, b): restrict-qualified, so the compiler vectorises it (true division and
// subtraction: the same bits in every lane width, so every clone agrees).
FDA_CLONES void tile(float* __restrict__ s, float* __restrict__ r, float* __restrict__ u, int64_t a,
                     int64_t split, int64_t b, float k) {
  for (int64_t i = a; i < split; ++i) {
    const float m = s[i] / k;
    u[i] = m - r[i];
    r[i] = m;
    s[i] = m;
  }
  if (r != nullptr) {
    for (int64_t i = split; i < b; ++i) {
      const float m = s[i] / k;
      r[i] = m;
      s[i] = m;
    }
  } else {
    for (int64_t i = split; i < b; ++i) s[i] = s[i] / k;
  }
}

void check_operand(const at::Tensor& t, const at::Tensor& sum, const char* name, bool same_length) {
  TORCH_CHECK(t.device() == sum.device(), "mean_epilogue_: ", name, " is on ", t.device(), ", sum on ",
              sum.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous(), "mean_epilogue_: ", name,
              " must be a contiguous float32 tensor");
  TORCH_CHECK(same_length ? t.numel() == sum.numel() : t.numel() <= sum.numel(), "mean_epilogue_: ", name,
              " has ", t.numel(), " values, sum ", sum.numel());
}

}  // namespace

void mean_epilogue_cpu(at::Tensor sum, double divisor, const std::optional<at::Tensor>& ref,
                       const std::optional<at::Tensor>& update, at::TensorList copies) {
  TORCH_CHECK(sum.device().is_cpu() && sum.scalar_type() == at::kFloat && sum.is_contiguous(),
              "mean_epilogue_: sum must be a contiguous float32 CPU tensor");
  TORCH_CHECK(!update.has_value() || ref.has_value(), "mean_epilogue_: update needs ref");
  if (ref) check_operand(*ref, sum, "ref", true);
  if (update) check_operand(*update, sum, "update", false);
  for (const auto& c : copies) check_operand(c, sum, "a copy", true);

  const float k = static_cast<float>(divisor);
  float* s = sum.data_ptr<float>();
  float* r = ref ? ref->data_ptr<float>() : nullptr;
  float* u = update ? update->data_ptr<float>() : nullptr;
  const int64_t n = sum.numel(), n_update = update ? update->numel() : 0;
  std::vector<float*> out;
  for (const auto& c : copies) out.push_back(c.data_ptr<float>());

  // Pieces of kTile values, so that the copies read what the pass just wrote from L1/L2.  Threads
  // only from 1 MB per thread: waking a sleeping OpenMP team costs ~0.2 ms, more than a small
  // model's whole pass (LeNet-5: 0.01 ms).
  constexpr int64_t kTile = 8192;
  at::parallel_for(0, n, 32 * kTile, [&](int64_t begin, int64_t end) {
    for (int64_t a = begin; a < end; a += kTile) {
      const int64_t b = std::min(end, a + kTile);
      const int64_t split = std::min(std::max(a, n_update), b);  // [a, split) has an update value too
      tile(s, r, u, a, split, b, k);
      for (float* o : out) std::copy(s + a, s + b, o + a);
    }
  });
}

}  // namespace fda

TORCH_LIBRARY_FRAGMENT(fda, m) {
  m.def("mean_epilogue_(Tensor(a!) sum, float divisor, Tensor(b!)? ref, Tensor(c!)? update, "
        "Tensor(d!)[] copies) -> ()");
}

TORCH_LIBRARY_IMPL(fda, CPU, m) {
  m.impl("mean_epilogue_", &fda::mean_epilogue_cpu);
}
