// emulate.cpp -- builds csrc/drift_state_cuda.cu on the CPU with the stand-in cuda_runtime.h and
// exposes its launcher to Python (ctypes).  The build (tests/kernels/test_drift_state_cuda_emulated.py)
// compiles a copy of the .cu in which `extern __shared__` became `extern` and `__shared__` became
// `static` (blocks run one at a time, so a static is one block's shared memory).
#include "cuda_runtime.h"

#include <sys/mman.h>
#include <unistd.h>

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
  // scratch ends (to within 15 bytes) at an inaccessible page: a read past it crashes the test
  const size_t bytes = (fda::drift_state_cuda_scratch_bytes(d, depth, width) + 15) / 16 * 16;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t span = (bytes + page - 1) / page * page;
  auto* base = static_cast<unsigned char*>(mmap(nullptr, span + page, PROT_READ | PROT_WRITE,
                                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (base == MAP_FAILED) return -1;
  mprotect(base + span, page, PROT_NONE);
  unsigned char* scratch = base + span - bytes;
  memset(scratch, 0x5A, bytes);
  const int rc = static_cast<int>(fda::launch_drift_state_cuda(w, w0, xi, d, depth, width, seed, mode,
                                                               scratch, out, nullptr));
  munmap(base, span + page);
  return rc;
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
