// output.cu: the output layer, row-wise: activations, and the delta fused with the loss.
//
//   output_forward_<out>_<f32|f64>(Z, A, m, n):            A = out(Z) row-wise
//   output_delta_<out>_<loss>_<f32|f64>(Z, Y, A, D, rows, m, n):
//       A = out(Z);  D = dL/dZ with L the mean loss over the batch (D carries the 1/m);
//       rows[2 r] = sample r's loss, rows[2 r + 1] = 1 if sample r is classified right, else 0
//   dense_output_delta_<out>_<loss>_<f32|f64>(A_prev, W, b, Z, Y, A, D, rows, m, k, n):
//       the last layer's Z = A_prev @ W + b (A_prev: (m, k), W: (k, n)) and output_delta in one
//       kernel, for n <= TILE_N; grid (ceil(m / TILE_M), 1), block GEMM_THREADS
//   row_stats_reduce(rows, m, stats):                       stats[0] += sum of losses,
//                                                           stats[1] += number right
//   Z, Y, A, D: (m, n) row-major; rows: (m, 2) float64; stats: (2,) float64.
//
// Per sample (z a row of Z, y of Y, a of A):
//   softmax + cross_entropy  loss = -sum y (z - max z) + log(sum e^(z - max z)) sum y;  dL/dz = a - y
//   softmax + mse            loss = 1/2 |a - y|^2;  dL/dz = a * (g - <a, g>), g = a - y
//   sigmoid + cross_entropy  loss = sum softplus(z) - y z;  dL/dz = a - y
//   sigmoid + mse            loss = 1/2 |a - y|^2;  dL/dz = (a - y) a (1 - a)
//   identity + mse           loss = 1/2 |a - y|^2;  dL/dz = a - y
// Right: softmax, the first argmax of a equals the first argmax of y; sigmoid, every a_j is on
// y_j's side of 1/2; identity (regression) counts none.
//
// Launch: the row kernels take one thread per row, grid ceil(m / ROW_THREADS); the reduction is
// one block of REDUCE_THREADS threads summing in a fixed order, so stats are bit-for-bit
// reproducible run to run.
#include "activations.cuh"
#include "gemm.cuh"

enum Out { OUT_SOFTMAX = 0, OUT_SIGMOID = 1, OUT_IDENTITY = 2 };
enum Loss { LOSS_CROSS_ENTROPY = 0, LOSS_MSE = 1 };

#define BPGPU_OUTPUTS(X) X(softmax, OUT_SOFTMAX) X(sigmoid, OUT_SIGMOID) X(identity, OUT_IDENTITY)
// X(output name, output, loss name, loss): the pairs of bpgpu/functions.py COMBINATIONS
#define BPGPU_OUTPUT_LOSSES(X)                               \
  X(softmax, OUT_SOFTMAX, cross_entropy, LOSS_CROSS_ENTROPY) \
  X(softmax, OUT_SOFTMAX, mse, LOSS_MSE)                     \
  X(sigmoid, OUT_SIGMOID, cross_entropy, LOSS_CROSS_ENTROPY) \
  X(sigmoid, OUT_SIGMOID, mse, LOSS_MSE)                     \
  X(identity, OUT_IDENTITY, mse, LOSS_MSE)

// Row r of A = out(z); returns the softmax's row max and sum of e^(z - max) through mx, s.
template <class T, int O>
__device__ __forceinline__ void output_row(const T* z, T* a, int n, T& mx, T& s) {
  mx = T(0);
  s = T(1);
  if (O == OUT_SOFTMAX) {
    mx = z[0];
    for (int j = 1; j < n; ++j) mx = z[j] > mx ? z[j] : mx;
    s = T(0);
    for (int j = 0; j < n; ++j) s += bp_exp(z[j] - mx);
    const T inv = T(1) / s;
    for (int j = 0; j < n; ++j) a[j] = bp_exp(z[j] - mx) * inv;
  } else {
    for (int j = 0; j < n; ++j) a[j] = O == OUT_SIGMOID ? activate<ACT_SIGMOID>(z[j]) : z[j];
  }
}

