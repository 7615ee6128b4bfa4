"""A two-layer ReLU network without biases, forward by hand (one tutorial printed 0.32 for it,
an arithmetic slip; the output is 0.61).

    python examples/relu_no_bias.py

W1 = [[0.5, 0.6], [0.1, 0.2]], W2 = [[0.3], [0.4]], x = [1, 2]: the hidden layer is
relu(x W1) = (0.7, 1.0), the output 0.3 * 0.7 + 0.4 * 1.0 = 0.61.
"""

from __future__ import annotations

import numpy as np

import bpgpu


def main(argv: list[str] | None = None) -> dict[str, float]:
    net = bpgpu.MLP([2, 2, 1], activation="relu", output="identity", dtype="float64")
    W1, W2 = np.array([[0.5, 0.6], [0.1, 0.2]]), np.array([[0.3], [0.4]])
    net.set_weights([(W1, np.zeros(2)), (W2, np.zeros(1))])
    x = np.array([[1.0, 2.0]])
    hidden = np.maximum(x @ W1, 0)[0]
    out = float(net.predict(x)[0])
    print(f"hidden = relu(x W1) = {hidden.tolist()}")
    print(f"output = {out!r}")
    return {"hidden 1": float(hidden[0]), "hidden 2": float(hidden[1]), "output": out}


if __name__ == "__main__":
    main()
