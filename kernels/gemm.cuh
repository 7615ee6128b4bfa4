// gemm.cuh: the shared tiled GEMM main loop of dense_forward, delta_backward and weight_update.
//
//   acc = op(A)[rows, kb:ke] @ op(B)[kb:ke, cols]     op(A): (M, K), op(B): (K, N)
//
// op(A)[r, k] = TA ? A[k * lda + r] : A[r * lda + k];  op(B)[k, c] = TB ? B[c * ldb + k] : B[k * ldb + c].
// A block of GEMM_THREADS threads owns a TILE_M x TILE_N output tile; thread (ty, tx) owns the
// THREAD_M x THREAD_N register block of rows ty + i * GEMM_THREADS_M and columns
// tx + j * GEMM_THREADS_N (strided, so a warp reads consecutive shared-memory words and writes
// consecutive global columns). Each step stages a TILE_K slice of op(A) and op(B) in shared
// memory, loaded so consecutive threads read consecutive global addresses for either layout;
// elements outside the matrix are loaded as zero, so every shape works.
// With colsum, threads of tile row 0 also sum op(B)'s columns (the bias gradient sum_rows D).
#pragma once
#include "common.cuh"

template <class T, bool TA, bool TB>
__device__ __forceinline__ void gemm_tile(const T* __restrict__ A, int lda, const T* __restrict__ B, int ldb, int M,
                                          int N, int kb, int ke, int row0, int col0, T (&acc)[THREAD_M][THREAD_N],
                                          T (&colsum)[THREAD_N], bool want_colsum) {
  __shared__ T As[TILE_K][TILE_M + 1];
  __shared__ T Bs[TILE_K][TILE_N + 1];
  const int tid = threadIdx.x;
  const int tx = tid % GEMM_THREADS_N, ty = tid / GEMM_THREADS_N;
  const bool sum_cols = want_colsum && ty == 0;
  for (int i = 0; i < THREAD_M; ++i)
    for (int j = 0; j < THREAD_N; ++j) acc[i][j] = T(0);
  for (int j = 0; j < THREAD_N; ++j) colsum[j] = T(0);

  for (int k0 = kb; k0 < ke; k0 += TILE_K) {
#pragma unroll
    for (int it = 0; it < (TILE_K * TILE_M + GEMM_THREADS - 1) / GEMM_THREADS; ++it) {
      const int e = tid + it * GEMM_THREADS;
      if (TILE_K * TILE_M % GEMM_THREADS != 0 && e >= TILE_K * TILE_M) break;
      // the fast-moving index follows the contiguous global dimension
      const int kk = TA ? e / TILE_M : e % TILE_K;
      const int r = TA ? e % TILE_M : e / TILE_K;
      const int gr = row0 + r, gk = k0 + kk;
      T v = T(0);
      if (gr < M && gk < ke) v = TA ? A[(long long)gk * lda + gr] : A[(long long)gr * lda + gk];
      As[kk][r] = v;
    }
#pragma unroll
    for (int it = 0; it < (TILE_K * TILE_N + GEMM_THREADS - 1) / GEMM_THREADS; ++it) {
      const int e = tid + it * GEMM_THREADS;
      if (TILE_K * TILE_N % GEMM_THREADS != 0 && e >= TILE_K * TILE_N) break;
      const int kk = TB ? e % TILE_K : e / TILE_N;
      const int c = TB ? e / TILE_K : e % TILE_N;
      const int gc = col0 + c, gk = k0 + kk;
      T v = T(0);
      if (gc < N && gk < ke) v = TB ? B[(long long)gc * ldb + gk] : B[(long long)gk * ldb + gc];
      Bs[kk][c] = v;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TILE_K; ++kk) {
      T a[THREAD_M], b[THREAD_N];
#pragma unroll
      for (int i = 0; i < THREAD_M; ++i) a[i] = As[kk][ty + i * GEMM_THREADS_M];
#pragma unroll
      for (int j = 0; j < THREAD_N; ++j) b[j] = Bs[kk][tx + j * GEMM_THREADS_N];
#pragma unroll
      for (int i = 0; i < THREAD_M; ++i)
#pragma unroll
        for (int j = 0; j < THREAD_N; ++j) acc[i][j] += a[i] * b[j];
      if (sum_cols)
#pragma unroll
        for (int j = 0; j < THREAD_N; ++j) colsum[j] += b[j];
    }
    __syncthreads();
  }
}

// The block's output tile: row tiles on grid.x, which takes 2^31 - 1 blocks, so any batch fits
// (grid.y stops at 65535 tiles); column tiles on grid.y, at most 65535 (cuda_source.tile_grid).
__device__ __forceinline__ int block_row0() { return (int)blockIdx.x * TILE_M; }
__device__ __forceinline__ int block_col0() { return (int)blockIdx.y * TILE_N; }

// Global row / column of a thread's register-block element (i, j).
__device__ __forceinline__ int tile_row(int row0, int i) {
  return row0 + (int)(threadIdx.x / GEMM_THREADS_N) + i * GEMM_THREADS_M;
}
__device__ __forceinline__ int tile_col(int col0, int j) {
  return col0 + (int)(threadIdx.x % GEMM_THREADS_N) + j * GEMM_THREADS_N;
}

// The epilogue walk: f(e, j, acc[i][j]) for each element (r, c) of the thread's register block
// that lies inside the rows x cols output; e = r * cols + c is its row-major offset, j its slot.
template <class T, class F>
__device__ __forceinline__ void for_each_output(const T (&acc)[THREAD_M][THREAD_N], int row0, int col0, int rows,
                                                int cols, F f) {
#pragma unroll
  for (int i = 0; i < THREAD_M; ++i) {
    const int r = tile_row(row0, i);
    if (r >= rows) continue;
#pragma unroll
    for (int j = 0; j < THREAD_N; ++j) {
      const int c = tile_col(col0, j);
      if (c < cols) f((long long)r * cols + c, j, acc[i][j]);
    }
  }
}

// bias[j] = b[tile_col(col0, j)] for the thread's columns inside n, 0 past it.
template <class T>
__device__ __forceinline__ void load_tile_bias(const T* __restrict__ b, int col0, int n, T (&bias)[THREAD_N]) {
#pragma unroll
  for (int j = 0; j < THREAD_N; ++j) {
    const int c = tile_col(col0, j);
    bias[j] = c < n ? b[c] : T(0);
  }
}
