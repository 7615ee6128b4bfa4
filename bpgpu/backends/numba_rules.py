"""The elementwise and per-row math of the numba kernels, written once as plain Python, and the
compiled CPU path's functions built from it.

``compile_rules`` compiles them for either of numba's targets: as device functions for the CUDA
kernels of the numba backend (bpgpu/backends/numba_kernels.py), as ``njit`` functions for the
compiled CPU path (bpgpu/backends/numba_cpu.py). The codes are those of the tables
(bpgpu/functions.py, bpgpu/optimizers.py), the same the CUDA C kernels switch on.

Every function is written in the dtype of its arguments: ``one`` is 1 in the arrays' dtype, so
``one - rho`` stays float32 in a float32 model (numba would widen ``1 - rho`` to float64).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numba
from numba import float64

from bpgpu.backends import numba_math
from bpgpu.functions import ACTIVATIONS, LOSSES, OUTPUTS
from bpgpu.optimizers import SGD, Adam, RMSprop

SIGMOID, RELU, TANH = (ACTIVATIONS[a].code for a in ("sigmoid", "relu", "tanh"))
IDENTITY = ACTIVATIONS["identity"].code
SOFTMAX_OUT, SIGMOID_OUT = OUTPUTS["softmax"].code, OUTPUTS["sigmoid"].code
CROSS_ENTROPY, MSE = LOSSES["cross_entropy"].code, LOSSES["mse"].code
SGD_CODE, RMSPROP_CODE, ADAM_CODE = SGD.code, RMSprop.code, Adam.code
#: the leading numbers of Optimizer.kernel_scalars that optimizer_rule reads: lr, wd, h2 ... h6
RULE_SCALARS = 7


def compile_rules(
    jit: Callable[[Callable], Any],
    exp: Callable[[Any], Any] = math.exp,
    tanh: Callable[[Any], Any] = math.tanh,
) -> SimpleNamespace:
    """The rules compiled by ``jit`` (``numba.njit(...)`` for the CPU, ``cuda.jit(device=True)``
    for the GPU), with ``exp`` and ``tanh`` for e^x and tanh x; a rule calls the others through
    the compiled versions."""

    @jit
    def activate(z, code):
        # f(z): sigmoid = (1 + tanh(z/2)) / 2 (no overflow), relu, tanh; identity otherwise
        if code == SIGMOID:
            return 0.5 * (1.0 + tanh(0.5 * z))
        if code == RELU:
            return z if z > 0 else 0.0 * z
        if code == TANH:
            return tanh(z)
        return z

    @jit
    def derivative(a, code):
        # f'(z) from the stored output a = f(z): sigmoid a(1-a), relu [a > 0], tanh 1-a^2,
        # identity 1
        if code == SIGMOID:
            return a * (1.0 - a)
        if code == RELU:
            return 1.0 if a > 0 else 0.0
        if code == TANH:
            return 1.0 - a * a
        return 1.0

    @jit
    def row_output(Z, i, code, out):
        # out[i] = output(Z[i]): softmax p_j = e^(z_j - max z) / sum_k e^(z_k - max z), or f(z_j)
        n = Z.shape[1]
        if code == SOFTMAX_OUT:
            mx = Z[i, 0]
            for j in range(1, n):
                mx = max(mx, Z[i, j])
            s = Z[i, 0] * 0
            for j in range(n):
                e = exp(Z[i, j] - mx)
                out[i, j] = e
                s += e
            for j in range(n):
                out[i, j] = out[i, j] / s
        elif code == SIGMOID_OUT:
            for j in range(n):
                out[i, j] = activate(Z[i, j], SIGMOID)
        else:
            for j in range(n):
                out[i, j] = Z[i, j]

    @jit
    def row_output_delta(Z, Y, i, code, loss, inv_m, A, D):
        # Row i: A = output(Z); D = dL/dZ / m; returns (the sample's loss, 1.0 if right else 0.0):
        #   softmax+CE   L = -sum y_j (z_j - max z) + log(s) sum y_j,       D = p - y
        #   sigmoid+CE   L = sum softplus(z_j) - y_j z_j,                   D = a - y
        #   mse          L = 1/2 sum (a_j - y_j)^2,  D = J^T (a - y): sigmoid (a-y) a (1-a),
        #                softmax p * (g - <p, g>) with g = a - y, identity a - y
        # right: softmax argmax a == argmax y (first maximum); sigmoid every (a > 1/2) == (y > 1/2)
        n = Z.shape[1]
        row_output(Z, i, code, A)
        total = float64(0.0)
        if loss == CROSS_ENTROPY and code == SOFTMAX_OUT:
            mx = Z[i, 0]
            for j in range(1, n):
                mx = max(mx, Z[i, j])
            s = float64(0.0)
            ysum = float64(0.0)
            for j in range(n):
                s += exp(float64(Z[i, j] - mx))
                ysum += Y[i, j]
                total -= Y[i, j] * float64(Z[i, j] - mx)
            total += math.log(s) * ysum
        elif loss == CROSS_ENTROPY:
            for j in range(n):
                z = float64(Z[i, j])
                total += max(z, 0.0) + math.log1p(exp(-abs(z))) - Y[i, j] * z
        dot = float64(0.0)
        for j in range(n):
            g = A[i, j] - Y[i, j]
            if loss == MSE:
                total += 0.5 * float64(g * g)  # the square in the dtype, as NumPy squares it
                dot += A[i, j] * g
            D[i, j] = g
        if loss == MSE:
            for j in range(n):
                if code == SIGMOID_OUT:
                    D[i, j] = D[i, j] * A[i, j] * (1 - A[i, j])
                elif code == SOFTMAX_OUT:
                    D[i, j] = A[i, j] * (D[i, j] - dot)
        for j in range(n):
            D[i, j] = D[i, j] * inv_m
        right = 0.0
        if code == SOFTMAX_OUT:
            ba = 0
            by = 0
            for j in range(1, n):
                if A[i, j] > A[i, ba]:
                    ba = j
                if Y[i, j] > Y[i, by]:
                    by = j
            right = 1.0 if ba == by else 0.0
        elif code == SIGMOID_OUT:
            right = 1.0
            for j in range(n):
                if (A[i, j] > 0.5) != (Y[i, j] > 0.5):
                    right = 0.0
        return total, right

    @jit
    def optimizer_rule(code, p, g, s1, s2, one, lr, wd, h2, h3, h4, h5, h6):
        # One parameter's update from its gradient g; returns (p, s1, s2) after it. g = g + wd p
        # (wd = 0 for biases), then the rule of ``code`` with Optimizer.kernel_scalars' numbers
        # (lr, wd, h2 ...), as kernels/optimizers.cuh:
        #   sgd      h2 = mu, h3 = nesterov: V = mu V + g;  p -= lr (g + mu V | V | g)
        #   rmsprop  h2 = rho, h3 = eps:  S = rho S + (1 - rho) g^2;  p -= lr g / (sqrt(S) + eps)
        #   adam     h2 = b1, h3 = b2, h4 = eps, h5 = lr / (1 - b1^t), h6 = 1 / sqrt(1 - b2^t):
        #            M = b1 M + (1 - b1) g;  V = b2 V + (1 - b2) g^2;
        #            p -= h5 M / (sqrt(V) h6 + eps)
        g = g + wd * p
        if code == SGD_CODE:
            step = g
            if h2 > 0:
                s1 = h2 * s1 + g
                step = g + h2 * s1 if h3 != 0 else s1
            p = p - lr * step
        elif code == RMSPROP_CODE:
            s1 = h2 * s1 + (one - h2) * (g * g)
            p = p - lr * (g / (math.sqrt(s1) + h3))
        elif code == ADAM_CODE:
            s1 = h2 * s1 + (one - h2) * g
            s2 = h3 * s2 + (one - h3) * (g * g)
            p = p - h5 * (s1 / (math.sqrt(s2) * h6 + h4))
        return p, s1, s2

    return SimpleNamespace(
        activate=activate,
        derivative=derivative,
        row_output=row_output,
        row_output_delta=row_output_delta,
        optimizer_rule=optimizer_rule,
    )


# ---- the compiled CPU path's functions (bpgpu/backends/numba_cpu.py) ----------------------------

# error_model="numpy": a division by zero gives inf or NaN as in NumPy, with no check in the
# loop, so the compiler vectorizes the loops that divide; e^x and tanh x in plain arithmetic,
# so it vectorizes the loops that call them too
_cpu_rules = compile_rules(
    numba.njit(nogil=True, error_model="numpy", inline="always"), numba_math.exp, numba_math.tanh
)
_activate, _derivative = _cpu_rules.activate, _cpu_rules.derivative
_row_output_delta, _rule = _cpu_rules.row_output_delta, _cpu_rules.optimizer_rule
#: the CPU functions: cached on disk beside this file, so a process loads them compiled; the
#: cache is keyed on this file, which is why the CPU functions live beside the rules they compile
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
#: ... and those the whole epochs call at every step, inlined there
_jit_inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
#: ... and the whole epochs: sums may be reassociated and multiply-adds fused, so the dot
#: products and reductions vectorize (an inlined function compiles with its caller's flags)
_jit_epochs = numba.njit(
    cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"}
)


@_jit
def bias_activate(z, bias, code):
    # z[r, j] <- f(z[r, j] + bias[j])
    for r in range(z.shape[0]):
        for j in range(z.shape[1]):
            z[r, j] = _activate(z[r, j] + bias[j], code)


@_jit
def times_derivative(d, a, code):
    # d[r, j] <- d[r, j] f'(z[r, j]), from a = f(z)
    for r in range(d.shape[0]):
        for j in range(d.shape[1]):
            d[r, j] = d[r, j] * _derivative(a[r, j], code)


@_jit_inline
def update(P, G, S1, S2, slots, one, code, lr, wd, h2, h3, h4, h5, h6):
    # Matrices: each parameter's update from its gradient (optimizer_rule); the rule keeps
    # ``slots`` state matrices, S1 and S2. One loop per rule, each calling optimizer_rule with a
    # constant code, so that the rule's branches fold away and the loop vectorizes
    zero = one - one
    rows, n = P.shape
    if slots == 0:  # plain SGD
        for i in range(rows):
            for j in range(n):
                p, s1, s2 = _rule(SGD_CODE, P[i, j], G[i, j], zero, zero, one, lr, wd, h2, h3, h4,
                                  h5, h6)  # fmt: skip
                P[i, j] = p
    elif code == SGD_CODE:  # with momentum
        for i in range(rows):
            for j in range(n):
                p, s1, s2 = _rule(SGD_CODE, P[i, j], G[i, j], S1[i, j], zero, one, lr, wd, h2, h3,
                                  h4, h5, h6)  # fmt: skip
                P[i, j] = p
                S1[i, j] = s1
    elif code == RMSPROP_CODE:
        for i in range(rows):
            for j in range(n):
                p, s1, s2 = _rule(RMSPROP_CODE, P[i, j], G[i, j], S1[i, j], zero, one, lr, wd, h2,
                                  h3, h4, h5, h6)  # fmt: skip
                P[i, j] = p
                S1[i, j] = s1
    else:
        for i in range(rows):
            for j in range(n):
                p, s1, s2 = _rule(ADAM_CODE, P[i, j], G[i, j], S1[i, j], S2[i, j], one, lr, wd, h2,
                                  h3, h4, h5, h6)  # fmt: skip
                P[i, j] = p
                S1[i, j] = s1
                S2[i, j] = s2


@_jit_inline
def layer_forward(A, W, b, out, m, code):
    # out[:m] = f(A[:m] W + b), b one row: rows of W added in, so the inner loop runs along a row
    k, n = W.shape
    for r in range(m):
        for j in range(n):
            out[r, j] = b[0, j]
        for i in range(k):
            a = A[r, i]
            for j in range(n):
                out[r, j] += a * W[i, j]
        for j in range(n):
            out[r, j] = _activate(out[r, j], code)


@_jit_inline
def layer_backward(D, W, A, out, m, code):
    # out[:m] = (D[:m] W^T) f'(A[:m]), a dot product of two rows for each element
    k, n = W.shape
    for r in range(m):
        for i in range(k):
            s = D[r, 0] * 0
            for j in range(n):
                s += D[r, j] * W[i, j]
            out[r, i] = s * _derivative(A[r, i], code)


@_jit_inline
def layer_update(A, D, W, b, gW, gb, S1W, S2W, S1b, S2b, slots, m, one, code, table, s):
    # dW = A[:m]^T D[:m], db = column sums of D[:m] (b and its slots one row each), then the
    # update with the numbers of row s of table
    k, n = W.shape
    for i in range(k):
        a = A[0, i]
        for j in range(n):
            gW[i, j] = a * D[0, j]
    for j in range(n):
        gb[0, j] = D[0, j]
    for r in range(1, m):
        for i in range(k):
            a = A[r, i]
            for j in range(n):
                gW[i, j] += a * D[r, j]
        for j in range(n):
            gb[0, j] += D[r, j]
    lr, wd, h2, h3 = table[s, 0], table[s, 1], table[s, 2], table[s, 3]
    h4, h5, h6 = table[s, 4], table[s, 5], table[s, 6]
    update(W, gW, S1W, S2W, slots, one, code, lr, wd, h2, h3, h4, h5, h6)
    update(b, gb, S1b, S2b, slots, one, code, lr, wd * 0, h2, h3, h4, h5, h6)


@_jit_epochs
def epochs(
    W, b, S1W, S2W, S1b, S2b, slots, gW, gb, In, Z, P, Yb, D, acts, output, loss,
    X, Y, orders, batch, table, code, one, stats, saved_W, saved_b,
):  # fmt: skip
    # Whole epochs of minibatch training, epoch e over the rows orders[e] of X and Y (all or
    # some of them) in
    # batches of ``batch``; update s of the call reads row s of ``table``. In[l] is layer
    # l's input (In[0] the gathered batch), Z the logits, P the outputs, D[l] layer l's
    # delta. Epoch e's summed loss and correct count go to stats[e]; the weights at its
    # start to saved_*[e % 2]. Stops after the first epoch whose loss is not finite;
    # returns the epochs run.
    L = len(W)
    n = orders.shape[1]
    s = 0
    for e in range(orders.shape[0]):
        for l in range(L):
            saved_W[e % 2][l][...] = W[l]
            saved_b[e % 2][l][...] = b[l][0]
        total = 0.0
        correct = 0.0
        for start in range(0, n, batch):
            m = min(batch, n - start)
            for r in range(m):
                In[0][r, :] = X[orders[e, start + r]]
                Yb[r, :] = Y[orders[e, start + r]]
            for l in range(L - 1):
                layer_forward(In[l], W[l], b[l], In[l + 1], m, acts[l])
            layer_forward(In[L - 1], W[L - 1], b[L - 1], Z, m, IDENTITY)
            inv_m = one / m
            for r in range(m):
                lost, right = _row_output_delta(Z, Yb, r, output, loss, inv_m, P, D[L - 1])
                total += lost
                correct += right
            for l in range(L - 1, -1, -1):
                if l > 0:
                    layer_backward(D[l], W[l], In[l], D[l - 1], m, acts[l - 1])
                layer_update(In[l], D[l], W[l], b[l], gW[l], gb[l], S1W[l], S2W[l],
                             S1b[l], S2b[l], slots, m, one, code, table, s)  # fmt: skip
            s += 1
        stats[e, 0] = total
        stats[e, 1] = correct
        if not math.isfinite(total):
            return e + 1
    return orders.shape[0]
