"""scikit-learn estimators around ``bpgpu.MLP``: ``MLPClassifier`` and ``MLPRegressor``.

They take their hyperparameters in ``__init__`` (so ``clone``, ``GridSearchCV``, ``Pipeline``
and ``cross_val_score`` work), accept any hashable class labels, and run on any bpgpu backend::

    from bpgpu.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(32, 16), epochs=60, random_state=0).fit(X, y)
    clf.predict_proba(X)   # one column per class in clf.classes_, two for two classes

Needs scikit-learn (the ``data`` extra). A fitted estimator keeps its weights as NumPy arrays
(``coefs_``, ``intercepts_``), so it can be cloned, compared and pickled by scikit-learn's own
machinery; bpgpu itself never reads a pickle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from bpgpu.model import MLP
from bpgpu.optimizers import make_optimizer

__all__ = ["MLPClassifier", "MLPRegressor"]


class _MLPEstimator(BaseEstimator):
    """What the classifier and the regressor share: hyperparameters, fitting, the network."""

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] = (100,),
        activation: str = "relu",
        optimizer: str = "adam",
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 32,
        epochs: int = 200,
        shuffle: bool = True,
        init: str = "torch",
        backend: str = "auto",
        dtype: str | None = None,
        random_state: Any = None,
        verbose: int = 0,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.shuffle = shuffle
        self.init = init
        self.backend = backend
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose

    # what a subclass gives: the output layer and the targets
    def _output(self) -> str:
        raise NotImplementedError

    def _targets(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # ---- fitting -------------------------------------------------------------------------

    def fit(self, X: Any, y: Any) -> Any:
        """Train a new network on (X, y) for ``epochs`` epochs; returns self."""
        X, y = self._validate(X, y, reset=True)
        Y = self._targets(y)
        model = self._new_model(X, Y)
        self._train(model, X, Y, self.epochs, reset=True)
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> Any:
        """One epoch on (X, y), continuing from the current weights (a new network on the
        first call); returns self."""
        first = not hasattr(self, "coefs_")
        X, y = self._validate(X, y, reset=first, classes=classes)
        Y = self._targets(y)
        model = self._new_model(X, Y) if first else self._model()
        self._train(model, X, Y, 1, reset=first)
        return self

    def _validate(self, X: Any, y: Any, reset: bool, classes: Any = None) -> tuple[Any, Any]:
        X, y = validate_data(
            self,
            X,
            y,
            reset=reset,
            dtype=[np.float64, np.float32],
            multi_output=True,
            y_numeric=True,
        )
        return X, y

    def _new_model(self, X: np.ndarray, Y: np.ndarray) -> MLP:
        sizes = self.hidden_layer_sizes
        hidden = [sizes] if isinstance(sizes, (int, np.integer)) else list(sizes)
        layers = [X.shape[1], *hidden, Y.shape[1]]
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        return MLP(
            layers,
            activation=self.activation,
            output=self._output(),
            backend=self.backend,
            dtype=self._dtype(X),
            seed=seed,
            init=self.init,
        )

    def _dtype(self, X: np.ndarray) -> str:
        if self.dtype is not None:
            return str(self.dtype)
        return "float32" if X.dtype == np.float32 else "float64"

    def _train(self, model: MLP, X: np.ndarray, Y: np.ndarray, epochs: int, reset: bool) -> None:
        if reset or not hasattr(self, "_optimizer"):
            self._optimizer = make_optimizer(self.optimizer, self.learning_rate)
            if self.weight_decay:
                params = {**self._optimizer.params(), "weight_decay": self.weight_decay}
                self._optimizer = type(self._optimizer)(**params)
            self.loss_curve_: list[float] = []
        history = model.fit(
            X,
            Y,
            epochs=epochs,
            batch_size=self.batch_size,
            optimizer=self._optimizer,
            shuffle=self.shuffle,
            verbose=self.verbose,
        )
        self.loss_curve_ = self.loss_curve_ + history.history["loss"]
        self.n_iter_ = len(self.loss_curve_)
        weights = model.get_weights()
        self.coefs_ = [W for W, _ in weights]
        self.intercepts_ = [b for _, b in weights]
        self._cached = model

    # ---- the fitted network ----------------------------------------------------------------

    def _model(self) -> MLP:
        """The fitted network (rebuilt from coefs_ and intercepts_ after unpickling)."""
        check_is_fitted(self, "coefs_")
        model = getattr(self, "_cached", None)
        if model is None:
            layers = [self.coefs_[0].shape[0], *(W.shape[1] for W in self.coefs_)]
            model = MLP(
                layers,
                activation=self.activation,
                output=self._output(),
                backend=self.backend,
                dtype=self.coefs_[0].dtype.name,
            )
            model.set_weights(list(zip(self.coefs_, self.intercepts_, strict=True)))
            self._cached = model
        return model

    def _outputs(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "coefs_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self._model().predict_proba(X)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_cached", None)  # a backend's arrays: rebuilt from coefs_ on first use
        return state


class MLPClassifier(ClassifierMixin, _MLPEstimator):
    """A bpgpu network as a scikit-learn classifier: softmax over the classes, or one sigmoid
    unit for two; cross-entropy. ``classes_`` holds the labels, of any hashable type."""

    def _validate(self, X: Any, y: Any, reset: bool, classes: Any = None) -> tuple[Any, Any]:
        X, y = validate_data(self, X, y, reset=reset, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        if reset:
            self.classes_ = np.unique(y if classes is None else np.asarray(classes))
            if len(self.classes_) < 2:
                raise ValueError(
                    f"MLPClassifier needs samples of at least 2 classes; got 1 class "
                    f"({self.classes_[0]!r})"
                )
        return X, y

    def _output(self) -> str:
        return "sigmoid" if len(self.classes_) == 2 else "softmax"

    def _targets(self, y: np.ndarray) -> np.ndarray:
        known = np.isin(y, self.classes_)
        if not known.all():
            raise ValueError(
                f"y holds labels not among classes_ {list(self.classes_)}: {y[~known][:5]}"
            )
        index = np.searchsorted(self.classes_, y)
        if len(self.classes_) == 2:
            return index.reshape(-1, 1).astype(np.float64)
        return np.eye(len(self.classes_))[index]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities (n, len(classes_)); for two classes [1 - p, p]."""
        P = self._outputs(X)
        return np.hstack([1 - P, P]) if len(self.classes_) == 2 else P

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each sample, from ``classes_``."""
        best = self.predict_proba(X).argmax(axis=1)
        return self.classes_[best]


class MLPRegressor(RegressorMixin, _MLPEstimator):
    """A bpgpu network as a scikit-learn regressor: identity outputs, squared error; one output
    per target column."""

    def _output(self) -> str:
        return "identity"

    def _targets(self, y: np.ndarray) -> np.ndarray:
        self._y_1d = y.ndim == 1
        return y.reshape(len(y), -1).astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """The predicted targets: (n,) for one target, else (n, targets)."""
        P = self._outputs(X)
        return P[:, 0] if self._y_1d else P

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
