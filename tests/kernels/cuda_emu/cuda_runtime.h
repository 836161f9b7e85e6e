// cuda_runtime.h -- a CPU stand-in for the parts of CUDA that csrc/drift_state_cuda.cu uses, so
// that its real source (kernels, launcher, plan) runs on a machine without a GPU
// (tests/kernels/test_drift_state_cuda_emulated.py).  Threads are cooperative fibers of one OS
// thread (x86-64 only: a 14-instruction stack switch); __syncthreads and warp shuffles are barriers over the block's / warp's fibers;
// blocks run one after the other.  It checks the kernel's logic (indexing, hashing, fixed-point
// accumulation, reductions, launch plan), not the GPU's memory model: a thread runs from one
// barrier to the next without interruption, so a race changes no result here.  What it models
// instead: the per-kernel opt-in attribute for dynamic shared memory (a launch above it fails, as
// on a GPU), and a race check for the shared words that both atomics and plain accesses touch
// (the non-finite codes): an atomic and a plain access of one word by two threads between the same
// two barriers is counted (emu::races).
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <functional>
#include <map>
#include <utility>
#include <vector>

#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint3_ {
  unsigned x = 0, y = 0, z = 0;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

typedef enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
} cudaError_t;
typedef void* cudaStream_t;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct cudaLaunchAttribute;
struct cudaFuncAttributes {
  size_t sharedSizeBytes = 0;
};
struct cudaLaunchConfig_t {
  dim3 gridDim, blockDim;
  size_t dynamicSmemBytes = 0;
  cudaStream_t stream = nullptr;
  cudaLaunchAttribute* attrs = nullptr;
  unsigned numAttrs = 0;
};

namespace emu {
// What the emulated device reports (an H100 by default; tests may change them).
inline int sm_count = 132;
inline int smem_optin = 227 * 1024;
inline int blocks_per_sm = 2;
inline int device_id = 0;          // a new id for every emulated device (emu_set_device)
inline size_t static_smem = 320;    // what cudaFuncGetAttributes reports for every kernel
constexpr int kDefaultDynamicSmem = 48 * 1024;
inline std::map<std::pair<int, const void*>, int> max_dynamic_smem;  // the opt-in attribute
inline long races = 0;              // see the race check below
inline long block_serial = 0;       // blocks run so far
inline unsigned char* dyn_smem = nullptr;  // the kernels' `extern __shared__` array (emulate.cpp)
inline size_t dyn_smem_size = 0;

// Fiber switch: x86-64 System V (callee-saved registers on the stack; no system call, unlike
// swapcontext).  emu_switch(&save_sp, next_sp).
extern "C" void emu_switch(void** save_sp, void* next_sp);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size emu_switch,.-emu_switch
)");

struct Block {
  int n = 0, cur = 0;
  void* sched_sp = nullptr;
  std::vector<void*> sp;
  std::vector<std::vector<char>> stacks;
  std::vector<char> done;
  std::vector<char> wait_kind;  // 0 runnable, 1 block barrier, 2 warp barrier
  std::vector<long> wait_gen;
  long gen = 0;
  int count = 0;
  std::vector<long> wgen;
  std::vector<int> wcount;
  std::vector<std::vector<uint64_t>> xchg;
  std::function<void()> body;
};
inline Block blk;
}  // namespace emu

inline uint3_ threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emu {
inline void yield() {
  const int me = blk.cur;
  emu_switch(&blk.sp[me], blk.sched_sp);
  threadIdx.x = me;
}
inline void barrier_all() {
  const long g = blk.gen;
  if (++blk.count == blk.n) {
    blk.count = 0;
    ++blk.gen;
    return;
  }
  blk.wait_kind[threadIdx.x] = 1;
  blk.wait_gen[threadIdx.x] = g;
  yield();
}
inline void barrier_warp() {
  const int w = threadIdx.x / 32;
  const int width = std::min(32, blk.n - w * 32);
  const long g = blk.wgen[w];
  if (++blk.wcount[w] == width) {
    blk.wcount[w] = 0;
    ++blk.wgen[w];
    return;
  }
  blk.wait_kind[threadIdx.x] = 2;
  blk.wait_gen[threadIdx.x] = g;
  yield();
}
inline bool runnable(int i) {
  switch (blk.wait_kind[i]) {
    case 1: return blk.gen != blk.wait_gen[i];
    case 2: return blk.wgen[i / 32] != blk.wait_gen[i];
    default: return true;
  }
}
[[noreturn]] inline void entry() {
  const int i = blk.cur;
  threadIdx.x = i;
  blk.body();
  blk.done[i] = 1;
  void* dead = nullptr;
  emu_switch(&dead, blk.sched_sp);
  abort();
}
// Runs one block of n fibers, each calling body(); aborts on a deadlock (a barrier never reached).
inline void run_block(int n, std::function<void()> body) {
  ++block_serial;
  blk.n = n;
  blk.body = std::move(body);
  blk.sp.assign(n, nullptr);
  if (blk.stacks.size() < static_cast<size_t>(n)) blk.stacks.resize(n);
  blk.done.assign(n, 0);
  blk.wait_kind.assign(n, 0);
  blk.wait_gen.assign(n, 0);
  blk.gen = 0;
  blk.count = 0;
  blk.wgen.assign((n + 31) / 32, 0);
  blk.wcount.assign((n + 31) / 32, 0);
  blk.xchg.assign((n + 31) / 32, std::vector<uint64_t>(32));
  for (int i = 0; i < n; ++i) {  // initial frame: 6 registers, entry() as return address, a pad
    if (blk.stacks[i].empty()) blk.stacks[i].resize(128 * 1024);
    uintptr_t top = (reinterpret_cast<uintptr_t>(blk.stacks[i].data()) + blk.stacks[i].size()) & ~uintptr_t(15);
    void** f = reinterpret_cast<void**>(top) - 8;
    for (int k = 0; k < 6; ++k) f[k] = nullptr;
    f[6] = reinterpret_cast<void*>(&entry);
    f[7] = nullptr;
    blk.sp[i] = f;
  }
  int left = n;
  while (left > 0) {
    int progressed = 0;
    for (int i = 0; i < n; ++i) {
      if (blk.done[i] || !runnable(i)) continue;
      blk.wait_kind[i] = 0;
      blk.cur = i;
      threadIdx.x = i;
      emu_switch(&blk.sched_sp, blk.sp[i]);
      ++progressed;
      if (blk.done[i]) --left;
    }
    if (progressed == 0) {
      fprintf(stderr, "cuda emulation: deadlock (threads wait at a barrier that others skipped)\n");
      abort();
    }
  }
}
template <class F>
inline void launch(dim3 grid, dim3 block, size_t smem, F&& kernel_call) {
  gridDim = grid;
  blockDim = block;
  for (unsigned b = 0; b < grid.x; ++b) {
    blockIdx.x = b;
    if (smem > dyn_smem_size) abort();
    memset(dyn_smem, 0xA5, smem);  // garbage, as on a GPU
    run_block(static_cast<int>(block.x), kernel_call);
  }
}
}  // namespace emu

