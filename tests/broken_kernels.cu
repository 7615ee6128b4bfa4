// broken_kernels.cu: kernels with one deliberate fault each, to prove that the checks of the CPU
// execution of the CUDA C (kernels/cpu) catch them: tests/test_emulation_checks.py runs each with
// broken = 0 (the correct form: passes every check, the same result under every schedule) and
// broken = 1 (caught by the named check, whatever the schedule). Real CUDA: NVRTC compiles this
// file too.
//
// Every kernel: x, out: (n,) float; one thread per element, blocks of at most BROKEN_THREADS.
// A kernel that needs whole blocks says so; the test launches it that way.
#include "common.cuh"

#define BROKEN_THREADS 256

// out[i] = x[i] + x[i - 1] within a block, through shared memory (one whole block).
// Broken (racecheck): no barrier between writing the slots and reading a neighbour's.
extern "C" __global__ void missing_barrier(const float* x, float* out, int n, int broken) {
  __shared__ float s[BROKEN_THREADS];
  const int t = threadIdx.x;
  s[t] = x[t];
  if (!broken) __syncthreads();
  out[t] = s[t] + (t > 0 ? s[t - 1] : 0.0f);
}
BPGPU_REGISTER(missing_barrier)

// out[i] = x[i] after a barrier (whole blocks).
// Broken (synccheck): only threads 0-99 reach the barrier; the others exit meanwhile.
extern "C" __global__ void partial_barrier(const float* x, float* out, int n, int broken) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (!broken || threadIdx.x < 100) __syncthreads();
  out[i] = x[i];
}
BPGPU_REGISTER(partial_barrier)

// out[i] = x[i + 1] within a block, through shared memory (one whole block).
// Broken (synccheck): odd threads wait at another __syncthreads() than even ones, in divergent
// code; a GPU does not pair such barriers up.
extern "C" __global__ void divergent_barrier(const float* x, float* out, int n, int broken) {
  __shared__ float s[BROKEN_THREADS];
  const int t = threadIdx.x;
  s[t] = x[t];
  if (broken && t % 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[t] = s[(t + 1) % blockDim.x];
}
BPGPU_REGISTER(divergent_barrier)

// out[i] = x[i - i % 2]: the even thread of each pair stores its value in a shared slot for both
// (one whole block).
// Broken (racecheck): both threads of a pair write the slot between the same two barriers.
extern "C" __global__ void shared_two_writers(const float* x, float* out, int n, int broken) {
  __shared__ float s[BROKEN_THREADS / 2];
  const int t = threadIdx.x;
  if (broken || t % 2 == 0) s[t / 2] = x[t];
  __syncthreads();
  out[t] = s[t / 2];
}
BPGPU_REGISTER(shared_two_writers)

// out[i] = x[n - 1 - i], reversed through shared memory (one whole block).
// Broken (initcheck): only the first half of the slots is written before all are read.
extern "C" __global__ void uninitialised_read(const float* x, float* out, int n, int broken) {
  __shared__ float s[BROKEN_THREADS];
  const int t = threadIdx.x;
  if (!broken || t < n / 2) s[t] = x[t];
  __syncthreads();
  out[t] = s[n - 1 - t];
}
BPGPU_REGISTER(uninitialised_read)

// out[i] = x[i % blockDim.x]: every block stages x's first blockDim.x values in shared memory
// (whole blocks).
// Broken (initcheck): only block 0 stages them; the others read what it left, as if shared memory
// outlived a block (on a GPU each block has its own).
extern "C" __global__ void shared_from_another_block(const float* x, float* out, int n, int broken) {
  __shared__ float s[BROKEN_THREADS];
  const int t = threadIdx.x;
  if (!broken || blockIdx.x == 0) s[t] = x[t];
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = s[t];
}
BPGPU_REGISTER(shared_from_another_block)

// out[i] = 2 x[i] for i < n, any grid covering n.
// Broken (memcheck): the tail guard is off by one, so thread n writes out[n].
extern "C" __global__ void out_of_bounds_write(const float* x, float* out, int n, int broken) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n + broken) out[i] = i < n ? 2.0f * x[i] : 0.0f;
}
BPGPU_REGISTER(out_of_bounds_write)

// out[i / 2] = x[i] for even i, any grid covering n.
// Broken (racecheck): odd threads write too, so two threads write each out[i / 2].
extern "C" __global__ void global_two_writers(const float* x, float* out, int n, int broken) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n && (broken || i % 2 == 0)) out[i / 2] = x[i];
}
BPGPU_REGISTER(global_two_writers)
