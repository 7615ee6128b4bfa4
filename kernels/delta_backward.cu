// delta_backward.cu: the delta of the previous layer, a GEMM against W transposed with the
// activation derivative in the epilogue.
//
//   out = (D @ W^T) * f'(A_prev)    D: (m, n)  W: (k, n)  A_prev: (m, k)  out: (m, k), row-major
//
// W^T is read in place (op(B)[j, c] = W[c * n + j]); no transpose is materialised.
// Launch: grid (ceil(m / TILE_M), ceil(k / TILE_N)), block GEMM_THREADS. Any m, k, n >= 1.
// Entry points: delta_backward_<activation>_<f32|f64>(D, W, A_prev, out, m, k, n), the activation
// being that of the layer which produced A_prev.
#include "activations.cuh"
#include "gemm.cuh"

template <class T, int A>
__device__ void delta_backward(const T* __restrict__ D, const T* __restrict__ W, const T* __restrict__ A_prev,
                               T* __restrict__ out, int m, int k, int n) {
  const int row0 = block_row0(), col0 = block_col0();
  T acc[THREAD_M][THREAD_N], unused[THREAD_N];
  gemm_tile<T, false, true>(D, n, W, n, m, k, 0, n, row0, col0, acc, unused, false);
  for_each_output(acc, row0, col0, m, k, [&](long long e, int, T v) { out[e] = v * derivative<A>(A_prev[e]); });
}

#define DELTA_BACKWARD_ENTRY(T, SUF, NAME, A)                                                               \
  extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                                \
      delta_backward_##NAME##_##SUF(const T* D, const T* W, const T* A_prev, T* out, int m, int k, int n) { \
    delta_backward<T, A>(D, W, A_prev, out, m, k, n);                                                       \
  }                                                                                                         \
  BPGPU_REGISTER(delta_backward_##NAME##_##SUF)
#define DELTA_BACKWARD_F32(NAME, A) DELTA_BACKWARD_ENTRY(float, f32, NAME, A)
#define DELTA_BACKWARD_F64(NAME, A) DELTA_BACKWARD_ENTRY(double, f64, NAME, A)
BPGPU_ACTIVATIONS(DELTA_BACKWARD_F32)
BPGPU_ACTIVATIONS(DELTA_BACKWARD_F64)
