// gather.cu: rows of a matrix picked by an index, the minibatch gather.
//
//   out[i, :] = src[index[i], :]    src: (src_rows, n)  index: (rows,) int64  out: (rows, n)
//
// An index outside [0, src_rows) yields a row of NaN rather than a read out of bounds.
// Launch: grid ceil(rows * n / ELEMENT_THREADS) (capped; grid-stride loop), ELEMENT_THREADS.
// Entry points: gather_rows_<f32|f64>(src, index, out, rows, n, src_rows).
#include "common.cuh"

template <class T>
__device__ void gather_rows(const T* __restrict__ src, const long long* __restrict__ index, T* __restrict__ out,
                            int rows, int n, int src_rows) {
  const long long total = (long long)rows * n;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
    const long long i = e / n, c = e - i * n;
    const long long s = index[i];
    out[e] = (s >= 0 && s < src_rows) ? src[s * n + c] : bp_nan(T(0));
  }
}

#define GATHER_ENTRY(T, SUF)                                                                           \
  extern "C" __global__ void __launch_bounds__(ELEMENT_THREADS)                                        \
      gather_rows_##SUF(const T* src, const long long* index, T* out, int rows, int n, int src_rows) { \
    gather_rows<T>(src, index, out, rows, n, src_rows);                                                \
  }                                                                                                    \
  BPGPU_REGISTER(gather_rows_##SUF)
BPGPU_TYPES(GATHER_ENTRY)
