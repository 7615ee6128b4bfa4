"""scikit-learn's handwritten digits with a 64-32-16-10 sigmoid network, 75/25 split: about
98 % test accuracy (the PyImageSearch tutorial trains it per sample with SGD, lr 0.1, for 1000
epochs; --fast uses Adam on minibatches, 60 epochs, for the tests).

    python examples/digits.py [--epochs 1000] [--fast]
"""

from __future__ import annotations

import argparse

import bpgpu


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, help="default: 1000, or 60 with --fast")
    ap.add_argument("--fast", action="store_true", help="Adam, batches of 32, 60 epochs")
    args = ap.parse_args(argv)
    epochs = args.epochs or (60 if args.fast else 1000)
    data = bpgpu.datasets.digits(seed=0)
    net = bpgpu.MLP([64, 32, 16, 10], activation="sigmoid", seed=0)
    if args.fast:
        hist = net.fit(
            data.X_train, data.y_train, epochs=epochs, batch_size=32, optimizer=bpgpu.Adam(lr=0.01)
        )
    else:
        hist = net.fit(
            data.X_train,
            data.y_train,
            epochs=epochs,
            batch_size=1,
            optimizer=bpgpu.SGD(lr=0.1),
            verbose=1,
        )
    accuracy = net.score(data.X_test, data.y_test)
    loss = hist["loss"][-1]
    print(f"backend {net.backend.name}: final loss {loss:.4f}, test accuracy {accuracy:.4f}")
    return {"loss": hist["loss"][-1], "test accuracy": accuracy}


if __name__ == "__main__":
    main()
