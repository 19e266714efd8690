"""DEQClassifier: scikit-learn's estimator checks, NumPy / torch inputs, determinism, real data."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.utils.estimator_checks import parametrize_with_checks

from pycdeq.layers.deq import NonConvergenceWarning
from pycdeq.models import MNISTDense
from pycdeq.training import DEQClassifier
from pycdeq.training.estimator import SKIPPED_CHECKS



def _small(**params) -> DEQClassifier:
    """A tiny, fast configuration: the API does not depend on the size (Anderson is the
    cheapest solver here; the continuous solver has its own tests below)."""
    return DEQClassifier(**{"solver": "anderson", "width": 16, "epochs": 2, "batch_size": 16, "lr": 2e-2,
                            "random_state": 0, **params})


# --- scikit-learn's own checks ---------------------------------------------------------------
# Checks in SKIPPED_CHECKS (each with its reason) are marked xfail (non-strict: on a machine
# whose float32 kernels round identically for every batch size they pass).
@parametrize_with_checks([_small()], expected_failed_checks=lambda estimator: SKIPPED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonConvergenceWarning)
        check(estimator)


def test_skipped_checks_are_listed_with_reasons_in_the_docstring():
    assert set(SKIPPED_CHECKS) == {"check_methods_subset_invariance"}
    for name, reason in SKIPPED_CHECKS.items():
        assert len(reason) > 40
        assert name in DEQClassifier.__doc__


# --- data -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)


@pytest.fixture(scope="module")
def digits_small(digits):
    X_train, _, y_train, _ = digits
    return X_train[:160], y_train[:160]


def test_reaches_90_percent_on_digits_with_continuous_skip_reg(digits):
    X_train, X_test, y_train, y_test = digits
    clf = DEQClassifier(variant="skip_reg", solver="continuous", width=64, batch_size=64, lr=3e-3, epochs=3,
                        random_state=0)
    clf.fit(X_train, y_train)
    accuracy = clf.score(X_test, y_test)
    assert accuracy >= 0.90, accuracy
    assert clf.n_iter_ == 3 and all(h["train_nfe"] > 0 for h in clf.history_)


def test_numpy_torch_and_image_inputs_give_identical_models(digits_small):
    X, y = digits_small
    reference = _small().fit(X, y)
    images = X.reshape(-1, 1, 8, 8)
    for X_in, y_in in [(torch.from_numpy(X), torch.from_numpy(y)), (images, y),
                       (torch.from_numpy(images).float(), y.tolist())]:
        other = _small().fit(X_in, y_in)
        assert other.n_features_in_ == 64
        for p, q in zip(reference.model_.parameters(), other.model_.parameters()):
            assert torch.equal(p, q)
        np.testing.assert_array_equal(other.predict(torch.from_numpy(images)), reference.predict(X))


def test_outputs_are_numpy_with_sklearn_shapes(digits_small):
    X, y = digits_small
    clf = _small().fit(X, y)
    proba = clf.predict_proba(torch.from_numpy(X[:7]))
    assert isinstance(proba, np.ndarray) and proba.shape == (7, 10) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X[:7])), proba, rtol=1e-10)
    decision = clf.decision_function(X[:7])
    assert decision.shape == (7, 10)
    np.testing.assert_array_equal(clf.predict(X[:7]), clf.classes_[decision.argmax(axis=1)])
    assert isinstance(clf.score(X, y), float)

    binary = y < 5
    clf2 = _small().fit(X, binary)
    decision2 = clf2.decision_function(X)
    assert decision2.shape == (160,)
    np.testing.assert_array_equal(clf2.predict(X), clf2.classes_[(decision2 > 0).astype(int)])
    np.testing.assert_allclose(clf2.predict_proba(X)[:, 1], 1 / (1 + np.exp(-decision2)), rtol=1e-10)


def test_any_label_type_is_encoded_with_classes(digits_small):
    X, y = digits_small
    reference = _small().fit(X, y).predict(X)
    # Labels of any type, in the same sorted order as 0..9, give the same model and predictions.
    letters = np.array(list("abcdefghij"))
    objects = np.array([f"c{d}" for d in range(10)], dtype=object)
    for labels, expected in [(letters[y], letters[reference]), (y * 10.0 - 3, reference * 10.0 - 3),
                             (objects[y], objects[reference])]:
        clf = _small().fit(X, labels)
        assert clf.classes_.dtype == labels.dtype and len(clf.classes_) == 10
        np.testing.assert_array_equal(clf.predict(X), expected)


def test_fitted_attributes(digits_small):
    X, y = digits_small
    X = X.copy()
    X[:, 5] = 7.0  # a constant feature
    clf = _small(epochs=3).fit(X, y)
    np.testing.assert_array_equal(clf.classes_, np.arange(10))
    assert clf.n_features_in_ == 64 and clf.n_iter_ == 3
    np.testing.assert_allclose(clf.mean_, X.mean(axis=0))
    expected_scale = X.std(axis=0)
    expected_scale[expected_scale == 0] = 1.0
    np.testing.assert_allclose(clf.scale_, expected_scale)
    assert clf.scale_[5] == 1.0 and (clf.scale_ > 0).all()
    assert isinstance(clf.model_, MNISTDense) and not clf.model_.training
    assert clf.model_.config.sizes.width == 16 and clf.model_.config.in_features == 64
    assert clf.model_.config.num_classes == 10 and clf.model_.deq.variant == "skip_reg"
    assert [h["epoch"] for h in clf.history_] == [1, 2, 3]
    assert {"train_loss", "train_accuracy", "train_nfe", "backward_time", "lr"} <= set(clf.history_[0])


def test_get_set_params_and_clone():
    clf = DEQClassifier(width=33, tol=1e-3)
    params = clf.get_params()
    assert params["width"] == 33 and params["tol"] == 1e-3 and params["variant"] == "skip_reg"
    assert set(params) == {"variant", "solver", "width", "epochs", "batch_size", "lr", "lambda_skip", "tol",
                           "max_iter", "random_state", "device", "verbose"}
    assert clf.set_params(variant="vanilla", epochs=0) is clf  # stored as is; validated in fit
    assert clf.variant == "vanilla" and clf.epochs == 0
    assert clone(clf).get_params() == clf.get_params()


@pytest.mark.parametrize("param, value", [
    ("variant", "deep"), ("solver", "newton"), ("width", 0), ("width", 2.5), ("epochs", -1), ("batch_size", 0),
    ("lr", 0.0), ("lr", "fast"), ("lambda_skip", -1.0), ("tol", 0.0), ("tol", 2.0), ("max_iter", 0),
    ("device", "gpu"), ("verbose", -1), ("random_state", "seed"),
])
def test_invalid_parameter_raises_value_error_at_fit_naming_it(param, value):
    X, y = np.random.RandomState(0).rand(10, 3), np.arange(10) % 2
    clf = DEQClassifier(**{param: value})  # construction never validates (sklearn rule)
    with pytest.raises(ValueError, match=param if param != "random_state" else "RandomState"):
        clf.fit(X, y)


def test_one_class_is_rejected_and_leaves_the_estimator_unfitted():
    X = np.random.RandomState(0).rand(10, 3)
    clf = DEQClassifier(solver="anderson", width=4, epochs=1)
    with pytest.raises(ValueError, match="1 class"):
        clf.fit(X, np.full(10, "only"))
    assert not hasattr(clf, "classes_") and not hasattr(clf, "model_")


def test_neural_ode_requires_the_continuous_solver():
    X, y = np.random.RandomState(0).rand(10, 3), np.arange(10) % 2
    with pytest.raises(ValueError, match="solver='anderson'.*node"):
        DEQClassifier(variant="node", solver="anderson").fit(X, y)


@pytest.mark.parametrize("variant, solver", [("vanilla", "broyden"), ("skip", "fixed_point"),
                                             ("node", "continuous"), ("skip_reg", "continuous")])
def test_every_variant_and_solver_trains(digits_small, variant, solver):
    X, y = digits_small
    clf = _small(variant=variant, solver=solver, epochs=1, max_iter=20).fit(X[:64], y[:64])
    assert clf.model_.deq.variant == variant
    assert (clf.model_.deq.g is not None) == (variant == "skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonConvergenceWarning)  # 1 epoch, max_iter=20: allowed here
        assert clf.predict(X[:5]).shape == (5,)
    assert np.isfinite(clf.history_[0]["train_loss"])


def test_fit_is_deterministic_and_leaves_the_global_rng_alone(digits_small):
    X, y = digits_small
    state = torch.get_rng_state()
    a = _small(random_state=3).fit(X, y)
    assert torch.equal(torch.get_rng_state(), state)
    b = _small(random_state=3).fit(X, y)
    c = _small(random_state=4).fit(X, y)
    for p, q in zip(a.model_.parameters(), b.model_.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(a.model_.parameters(), c.model_.parameters()))
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_pickle_round_trip_predicts_the_same(digits_small):
    X, y = digits_small
    clf = _small().fit(X, y)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))


def test_predict_warns_once_with_the_count_of_nonconverged_samples(digits_small):
    X, y = digits_small
    clf = _small(solver="fixed_point", max_iter=1, epochs=1).fit(X, y)
    with pytest.warns(NonConvergenceWarning, match=r"\d+ of 160 samples did not reach") as record:
        clf.predict(X)
    assert len([w for w in record if issubclass(w.category, NonConvergenceWarning)]) == 1


def test_verbose_controls_the_progress_bar(digits_small, capsys):
    X, y = digits_small
    _small(epochs=1).fit(X[:32], y[:32])
    assert capsys.readouterr().err == ""
    _small(epochs=1, verbose=True).fit(X[:32], y[:32])
    assert "train" in capsys.readouterr().err


def test_continuous_predictions_are_per_sample_in_float64(digits_small):
    """The property behind ``check_methods_subset_invariance``: each sample's solve (step sizes,
    accept / reject, stopping) is its own, so in float64 a sample's logits do not depend on the
    batch it is in. (In float32, 1-ulp kernel differences can flip a threshold decision.)"""
    X, y = digits_small
    clf = DEQClassifier(solver="continuous", width=16, epochs=1, lr=1e-2, random_state=0).fit(X[:96], y[:96])
    model = clf.model_.double()
    inputs = torch.from_numpy((X[:24] - clf.mean_) / clf.scale_)  # float64 throughout
    with torch.no_grad():
        full, solution = model(inputs)
        parts = {"singles": [model(inputs[i:i + 1]) for i in range(24)],
                 "halves": [model(inputs[:11]), model(inputs[11:])]}
    assert int(solution.iterations.min()) != int(solution.iterations.max())  # samples stop at different steps
    for name, outputs in parts.items():
        logits = torch.cat([out[0] for out in outputs])
        iterations = torch.cat([out[1].iterations for out in outputs])
        # A sample that took the same steps differs by float64 rounding of the same arithmetic
        # in other kernels (~1e-15 per step, a few hundred evaluations): 1e-8 is far above it.
        # A stop can still flip where a residual lies within that rounding of the tolerance; such
        # a sample stops one step earlier or later (none expected in float64, but not excluded).
        same = iterations == solution.iterations
        torch.testing.assert_close(logits[same], full[same], rtol=0, atol=1e-8, msg=name)
        assert bool(((iterations - solution.iterations).abs() <= 1).all()), name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_and_predict_on_cuda_return_numpy(digits):
    X_train, X_test, y_train, y_test = digits
    clf = DEQClassifier(device="cuda", width=64, batch_size=64, lr=3e-3, epochs=3, random_state=0)
    clf.fit(torch.from_numpy(X_train).cuda(), y_train)
    assert next(clf.model_.parameters()).device.type == "cuda"
    proba = clf.predict_proba(torch.from_numpy(X_test).cuda())
    assert isinstance(proba, np.ndarray) and proba.shape == (len(X_test), 10)
    assert clf.score(X_test, y_test) >= 0.90
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(restored.predict_proba(X_test), proba, atol=1e-6)
