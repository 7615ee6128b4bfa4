// launch.cpp: the launcher of the CPU emulation of the kernels (see cuda_cpu.h), called through
// ctypes by bpgpu/backends/cuda_emulated.py. Every kernels/*.cu is compiled as its own C++
// translation unit with cuda_cpu.h force-included, and linked with this file:
//
//   int bpgpu_cpu_launch(const char* name, const unsigned grid[3], const unsigned block[3],
//                        void** args)   -> 0, or -1 for an unknown kernel name
//   int bpgpu_cpu_kernel_count()        -> how many entry points registered themselves
//   const char* bpgpu_cpu_kernel_name(int i)
//
// args[i] points at the i-th kernel argument, as for cuLaunchKernel.
#include "cuda_cpu.h"

namespace {
constexpr size_t kStackBytes = 64 * 1024;
}

extern "C" int bpgpu_cpu_kernel_count() { return (int)bpgpu_cpu::registry().size(); }

extern "C" const char* bpgpu_cpu_kernel_name(int i) {
  auto it = bpgpu_cpu::registry().begin();
  std::advance(it, i);
  return it->first.c_str();
}

extern "C" int bpgpu_cpu_launch(const char* name, const unsigned* grid, const unsigned* block, void** args) {
  using namespace bpgpu_cpu;
  auto found = registry().find(name);
  if (found == registry().end()) return -1;
  running = &found->second;
  running_args = args;
  gridDim = dim3{grid[0], grid[1], grid[2]};
  blockDim = dim3{block[0], block[1], block[2]};
  const size_t threads = (size_t)block[0] * block[1] * block[2];
  std::vector<char> stacks(threads * kStackBytes);
  fibers.assign(threads, ucontext_t{});
  fiber_tid.assign(threads, dim3{});
  fiber_done.assign(threads, 0);
  for (unsigned bz = 0; bz < grid[2]; ++bz)
    for (unsigned by = 0; by < grid[1]; ++by)
      for (unsigned bx = 0; bx < grid[0]; ++bx) {
        blockIdx = dim3{bx, by, bz};
        for (size_t t = 0; t < threads; ++t) {
          getcontext(&fibers[t]);
          fibers[t].uc_stack.ss_sp = stacks.data() + t * kStackBytes;
          fibers[t].uc_stack.ss_size = kStackBytes;
          fibers[t].uc_link = &scheduler;
          makecontext(&fibers[t], fiber_main, 0);
          fiber_tid[t] =
              dim3{unsigned(t % block[0]), unsigned(t / block[0] % block[1]), unsigned(t / block[0] / block[1])};
          fiber_done[t] = 0;
        }
        // one round resumes every unfinished thread once: each runs to its next barrier or end
        for (size_t left = threads; left > 0;) {
          left = 0;
          for (size_t t = 0; t < threads; ++t) {
            if (fiber_done[t]) continue;
            current = (int)t;
            threadIdx = fiber_tid[t];
            swapcontext(&scheduler, &fibers[t]);
            left += !fiber_done[t];
          }
        }
      }
  return 0;
}
