// dense_forward.cu: one layer's forward pass, a tiled GEMM with a bias + activation epilogue.
//
//   out = f(X @ W + b)      X: (m, k)  W: (k, n)  b: (n,)  out: (m, n), all row-major
//
// Launch: grid (ceil(m / TILE_M), ceil(n / TILE_N)), block GEMM_THREADS (256 by default); each
// thread keeps a THREAD_M x THREAD_N register block (gemm.cuh). Any m, k, n >= 1.
// Entry points: dense_forward_<activation>_<f32|f64>(X, W, b, out, m, k, n).
#include "activations.cuh"
#include "gemm.cuh"

template <class T, int A>
__device__ void dense_forward(const T* __restrict__ X, const T* __restrict__ W, const T* __restrict__ b,
                              T* __restrict__ out, int m, int k, int n) {
  const int row0 = block_row0(), col0 = block_col0();
  T acc[THREAD_M][THREAD_N], unused[THREAD_N];
  gemm_tile<T, false, false>(X, k, W, n, m, n, 0, k, row0, col0, acc, unused, false);
  T bias[THREAD_N];
  load_tile_bias(b, col0, n, bias);
  for_each_output(acc, row0, col0, m, n, [&](long long e, int j, T v) { out[e] = activate<A>(v + bias[j]); });
}

#define DENSE_FORWARD_ENTRY(T, SUF, NAME, A)                                                          \
  extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                          \
      dense_forward_##NAME##_##SUF(const T* X, const T* W, const T* b, T* out, int m, int k, int n) { \
    dense_forward<T, A>(X, W, b, out, m, k, n);                                                       \
  }                                                                                                   \
  BPGPU_REGISTER(dense_forward_##NAME##_##SUF)
#define DENSE_FORWARD_F32(NAME, A) DENSE_FORWARD_ENTRY(float, f32, NAME, A)
#define DENSE_FORWARD_F64(NAME, A) DENSE_FORWARD_ENTRY(double, f64, NAME, A)
BPGPU_ACTIVATIONS(DENSE_FORWARD_F32)
BPGPU_ACTIVATIONS(DENSE_FORWARD_F64)
