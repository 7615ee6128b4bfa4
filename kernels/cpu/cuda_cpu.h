// cuda_cpu.h: the CUDA built-ins the kernels use, for running kernels/*.cu on the CPU as C++.
//
// Force-included (g++ -include) in front of every kernels/*.cu, so the sources stay untouched.
// Blocks run one after another; the threads of a block run as ucontext fibers on one OS thread,
// and __syncthreads() switches back to a scheduler that resumes every fiber once per round, so
// each barrier is reached by all threads before any passes it. __shared__ becomes static
// storage, shared by the fibers of the block being run. Each entry point registers itself
// (BPGPU_REGISTER) so bpgpu_cpu_launch (launch.cpp) can call it by name with cuLaunchKernel-style
// arguments. The backend "cuda-emulated" (bpgpu/backends/cuda_emulated.py) builds and drives it:
// it checks the kernels' arithmetic, indexing, tails and launch code, not their speed, memory
// model or races.
#pragma once
#define BPGPU_CPU 1

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

#include <cstddef>
#include <iterator>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __shared__ static
#define __launch_bounds__(...)

inline float __int_as_float(int i) {
  float f;
  memcpy(&f, &i, sizeof f);
  return f;
}
inline double __longlong_as_double(long long i) {
  double d;
  memcpy(&d, &i, sizeof d);
  return d;
}

namespace bpgpu_cpu {

using Invoker = void (*)(void* fn, void** args);
struct Entry {
  void* fn;
  Invoker invoke;
};
inline std::map<std::string, Entry>& registry() {
  static std::map<std::string, Entry> table;
  return table;
}

template <class... P, size_t... I>
void invoke_with(void (*f)(P...), void** args, std::index_sequence<I...>) {
  f(*static_cast<std::remove_reference_t<P>*>(args[I])...);
}
template <class... P>
void invoke(void* fn, void** args) {
  invoke_with(reinterpret_cast<void (*)(P...)>(fn), args, std::index_sequence_for<P...>{});
}
template <class... P>
int register_kernel(const char* name, void (*f)(P...)) {
  registry()[name] = Entry{reinterpret_cast<void*>(f), &invoke<P...>};
  return 0;
}

// ---- fibers -------------------------------------------------------------------------------------
inline ucontext_t scheduler;
inline std::vector<ucontext_t> fibers;
inline std::vector<dim3> fiber_tid;
inline std::vector<char> fiber_done;
inline int current = 0;
inline const Entry* running = nullptr;
inline void** running_args = nullptr;

inline void fiber_main() {
  running->invoke(running->fn, running_args);
  fiber_done[current] = 1;
}

}  // namespace bpgpu_cpu

inline void __syncthreads() {
  using namespace bpgpu_cpu;
  swapcontext(&fibers[current], &scheduler);
}

#define BPGPU_REGISTER(name) static const int bpgpu_registered_##name = bpgpu_cpu::register_kernel(#name, &name);