template <class T, int O>
__device__ void output_forward(const T* __restrict__ Z, T* __restrict__ A, int m, int n) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= m) return;
  T mx, s;
  output_row<T, O>(Z + (long long)r * n, A + (long long)r * n, n, mx, s);
}

template <class T>
__device__ __forceinline__ int first_argmax(const T* v, int n) {
  int best = 0;
  for (int j = 1; j < n; ++j)
    if (v[j] > v[best]) best = j;
  return best;
}

// Row r's output, delta and per-sample loss and correctness (see the table above).
template <class T, int O, int L>
__device__ __noinline__ void output_delta_row(int r, const T* __restrict__ Z, const T* __restrict__ Y,
                                              T* __restrict__ A, T* __restrict__ D, double* __restrict__ rows, int m,
                                              int n) {
  const long long off = (long long)r * n;
  const T *z = Z + off, *y = Y + off;
  T *a = A + off, *d = D + off;
  const T inv_m = T(1) / T(m);
  T mx, s;
  output_row<T, O>(z, a, n, mx, s);
  double loss = 0.0;
  if (L == LOSS_CROSS_ENTROPY) {
    if (O == OUT_SOFTMAX) {
      T ysum = T(0);
      for (int j = 0; j < n; ++j) {
        loss -= (double)(y[j] * (z[j] - mx));
        ysum += y[j];
      }
      loss += (double)(bp_log(s) * ysum);
    } else {  // sigmoid: softplus(z) - y z, softplus(z) = max(z, 0) + log1p(e^-|z|)
      for (int j = 0; j < n; ++j) {
        const T zj = z[j], abs_z = zj < T(0) ? -zj : zj;
        loss += (double)((zj > T(0) ? zj : T(0)) + bp_log1p(bp_exp(-abs_z)) - y[j] * zj);
      }
    }
    for (int j = 0; j < n; ++j) d[j] = (a[j] - y[j]) * inv_m;
  } else {
    T dot = T(0);  // <a, g> for the softmax Jacobian
    for (int j = 0; j < n; ++j) {
      const T g = a[j] - y[j];
      loss += 0.5 * (double)(g * g);
      dot += a[j] * g;
    }
    for (int j = 0; j < n; ++j) {
      const T g = a[j] - y[j];
      T dz = g;
      if (O == OUT_SIGMOID) dz = g * derivative<ACT_SIGMOID>(a[j]);
      if (O == OUT_SOFTMAX) dz = a[j] * (g - dot);
      d[j] = dz * inv_m;
    }
  }
  double right = 0.0;
  if (O == OUT_SOFTMAX) {
    right = first_argmax(a, n) == first_argmax(y, n) ? 1.0 : 0.0;
  } else if (O == OUT_SIGMOID) {
    right = 1.0;
    for (int j = 0; j < n; ++j)
      if ((a[j] > T(0.5)) != (y[j] > T(0.5))) right = 0.0;
  }
  rows[2 * (long long)r] = loss;
  rows[2 * (long long)r + 1] = right;
}

template <class T, int O, int L>
__device__ void output_delta(const T* __restrict__ Z, const T* __restrict__ Y, T* __restrict__ A, T* __restrict__ D,
                             double* __restrict__ rows, int m, int n) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r < m) output_delta_row<T, O, L>(r, Z, Y, A, D, rows, m, n);
}

