"""The single sigmoid neuron worked by hand in the backpropagation tutorials.

    python examples/single_neuron.py

x = (0.1, 0.3), W = (0.5, 0.2), b = 1.83, target 0.03, E = 1/2 (target - out)^2. The tutorial's
numbers: s = 1.94, out = 0.8743521434846544, E = 0.3564652711035652,
dE/dW = (0.009276092558183858, 0.027828277674551576), dE/db = 0.09276092558183859.
"""

from __future__ import annotations

import numpy as np

import bpgpu


def main(argv: list[str] | None = None) -> dict[str, float]:
    net = bpgpu.MLP([2, 1], output="sigmoid", loss="mse", dtype="float64")
    net.set_weights([(np.array([[0.5], [0.2]]), np.array([1.83]))])
    x, target = np.array([[0.1, 0.3]]), np.array([[0.03]])
    net.explain(x[0], target[0])  # the whole chain rule, with its numbers
    [(dW, db)] = net.gradients(x, target)
    figures = {
        "out": float(net.predict_proba(x)[0, 0]),
        "E": net.loss(x, target),
        "dE/dW1": float(dW[0, 0]),
        "dE/dW2": float(dW[1, 0]),
        "dE/db": float(db[0]),
    }
    net.fit(x, target, epochs=1, batch_size=1, optimizer=bpgpu.SGD(lr=0.5), shuffle=False)
    figures["E after one SGD step (lr 0.5)"] = net.loss(x, target)
    for name, value in figures.items():
        print(f"{name} = {value!r}")
    return figures


if __name__ == "__main__":
    main()
