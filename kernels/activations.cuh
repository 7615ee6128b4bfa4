// activations.cuh: hidden-layer activations and their derivatives, keyed by an enum.
//
//   sigmoid  f(z) = (1 + tanh(z/2)) / 2     f'(a) = a (1 - a)
//   relu     f(z) = max(z, 0)               f'(a) = [a > 0]
//   tanh     f(z) = tanh z                  f'(a) = 1 - a^2
//   identity f(z) = z                       f'(a) = 1
//
// Derivatives take the stored output a = f(z), so Z is never kept. Adding an activation touches
// this header only: the enum, the two switches and the BPGPU_ACTIVATIONS table, which generates
// every family's entry points (dense_forward_<name>_f32, delta_backward_<name>_f64, ...).
#pragma once
#include "common.cuh"

enum Act { ACT_SIGMOID = 0, ACT_RELU = 1, ACT_TANH = 2, ACT_IDENTITY = 3 };

// X(name, enum value)
#define BPGPU_ACTIVATIONS(X) \
  X(sigmoid, ACT_SIGMOID)    \
  X(relu, ACT_RELU)          \
  X(tanh, ACT_TANH)          \
  X(identity, ACT_IDENTITY)

template <int A, class T>
__device__ __forceinline__ T activate(T z) {
  switch (A) {
    case ACT_SIGMOID: return T(0.5) * (T(1) + bp_tanh(T(0.5) * z));  // no overflow for any z
    case ACT_RELU: return z > T(0) ? z : T(0);
    case ACT_TANH: return bp_tanh(z);
    default: return z;
  }
}

template <int A, class T>
__device__ __forceinline__ T derivative(T a) {
  switch (A) {
    case ACT_SIGMOID: return a * (T(1) - a);
    case ACT_RELU: return a > T(0) ? T(1) : T(0);
    case ACT_TANH: return T(1) - a * a;
    default: return T(1);
  }
}