// The last layer's forward and output_delta in one kernel, for n <= TILE_N: a GEMM block then
// owns whole rows. Z = A_prev @ W + b is written, the block synchronises (its global writes are
// then visible to it), and thread i finishes row row0 + i as output_delta does.
template <class T, int O, int L>
__device__ void dense_output_delta(const T* __restrict__ A_prev, const T* __restrict__ W, const T* __restrict__ b,
                                   T* __restrict__ Z, const T* __restrict__ Y, T* __restrict__ A, T* __restrict__ D,
                                   double* __restrict__ rows, int m, int k, int n) {
  const int row0 = block_row0();
  T acc[THREAD_M][THREAD_N], unused[THREAD_N];
  gemm_tile<T, false, false>(A_prev, k, W, n, m, n, 0, k, row0, 0, acc, unused, false);
  T bias[THREAD_N];
  load_tile_bias(b, 0, n, bias);
  for_each_output(acc, row0, 0, m, n, [&](long long e, int j, T v) { Z[e] = v + bias[j]; });
  __syncthreads();
  const int r = row0 + (int)threadIdx.x;
  if (threadIdx.x < TILE_M && r < m) output_delta_row<T, O, L>(r, Z, Y, A, D, rows, m, n);
}

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
    row_stats_reduce(const double* rows, int m, double* stats) {
  __shared__ double part[2][REDUCE_THREADS];
  const int t = threadIdx.x;
  double loss = 0.0, right = 0.0;
  for (int r = t; r < m; r += REDUCE_THREADS) {
    loss += rows[2 * (long long)r];
    right += rows[2 * (long long)r + 1];
  }
  part[0][t] = loss;
  part[1][t] = right;
  __syncthreads();
  for (int half = REDUCE_THREADS / 2; half > 0; half /= 2) {
    if (t < half) {
      part[0][t] += part[0][t + half];
      part[1][t] += part[1][t + half];
    }
    __syncthreads();
  }
  if (t == 0) {
    stats[0] += part[0][0];
    stats[1] += part[1][0];
  }
}
BPGPU_REGISTER(row_stats_reduce)

#define OUTPUT_FORWARD_ENTRY(T, SUF, NAME, O)                         \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)           \
      output_forward_##NAME##_##SUF(const T* Z, T* A, int m, int n) { \
    output_forward<T, O>(Z, A, m, n);                                 \
  }                                                                   \
  BPGPU_REGISTER(output_forward_##NAME##_##SUF)
#define OUTPUT_FORWARD_F32(NAME, O) OUTPUT_FORWARD_ENTRY(float, f32, NAME, O)
#define OUTPUT_FORWARD_F64(NAME, O) OUTPUT_FORWARD_ENTRY(double, f64, NAME, O)
BPGPU_OUTPUTS(OUTPUT_FORWARD_F32)
BPGPU_OUTPUTS(OUTPUT_FORWARD_F64)

#define OUTPUT_DELTA_ENTRY(T, SUF, ONAME, O, LNAME, L)                                                            \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)                                                       \
      output_delta_##ONAME##_##LNAME##_##SUF(const T* Z, const T* Y, T* A, T* D, double* rows, int m, int n) {    \
    output_delta<T, O, L>(Z, Y, A, D, rows, m, n);                                                                \
  }                                                                                                               \
  BPGPU_REGISTER(output_delta_##ONAME##_##LNAME##_##SUF)                                                          \
  extern "C" __global__ void __launch_bounds__(GEMM_THREADS) dense_output_delta_##ONAME##_##LNAME##_##SUF(        \
      const T* A_prev, const T* W, const T* b, T* Z, const T* Y, T* A, T* D, double* rows, int m, int k, int n) { \
    dense_output_delta<T, O, L>(A_prev, W, b, Z, Y, A, D, rows, m, k, n);                                         \
  }                                                                                                               \
  BPGPU_REGISTER(dense_output_delta_##ONAME##_##LNAME##_##SUF)
#define OUTPUT_DELTA_F32(ON, O, LN, L) OUTPUT_DELTA_ENTRY(float, f32, ON, O, LN, L)
#define OUTPUT_DELTA_F64(ON, O, LN, L) OUTPUT_DELTA_ENTRY(double, f64, ON, O, LN, L)
BPGPU_OUTPUT_LOSSES(OUTPUT_DELTA_F32)
BPGPU_OUTPUT_LOSSES(OUTPUT_DELTA_F64)