// Race check: per shared word, who touched it since the block's last barrier and how.
namespace emu {
struct Touch {
  long block, gen;
  int thread;
  bool atomic, plain;
};
inline std::map<const void*, Touch> touches;
inline void touch(const void* addr, bool atomic) {
  auto it = touches.find(addr);
  const int me = static_cast<int>(threadIdx.x);
  if (it == touches.end() || it->second.block != block_serial || it->second.gen != blk.gen) {
    touches[addr] = Touch{block_serial, blk.gen, me, atomic, !atomic};
    return;
  }
  Touch& t = it->second;
  const bool other = t.thread != me;
  if (other && ((atomic && t.plain) || (!atomic && t.atomic))) ++races;
  if (other) t.thread = -1;  // several threads
  t.atomic |= atomic;
  t.plain |= !atomic;
}
}  // namespace emu
#define FDA_SHARED_PLAIN_ACCESS(ptr) emu::touch(ptr, false)

inline void __syncthreads() { emu::barrier_all(); }

template <class T>
inline T __shfl_down_sync(unsigned, T v, int off) {
  static_assert(sizeof(T) <= 8, "");
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint64_t bits = 0;
  memcpy(&bits, &v, sizeof(T));
  emu::blk.xchg[w][lane] = bits;
  emu::barrier_warp();
  T r = v;
  if (lane + off < 32) memcpy(&r, &emu::blk.xchg[w][lane + off], sizeof(T));
  emu::barrier_warp();
  return r;
}
inline int __any_sync(unsigned, int pred) {
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  emu::blk.xchg[w][lane] = pred != 0;
  emu::barrier_warp();
  int any = 0;
  for (int k = 0; k < 32; ++k) any |= static_cast<int>(emu::blk.xchg[w][k]);
  emu::barrier_warp();
  return any;
}
template <class T>
inline T __ldg(const T* p) { return *p; }
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((uint64_t(a) * b) >> 32); }
inline double __fma_rn(double a, double b, double c) { return ::fma(a, b, c); }
inline int __float2int_rn(float x) { return static_cast<int>(nearbyintf(x)); }
template <class T>
inline T atomicAdd(T* p, T v) {  // one OS thread: no concurrency
  const T old = *p;
  *p = old + v;
  return old;
}
template <class T>
inline T atomicOr(T* p, T v) {
  emu::touch(p, true);
  const T old = *p;
  *p = old | v;
  return old;
}
template <class T>
inline T min(T a, T b) { return b < a ? b : a; }

inline cudaError_t cudaGetDevice(int* d) {
  *d = emu::device_id;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  *v = a == cudaDevAttrMultiProcessorCount ? emu::sm_count : emu::smem_optin;
  return cudaSuccess;
}
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, const void*) {
  a->sharedSizeBytes = emu::static_smem;
  return cudaSuccess;
}
inline cudaError_t cudaFuncSetAttribute(const void* kern, cudaFuncAttribute, int v) {
  if (v < 0 || static_cast<size_t>(v) + emu::static_smem > static_cast<size_t>(emu::smem_optin))
    return cudaErrorInvalidValue;
  emu::max_dynamic_smem[{emu::device_id, kern}] = v;
  return cudaSuccess;
}
namespace emu {
inline int dynamic_smem_limit(const void* kern) {
  auto it = max_dynamic_smem.find({device_id, kern});
  return it == max_dynamic_smem.end() ? kDefaultDynamicSmem : it->second;
}
}  // namespace emu
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void*, int, size_t smem) {
  *n = smem + emu::static_smem <= static_cast<size_t>(emu::smem_optin) ? emu::blocks_per_sm : 0;
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  memset(p, v, n);
  return cudaSuccess;
}
inline const char* cudaGetErrorString(cudaError_t) { return "emulated CUDA error"; }
template <class... Exp, class... Act>
inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* cfg, void (*kernel)(Exp...), Act&&... args) {
  const void* kern = reinterpret_cast<const void*>(kernel);
  if (cfg->dynamicSmemBytes > static_cast<size_t>(emu::dynamic_smem_limit(kern))) return cudaErrorInvalidValue;
  emu::launch(cfg->gridDim, cfg->blockDim, cfg->dynamicSmemBytes, [&] { kernel(args...); });
  return cudaSuccess;
}
