// optimizers.cuh: the optimizer step applied in the weight-gradient epilogue, one element at a time.
//
// For a parameter p with gradient g (weights: g += wd * p first; biases get no decay):
//   store     p = g                                  (weight_gradient: plain dW / db output)
//   sgd       p -= lr g
//   momentum  v = mu v + g;  p -= lr v
//   nesterov  v = mu v + g;  p -= lr (g + mu v)
//   rmsprop   s = rho s + (1 - rho) g^2;  p -= lr g / (sqrt(s) + eps)
//   adam      m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//             p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// (bpgpu/optimizers.py, PyTorch's conventions.) h1 is mu, rho or b1; h2 is b2. Adam's t is read
// from device memory (*step, the update count including this one) so a captured CUDA graph
// replays with the current count; the host writes it before each step.
#pragma once
#include "common.cuh"

enum Opt { OPT_STORE = 0, OPT_SGD = 1, OPT_MOMENTUM = 2, OPT_NESTEROV = 3, OPT_RMSPROP = 4, OPT_ADAM = 5 };

// X(name, enum value)
#define BPGPU_OPTIMIZERS(X) \
  X(store, OPT_STORE)       \
  X(sgd, OPT_SGD)           \
  X(momentum, OPT_MOMENTUM) \
  X(nesterov, OPT_NESTEROV) \
  X(rmsprop, OPT_RMSPROP)   \
  X(adam, OPT_ADAM)

template <class T>
struct OptArgs {
  T lr, wd, h1, h2, eps, c1, c2;  // c1 = lr / (1 - b1^t), c2 = 1 / sqrt(1 - b2^t) for Adam
};

template <class T, int O>
__device__ __forceinline__ OptArgs<T> opt_args(const int* step, double lr, double wd, double h1, double h2,
                                               double eps) {
  OptArgs<T> o;
  o.lr = T(lr); o.wd = T(wd); o.h1 = T(h1); o.h2 = T(h2); o.eps = T(eps);
  o.c1 = T(0); o.c2 = T(0);
  if (O == OPT_ADAM) {
    const double t = (double)*step;
    o.c1 = T(lr / (1.0 - pow(h1, t)));
    o.c2 = T(1.0 / sqrt(1.0 - pow(h2, t)));
  }
  return o;
}

// P[e] <- step(P[e], g); s1, s2 are the parameter's slot arrays (unused ones may be null).
template <class T, int O>
__device__ __forceinline__ void opt_apply(T* P, long long e, T g, T* s1, T* s2, const OptArgs<T>& o) {
  switch (O) {
    case OPT_STORE: P[e] = g; break;
    case OPT_SGD: P[e] -= o.lr * g; break;
    case OPT_MOMENTUM: {
      const T v = o.h1 * s1[e] + g;
      s1[e] = v;
      P[e] -= o.lr * v;
      break;
    }
    case OPT_NESTEROV: {
      const T v = o.h1 * s1[e] + g;
      s1[e] = v;
      P[e] -= o.lr * (g + o.h1 * v);
      break;
    }
    case OPT_RMSPROP: {
      const T s = o.h1 * s1[e] + (T(1) - o.h1) * (g * g);
      s1[e] = s;
      P[e] -= o.lr * g / (bp_sqrt(s) + o.eps);
      break;
    }
    case OPT_ADAM: {
      const T m = o.h1 * s1[e] + (T(1) - o.h1) * g;
      const T v = o.h2 * s2[e] + (T(1) - o.h2) * (g * g);
      s1[e] = m;
      s2[e] = v;
      P[e] -= o.c1 * m / (bp_sqrt(v) * o.c2 + o.eps);
      break;
    }
  }
}

// A weight element: decay first (not for the plain gradient store).
template <class T, int O>
__device__ __forceinline__ void opt_apply_weight(T* W, long long e, T g, T* s1, T* s2, const OptArgs<T>& o) {
  if (O != OPT_STORE) g += o.wd * W[e];
  opt_apply<T, O>(W, e, g, s1, s2, o);
}
