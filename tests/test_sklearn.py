"""bpgpu.sklearn: scikit-learn's own estimator checks, and the estimators in scikit-learn's
machinery (clone, Pipeline, GridSearchCV, cross_val_score) on every backend that runs here."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed (the data extra)")
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import bpgpu  # noqa: E402
from bpgpu.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# small and quick, so that scikit-learn's many checks run in seconds
QUICK = {"hidden_layer_sizes": (16,), "epochs": 30, "learning_rate": 0.01, "random_state": 0}


@parametrize_with_checks([MLPClassifier(**QUICK), MLPRegressor(**QUICK)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_any_hashable_labels_and_two_probability_columns(rng):
    X = rng.normal(size=(80, 3))
    y = np.where(X[:, 0] > 0, "spam", "ham")
    clf = MLPClassifier(**QUICK).fit(X, y)
    assert list(clf.classes_) == ["ham", "spam"] and clf.n_features_in_ == 3
    P = clf.predict_proba(X)
    assert P.shape == (80, 2)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    assert set(clf.predict(X)) <= {"ham", "spam"} and clf.score(X, y) > 0.9
    assert len(clf.loss_curve_) == clf.n_iter_ == 30
    names = np.array(["setosa", "versicolor", "virginica"])[X[:, 1].argsort() % 3]
    three = MLPClassifier(**QUICK).fit(X, names)
    assert three.predict_proba(X).shape == (80, 3) and set(three.predict(X)) <= set(names)


def test_partial_fit_continues(rng):
    X, y = rng.normal(size=(60, 4)), rng.integers(0, 3, 60)
    clf = MLPClassifier(**QUICK)
    clf.partial_fit(X, y, classes=[0, 1, 2])
    first = [W.copy() for W in clf.coefs_]
    clf.partial_fit(X, y)
    assert clf.n_iter_ == 2 and any(
        not np.array_equal(a, b) for a, b in zip(first, clf.coefs_, strict=True)
    )
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(X[:, :3], y)


def test_regressor_one_and_several_targets(rng):
    X = rng.normal(size=(100, 3))
    y = X @ np.array([1.0, -2.0, 0.5])
    reg = MLPRegressor(
        hidden_layer_sizes=(32,), epochs=200, learning_rate=0.01, random_state=0
    ).fit(X, y)
    assert reg.predict(X).shape == (100,) and reg.score(X, y) > 0.95
    Y = np.stack([y, -y], axis=1)
    assert MLPRegressor(**QUICK).fit(X, Y).predict(X).shape == (100, 2)


def test_a_fitted_estimator_pickles_as_plain_arrays(rng):
    """scikit-learn's machinery (joblib, cross-validation in processes) pickles estimators; the
    fitted state is NumPy arrays, and the network is rebuilt from them."""
    X, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    clf = MLPClassifier(**QUICK).fit(X, y)
    back = pickle.loads(pickle.dumps(clf))
    assert "_cached" not in back.__dict__
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))


BACKENDS = [*bpgpu.available_backends(), "cuda-emulated"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_pipeline_grid_search_and_cross_validation(backend):
    try:
        bpgpu.get_backend(backend)
    except bpgpu.BackendUnavailableError as exc:
        pytest.skip(str(exc))
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    pipe = make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=(8,), epochs=40, learning_rate=0.02, random_state=0, backend=backend
        ),
    )
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.mean() > 0.85, scores
    search = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(4,), (8,)]}, cv=2)
    search.fit(X, y)
    assert search.best_params_["mlpclassifier__hidden_layer_sizes"] in [(4,), (8,)]
    twin = clone(pipe)
    assert twin.get_params()["mlpclassifier__backend"] == backend
