// optimizers.cuh: the optimizer step applied in the weight-gradient epilogue, one element at a time.
//
// Each rule reads OPT_SCALARS doubles from device memory, written by the host before every step
// (bpgpu/optimizers.py, Optimizer.kernel_scalars), so a captured CUDA graph replays with the
// numbers of the current update: s[0] = lr, s[1] = weight decay, then the rule's own. For a
// parameter p with gradient g (weights: g += wd p first; biases get no decay):
//   store    p = g                                        (weight_gradient: plain dW / db output)
//   sgd      s[2] = mu, s[3] = nesterov (0 or 1):
//            v = mu v + g;  p -= lr (g + mu v) if nesterov, lr v if mu > 0, else lr g
//   rmsprop  s[2] = rho, s[3] = eps:  s = rho s + (1 - rho) g^2;  p -= lr g / (sqrt(s) + eps)
//   adam     s[2] = b1, s[3] = b2, s[4] = eps, s[5] = lr / (1 - b1^t), s[6] = 1 / sqrt(1 - b2^t):
//            m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p -= s[5] m / (sqrt(v) s[6] + eps)
// PyTorch's conventions. The enum values are the optimizer classes' ``code``; adding a rule adds
// its enum value, its BPGPU_OPTIMIZERS row and its case below.
#pragma once
#include "common.cuh"

#define OPT_SCALARS 8

enum Opt { OPT_STORE = 0, OPT_SGD = 1, OPT_RMSPROP = 2, OPT_ADAM = 3 };

// X(name, enum value)
#define BPGPU_OPTIMIZERS(X) \
  X(store, OPT_STORE)       \
  X(sgd, OPT_SGD)           \
  X(rmsprop, OPT_RMSPROP)   \
  X(adam, OPT_ADAM)

template <class T>
struct OptArgs {
  T s[OPT_SCALARS];
};

template <class T>
__device__ __forceinline__ OptArgs<T> opt_args(const double* __restrict__ scalars) {
  OptArgs<T> o;
#pragma unroll
  for (int i = 0; i < OPT_SCALARS; ++i) o.s[i] = T(scalars[i]);
  return o;
}

// P[e] <- step(P[e], g); s1, s2 are the parameter's slot arrays (unused ones may be dummies).
template <class T, int O>
__device__ __forceinline__ void opt_apply(T* P, long long e, T g, T* s1, T* s2, const OptArgs<T>& o) {
  const T lr = o.s[0];
  switch (O) {
    case OPT_STORE: P[e] = g; break;
    case OPT_SGD: {
      const T mu = o.s[2];
      T step = g;
      if (mu != T(0)) {
        const T v = mu * s1[e] + g;
        s1[e] = v;
        step = o.s[3] != T(0) ? g + mu * v : v;
      }
      P[e] -= lr * step;
      break;
    }
    case OPT_RMSPROP: {
      const T rho = o.s[2];
      const T s = rho * s1[e] + (T(1) - rho) * (g * g);
      s1[e] = s;
      P[e] -= lr * g / (bp_sqrt(s) + o.s[3]);
      break;
    }
    case OPT_ADAM: {
      const T b1 = o.s[2], b2 = o.s[3];
      const T m = b1 * s1[e] + (T(1) - b1) * g;
      const T v = b2 * s2[e] + (T(1) - b2) * (g * g);
      s1[e] = m;
      s2[e] = v;
      P[e] -= o.s[5] * m / (bp_sqrt(v) * o.s[6] + o.s[4]);
      break;
    }
  }
}

// A weight element: decay first (not for the plain gradient store).
template <class T, int O>
__device__ __forceinline__ void opt_apply_weight(T* W, long long e, T g, T* s1, T* s2, const OptArgs<T>& o) {
  if (O != OPT_STORE) g += o.s[1] * W[e];
  opt_apply<T, O>(W, e, g, s1, s2, o);
}
