// weight_update.cu: weight and bias gradients with the optimizer step fused in the epilogue.
//
//   dW = A^T @ D     db = sum over rows of D     W, b <- optimizer(W, b, dW, db)  (in place)
//   A: (m, k)  D: (m, n)  W, dW: (k, n)  b, db: (n,), all row-major
//
// Fused path, weight_update_<opt>_<f32|f64>: grid (ceil(k / TILE_M), ceil(n / TILE_N)), block
// GEMM_THREADS. A thread owns its dW register block over the whole batch, so it applies the
// step to W where dW sits, without writing dW. Blocks of tile row 0 also sum D's columns (the
// inner loop already stages them) and update b. A^T is read in place. opt = store writes dW, db
// into W, b instead (weight_gradient).
//
// Split-batch path, for a long batch and a small W (few output tiles to fill the GPU):
//   weight_partial_<f32|f64>: grid (ceil(k / TILE_M), ceil(n / TILE_N), splits); split z sums
//     rows [z * rows_per_split, (z + 1) * rows_per_split) into partW[z] (k, n), partb[z] (n,).
//   weight_finish_<opt>_<f32|f64>: grid ceil((k * n + n) / ELEMENT_THREADS) (capped; grid-stride),
//     ELEMENT_THREADS threads; sums the splits in order z = 0, 1, ... (deterministic: no atomics) and steps.
//
// Optimizer step alone (data-parallel training: the gradient comes from an all-reduce, the step
// follows): weight_finish_<opt> with splits = 1, partW = dW and partb = db as given.
//
// scalars: the optimizer's OPT_SCALARS numbers of this update in device memory (optimizers.cuh).
#include "gemm.cuh"
#include "optimizers.cuh"

template <class T, int O>
__device__ void weight_update(const T* __restrict__ A, const T* __restrict__ D, T* W, T* b, T* sW1, T* sW2, T* sb1,
                              T* sb2, const OptArgs<T>& o, int m, int k, int n) {
  const int row0 = block_row0(), col0 = block_col0();
  const bool bias_block = row0 == 0;
  T acc[THREAD_M][THREAD_N], colsum[THREAD_N];
  gemm_tile<T, true, false>(A, k, D, n, k, n, 0, m, row0, col0, acc, colsum, bias_block);
  for_each_output(acc, row0, col0, k, n, [&](long long e, int, T g) { opt_apply_weight<T, O>(W, e, g, sW1, sW2, o); });
  if (bias_block && threadIdx.x < GEMM_THREADS_N) {
#pragma unroll
    for (int j = 0; j < THREAD_N; ++j) {
      const int c = tile_col(col0, j);
      if (c < n) opt_apply<T, O>(b, c, colsum[j], sb1, sb2, o);
    }
  }
}

template <class T>
__device__ void weight_partial(const T* __restrict__ A, const T* __restrict__ D, T* __restrict__ partW,
                               T* __restrict__ partb, int m, int k, int n, int rows_per_split) {
  const int row0 = block_row0(), col0 = block_col0();
  const int z = blockIdx.z;
  const int kb = z * rows_per_split;
  const int ke = kb + rows_per_split < m ? kb + rows_per_split : m;
  const bool bias_block = row0 == 0;
  T acc[THREAD_M][THREAD_N], colsum[THREAD_N];
  gemm_tile<T, true, false>(A, k, D, n, k, n, kb, ke, row0, col0, acc, colsum, bias_block);
  T* Wz = partW + (long long)z * k * n;
  for_each_output(acc, row0, col0, k, n, [&](long long e, int, T g) { Wz[e] = g; });
  if (bias_block && threadIdx.x < GEMM_THREADS_N) {
#pragma unroll
    for (int j = 0; j < THREAD_N; ++j) {
      const int c = tile_col(col0, j);
      if (c < n) partb[(long long)z * n + c] = colsum[j];
    }
  }
}

template <class T, int O>
__device__ void weight_finish(const T* __restrict__ partW, const T* __restrict__ partb, int splits, T* W, T* b, T* sW1,
                              T* sW2, T* sb1, T* sb2, const OptArgs<T>& o, int k, int n) {
  const long long kn = (long long)k * n;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < kn + n; e += stride) {
    // element e of W (e < k n) or of b: its partial sums in split order, then its update
    const bool weight = e < kn;
    const long long i = weight ? e : e - kn, step = weight ? kn : n;
    const T* part = weight ? partW : partb;
    T g = T(0);
    for (int z = 0; z < splits; ++z) g += part[z * step + i];
    if (weight) {
      opt_apply_weight<T, O>(W, i, g, sW1, sW2, o);
    } else {
      opt_apply<T, O>(b, i, g, sb1, sb2, o);
    }
  }
}

#define WEIGHT_UPDATE_ENTRY(T, SUF, NAME, O)                                                                       \
  extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                                       \
      weight_update_##NAME##_##SUF(const T* A, const T* D, T* W, T* b, T* sW1, T* sW2, T* sb1, T* sb2,             \
                                   const double* scalars, int m, int k, int n) {                                   \
    const OptArgs<T> o = opt_args<T>(scalars);                                                                     \
    weight_update<T, O>(A, D, W, b, sW1, sW2, sb1, sb2, o, m, k, n);                                               \
  }                                                                                                                \
  BPGPU_REGISTER(weight_update_##NAME##_##SUF)                                                                     \
  extern "C" __global__ void __launch_bounds__(ELEMENT_THREADS)                                                    \
      weight_finish_##NAME##_##SUF(const T* partW, const T* partb, int splits, T* W, T* b, T* sW1, T* sW2, T* sb1, \
                                   T* sb2, const double* scalars, int k, int n) {                                  \
    const OptArgs<T> o = opt_args<T>(scalars);                                                                     \
    weight_finish<T, O>(partW, partb, splits, W, b, sW1, sW2, sb1, sb2, o, k, n);                                  \
  }                                                                                                                \
  BPGPU_REGISTER(weight_finish_##NAME##_##SUF)
#define WEIGHT_UPDATE_F32(NAME, O) WEIGHT_UPDATE_ENTRY(float, f32, NAME, O)
#define WEIGHT_UPDATE_F64(NAME, O) WEIGHT_UPDATE_ENTRY(double, f64, NAME, O)
BPGPU_OPTIMIZERS(WEIGHT_UPDATE_F32)
BPGPU_OPTIMIZERS(WEIGHT_UPDATE_F64)

#define WEIGHT_PARTIAL_ENTRY(T, SUF)                                                                              \
  extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                                      \
      weight_partial_##SUF(const T* A, const T* D, T* partW, T* partb, int m, int k, int n, int rows_per_split) { \
    weight_partial<T>(A, D, partW, partb, m, k, n, rows_per_split);                                               \
  }                                                                                                               \
  BPGPU_REGISTER(weight_partial_##SUF)
BPGPU_TYPES(WEIGHT_PARTIAL_ENTRY)
