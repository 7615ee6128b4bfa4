// common.cuh: tunables, portable math and the registration hook shared by every kernel family.
//
// No standard-library headers: nvcc, NVRTC and the CPU emulation (kernels/cpu/) compile the same
// text. The CPU build defines BPGPU_CPU and supplies the CUDA built-ins itself.
#pragma once

// ---- tunables (override with -DNAME=value from the loader or CMake) -------------------------
#ifndef TILE_M
#define TILE_M 64  // output rows per GEMM block
#endif
#ifndef TILE_N
#define TILE_N 64  // output columns per GEMM block
#endif
#ifndef TILE_K
#define TILE_K 16  // inner-dimension slice held in shared memory
#endif
#ifndef THREAD_M
#define THREAD_M 4  // register block: rows per thread
#endif
#ifndef THREAD_N
#define THREAD_N 4  // register block: columns per thread
#endif
#ifndef ROW_THREADS
#define ROW_THREADS 128  // threads per block of the row kernels (one thread per row)
#endif
#ifndef REDUCE_THREADS
#define REDUCE_THREADS 256  // threads of the single-block deterministic reductions
#endif
#ifndef ELEMENT_THREADS
#define ELEMENT_THREADS 256  // threads per block of the elementwise kernels
#endif

#define GEMM_THREADS_N (TILE_N / THREAD_N)
#define GEMM_THREADS_M (TILE_M / THREAD_M)
#define GEMM_THREADS (GEMM_THREADS_M * GEMM_THREADS_N)

#ifndef BPGPU_CPU
// The CPU emulation registers every entry point in a table; on the GPU the driver does that.
#define BPGPU_REGISTER(name)
#endif

// ---- math overloaded on float / double ------------------------------------------------------
__device__ __forceinline__ float bp_exp(float x) { return expf(x); }
__device__ __forceinline__ double bp_exp(double x) { return exp(x); }
__device__ __forceinline__ float bp_log(float x) { return logf(x); }
__device__ __forceinline__ double bp_log(double x) { return log(x); }
__device__ __forceinline__ float bp_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double bp_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float bp_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double bp_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float bp_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double bp_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float bp_nan(float) { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ double bp_nan(double) { return __longlong_as_double(0x7ff8000000000000LL); }

// Entry points exist for float (f32) and double (f64); X(T, suffix).
#define BPGPU_TYPES(X) X(float, f32) X(double, f64)
