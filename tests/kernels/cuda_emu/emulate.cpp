// emulate.cpp -- builds csrc/drift_state_cuda.cu on the CPU with the stand-in cuda_runtime.h and
// exposes its launcher to Python (ctypes).  The build (tests/kernels/test_drift_state_cuda_emulated.py)
// compiles a copy of the .cu in which `extern __shared__` became `extern` and `__shared__` became
// `static` (blocks run one at a time, so a static is one block's shared memory).
#include "cuda_runtime.h"

namespace fda {
namespace {
alignas(16) unsigned char smem_raw[256 * 1024];  // the kernels' dynamic shared memory
}
}  // namespace fda

#include "drift_state_cuda_emu.inc"

extern "C" {
// out: 2 + depth * width doubles.  Returns the launcher's cudaError_t.
int emu_drift_state(const float* w, const float* w0, const float* xi, int64_t d, int depth, uint32_t width,
                    uint64_t seed, int mode, double* out) {
  emu::dyn_smem = fda::smem_raw;
  emu::dyn_smem_size = sizeof(fda::smem_raw);
  std::vector<unsigned char> scratch(fda::drift_state_cuda_scratch_bytes(d, depth, width) + 16, 0x5A);
  return static_cast<int>(fda::launch_drift_state_cuda(w, w0, xi, d, depth, width, seed, mode,
                                                       scratch.data(), out, nullptr));
}
// Races found by the check in cuda_runtime.h since the last call (and forgets them).
long long emu_take_races() {
  const long long n = emu::races;
  emu::races = 0;
  emu::touches.clear();
  return n;
}
long long emu_max_width() { return fda::drift_state_cuda_max_width(0); }
// Another device (a new id: the launcher's per-device caches start afresh, as on a second GPU).
void emu_set_device(int sms, int smem_optin, int blocks_per_sm) {
  ++emu::device_id;
  emu::sm_count = sms;
  emu::smem_optin = smem_optin;
  emu::blocks_per_sm = blocks_per_sm;
}
}
