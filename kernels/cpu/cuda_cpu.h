// cuda_cpu.h: the CUDA built-ins the kernels use, for running kernels/*.cu on the CPU as C++.
//
// Force-included (g++ -include) in front of every kernels/*.cu, so the sources stay untouched.
// The threads of a block run as ucontext fibers on one OS thread; __syncthreads() switches back
// to the scheduler of launch.cpp, which resumes every waiting fiber once per round, so each
// barrier is reached by all threads before any passes it. The scheduler can take the threads of
// a round, and the blocks of a grid, in several orders (ascending, descending, seeded random),
// and checks that every thread reaches the same __syncthreads() call site (synccheck).
//
// __shared__ is thread_local static storage: one instance per OS thread, so the fibers of the
// block being run share it, and the storage of every __shared__ array of the library is one
// block (this library's TLS segment) that the launcher finds, poisons before each block and, in
// the instrumented build, watches. The instrumented build compiles the kernels with
// -fsanitize=thread for its instrumentation only: every load and store calls a __tsan_* hook,
// which launch.cpp defines (no ThreadSanitizer runtime is linked) to check shared-memory races
// and uninitialised reads (racecheck, initcheck), global-memory writers (racecheck) and bounds
// (memcheck). Each entry point registers itself (BPGPU_REGISTER) so bpgpu_cpu_launch can call it
// by name with cuLaunchKernel-style arguments. The backend "cuda-emulated"
// (bpgpu/backends/cuda_emulated.py) builds and drives it: it checks the kernels' arithmetic,
// indexing, tails, barriers and hazards, not their speed.
#pragma once
#define BPGPU_CPU 1

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cstddef>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
// set by the scheduler before it resumes a thread
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __shared__ static thread_local
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
  std::vector<size_t> arg_sizes;  // sizeof each parameter: the cells args[i] points at
};
// every registered entry point by name (launch.cpp)
std::map<std::string, Entry>& registry();
// the barrier of the running block: the calling thread waits at call site file:line (launch.cpp)
void barrier(const char* file, int line);

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
  registry()[name] = Entry{reinterpret_cast<void*>(f), &invoke<P...>, {sizeof(P)...}};
  return 0;
}

}  // namespace bpgpu_cpu

// The default arguments are evaluated at the call site: each barrier knows its source line.
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  bpgpu_cpu::barrier(file, line);
}

#define BPGPU_REGISTER(name) static const int bpgpu_registered_##name = bpgpu_cpu::register_kernel(#name, &name);
