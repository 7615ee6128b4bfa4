"""XOR, the problem a single layer cannot learn: a 2-2-1 sigmoid network with per-sample SGD
(learning rate 0.5, squared error, 20000 epochs) gets all four points right; a 2-1 network
gets at most three, whatever its seed.

    python examples/xor.py [--epochs 20000] [--fast]
"""

from __future__ import annotations

import argparse

import numpy as np

import bpgpu

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
Y = np.array([0, 1, 1, 0], dtype=float)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, help="default: 20000, or 3000 with --fast")
    ap.add_argument("--fast", action="store_true", help="3000 epochs (the tests)")
    args = ap.parse_args(argv)
    epochs = args.epochs or (3000 if args.fast else 20000)
    net = bpgpu.MLP([2, 2, 1], "sigmoid", "sigmoid", "mse", dtype="float64", seed=0)
    hist = net.fit(X, Y, epochs=epochs, batch_size=1, optimizer=bpgpu.SGD(lr=0.5), shuffle=False)
    P = net.predict_proba(X)[:, 0]
    for x, p in zip(X, P, strict=True):
        print(f"{x.astype(int).tolist()} -> {p:.4f}")
    accuracy_2_2_1 = net.score(X, Y)
    best_2_1 = 0.0
    for seed in range(5):  # one unit draws one line: no seed separates XOR
        single = bpgpu.MLP([2, 1], output="sigmoid", loss="mse", seed=seed)
        single.fit(X, Y, epochs=min(epochs, 2000), batch_size=1, optimizer=bpgpu.SGD(lr=0.5))
        best_2_1 = max(best_2_1, single.score(X, Y))
    print(f"2-2-1 after {epochs} epochs: loss {hist['loss'][-1]:.5f}, accuracy {accuracy_2_2_1}")
    print(f"2-1, best of 5 seeds: accuracy {best_2_1}")
    return {"loss": hist["loss"][-1], "accuracy 2-2-1": accuracy_2_2_1, "accuracy 2-1": best_2_1}


if __name__ == "__main__":
    main()
