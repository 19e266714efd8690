"""``DEQClassifier``: a scikit-learn estimator around the paper's fully connected model.

It trains :class:`pycdeq.models.MNISTDense` (stem ``Linear + ReLU``, an equilibrium layer of
``width`` features, a ``Linear`` head) with :class:`pycdeq.training.Trainer`, so a NumPy user
gets the same layers, solvers and loss as the command line in a few lines::

    clf = DEQClassifier(variant="skip_reg", solver="continuous", epochs=5).fit(X, y)
    clf.predict(X_test), clf.predict_proba(X_test), clf.score(X_test, y_test)

Inputs are NumPy arrays (or anything ``check_array`` accepts) or torch tensors: 2-D
``(n_samples, n_features)`` or image arrays ``(n_samples, C, H, W)``, which are flattened
(the model is dense). Outputs are always NumPy.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from .. import _checks
from ..adjoints import GMRES
from ..layers.deq import NonConvergenceWarning
from ..models import build_model
from ..models.config import VARIANTS
from ..models.defaults import discrete_solver
from ..solvers import Anderson, FixedPoint, Status, Termination, Tsit5
from ..solvers.ode import integrator_tolerance
from .config import TrainConfig
from .trainer import Trainer

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def _validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

SOLVERS = ("continuous", "anderson", "broyden", "fixed_point")
#: GMRES iterations of the implicit backward pass (the paper's MNIST setting).
ADJOINT_MAX_ITER = 15
#: Largest integrator tolerance of the continuous DEQ (the reference's rtol), tightened when
#: ``tol`` demands it (see :mod:`pycdeq.solvers.ode`, the tolerance rule).
INTEGRATOR_RTOL = 1e-3
PREDICT_BATCH_SIZE = 256

#: scikit-learn ``check_estimator`` checks that DEQClassifier is not expected to pass, with the
#: reason (pass it as ``expected_failed_checks``; the tests mark each one xfail).
SKIPPED_CHECKS = {
    "check_methods_subset_invariance": (
        "float32 inference: CPU matmul kernels round differently for different batch sizes (1 ulp "
        "already at the stem), and a solver's per-sample threshold decisions (ODE step accept / "
        "reject, stopping at tol) can turn a 1-ulp difference into a difference of order tol for a "
        "sample near a threshold, above the check's atol=1e-7. The algorithm itself is per sample: "
        "in float64 a sample's logits match across batch compositions to 1e-8 "
        "(test_continuous_predictions_are_per_sample_in_float64)."),
}


def _to_numpy(data, *, flatten: bool = False):
    """Torch tensors -> NumPy; with ``flatten``, image arrays ``(n, C, H, W)`` -> ``(n, C*H*W)``."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    if flatten and getattr(data, "ndim", 0) > 2:
        data = np.asarray(data).reshape(data.shape[0], -1)
    return data


def _standardise(X: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return ((X - mean) / scale).astype(np.float32)


def _as_value_error(check, *args, **kwargs) -> None:
    # scikit-learn's convention: any invalid hyper-parameter is a ValueError raised by fit.
    try:
        check(*args, **kwargs)
    except TypeError as error:
        raise ValueError(str(error)) from error


class DEQClassifier(ClassifierMixin, BaseEstimator):
    """Deep equilibrium classifier (MNIST-dense architecture) with a scikit-learn interface.

    The model is ``logits = head(z*)`` with ``z* = f(z*, x)``, ``f(z, x) = relu(Wz z) +
    relu(Wx x)`` and ``x = relu(stem(features))`` (:class:`pycdeq.models.MNISTDense`);
    the loss is cross entropy ``+ lambda_skip * skip_loss`` (:class:`~pycdeq.training.TrainConfig`).

    Parameters
    ----------
    variant : {"vanilla", "skip", "skip_reg", "node"}, default="skip_reg"
        Initial guess of the solve: zeros, a learnt predictor ``g(x)``, ``f(0, x)``; or the
        Neural ODE baseline (``dz/dt = f(z, x) - z`` over ``[0, 1]``).
    solver : {"continuous", "anderson", "broyden", "fixed_point"}, default="continuous"
        "continuous": Tsit5 integrated to steady state (a continuous DEQ); the others are
        discrete root finders. The Neural ODE needs "continuous".
    width : int, default=128
        Features of the equilibrium state.
    epochs : int, default=10
    batch_size : int, default=32
    lr : float, default=1e-3
        Adam's learning rate (constant).
    lambda_skip : float, default=0.01
        Weight of the skip loss ``||z* - z0||`` (no effect for "vanilla" and "node", which
        have no initial-guess predictor to train).
    tol : float, default=5e-3
        Per-sample termination tolerance, relative: a sample stops when
        ``||f(z) - z|| <= tol * ||f(z)||`` (the paper's 5e-3). It is also the relative
        tolerance of the GMRES backward solve; for "node" it is the integrator's tolerance.
    max_iter : int, default=50
        Solver iterations (integrator steps for "continuous" / "node") per solve.
    random_state : None, int or numpy RandomState, default=None
        Seeds weight initialisation, shuffling and every random number of training. With an
        int, fitting on CPU is exactly reproducible. The global torch RNG is left untouched.
    device : str, default="cpu"
        "cpu", "cuda" or "cuda:N".
    verbose : bool or int, default=False
        Show a progress bar (epoch, loss, nfe) while fitting.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Labels seen in ``fit`` (any type ``np.unique`` orders); predictions are drawn from it.
    n_features_in_ : int
        Features per sample after flattening (the model's input size).
    mean_, scale_ : ndarray of shape (n_features_in_,)
        Per-feature standardisation learnt in ``fit`` (``scale_`` is 1 for constant features).
        Features are standardised because the stem's Glorot initialisation and Adam's
        default step assume unit-scale inputs; raw pixel counts (0..16 for digits, 0..255
        for MNIST) otherwise saturate the ReLU stem and slow the solve.
    model_ : torch.nn.Module
        The trained :class:`~pycdeq.models.MNISTDense` (in eval mode, on ``device``).
    history_ : list of dict
        One dict per epoch (``EpochMetrics.flat()``: train loss / accuracy / nfe, times, lr).
    n_iter_ : int
        Epochs run.

    Notes
    -----
    Non-convergence is never silent: ``predict`` / ``predict_proba`` / ``decision_function``
    emit one ``NonConvergenceWarning`` with the count of samples whose solve stopped
    without converging.

    scikit-learn compatibility: the class passes ``check_estimator`` (legacy checks
    included) except one, listed with its reason in ``SKIPPED_CHECKS``:

    * ``check_methods_subset_invariance``: predictions are computed in float32, whose CPU
      kernels round differently for different batch sizes; a solver's per-sample threshold
      decisions (step accept / reject, stopping at ``tol``) can amplify that 1-ulp difference
      to about ``tol`` for a sample near a threshold, above the check's ``atol=1e-7``. Each
      sample's solve is independent of the others (exact in float64, tested).

    Binary problems follow scikit-learn: ``decision_function`` returns ``logit_1 - logit_0``
    of shape ``(n_samples,)``. The base classes are ``(ClassifierMixin, BaseEstimator)``:
    scikit-learn requires mixins left of ``BaseEstimator`` (``check_mixin_order``).
    """

    def __init__(self, variant="skip_reg", solver="continuous", width=128, epochs=10, batch_size=32,
                 lr=1e-3, lambda_skip=0.01, tol=5e-3, max_iter=50, random_state=None, device="cpu",
                 verbose=False):
        self.variant = variant
        self.solver = solver
        self.width = width
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lambda_skip = lambda_skip
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # --- hyper-parameters ---------------------------------------------------------------
    def _check_hyperparameters(self) -> None:
        _checks.one_of("variant", self.variant, VARIANTS)
        _checks.one_of("solver", self.solver, SOLVERS)
        if self.variant == "node" and self.solver != "continuous":
            raise ValueError(f"solver={self.solver!r} does not apply to variant 'node' (the Neural ODE "
                             "is integrated over [0, 1]); use solver='continuous'")
        for name in ("width", "epochs", "batch_size", "max_iter"):
            _as_value_error(_checks.positive_int, name, getattr(self, name))
        _as_value_error(_checks.positive, "lr", self.lr)
        _as_value_error(_checks.positive, "lambda_skip", self.lambda_skip, allow_zero=True)
        _as_value_error(_checks.in_range, "tol", self.tol, 0.0, 1.0, low_open=True, high_open=True)
        if not isinstance(self.device, str) or self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} was requested but CUDA is not available")
        if not isinstance(self.verbose, (bool, numbers.Integral)) or self.verbose < 0:
            raise ValueError(f"verbose must be a bool or an int >= 0, got {self.verbose!r}")

    def _solver_and_adjoint(self):
        """The solver objects the string options stand for (see the class docstring)."""
        termination = Termination(mode="rel", reltol=self.tol)
        if self.variant == "node":
            # Finite-time integration: tol is the integrator's own tolerance (as in the paper).
            return Tsit5(rtol=self.tol, atol=self.tol, max_steps=self.max_iter), "backprop"
        adjoint = GMRES(rtol=self.tol, max_iter=ADJOINT_MAX_ITER)
        if self.solver == "continuous":
            # pycdeq's integrator tolerance for the steady-state test, at most the reference's.
            # atol = rtol, not the reference's 1e-6: in float32 an error bound of 1e-6 on O(1)
            # states is at rounding level, so step control would follow rounding noise (measured on
            # digits: twice the nfe, and more samples whose step count depends on the batch).
            rtol = min(INTEGRATOR_RTOL, integrator_tolerance(self.tol))
            solver = Tsit5(rtol=rtol, atol=rtol, termination=termination,
                           max_steps=self.max_iter)
        elif self.solver == "anderson":
            solver = Anderson(max_iter=self.max_iter, termination=termination)
        elif self.solver == "broyden":
            solver = discrete_solver(self.max_iter, termination)
        else:
            solver = FixedPoint(max_iter=self.max_iter, termination=termination)
        return solver, adjoint

    def _build_model(self, n_classes: int) -> torch.nn.Module:
        solver, adjoint = self._solver_and_adjoint()
        return build_model("mnist-dense", variant=self.variant, continuous=self.solver == "continuous",
                           num_classes=n_classes, input_shape=(self.n_features_in_,), solver=solver,
                           adjoint=adjoint, width=self.width)

    # --- fit ----------------------------------------------------------------------------
    def fit(self, X, y):
        """Standardise ``X``, encode ``y`` with ``classes_`` and train the model; returns ``self``."""
        self._check_hyperparameters()
        X, y = _validate_data(self, _to_numpy(X, flatten=True), _to_numpy(y),
                              dtype=(np.float64, np.float32), y_numeric=False)
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"DEQClassifier needs samples of at least 2 classes in y to train, got 1 class "
                             f"({classes[0]!r})")
        mean = X.mean(axis=0, dtype=np.float64)
        scale = X.std(axis=0, dtype=np.float64)
        # Constant features carry no information; dividing by 1 keeps them finite (zeros).
        scale = np.where(scale > 10 * np.finfo(np.float64).eps * np.abs(mean), scale, 1.0)

        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        config = TrainConfig(epochs=self.epochs, batch_size=self.batch_size, eval_batch_size=PREDICT_BATCH_SIZE,
                             lr=self.lr, lambda_skip=self.lambda_skip, seed=seed, device=self.device,
                             progress=bool(self.verbose))
        inputs = torch.from_numpy(_standardise(X, mean, scale))
        targets = torch.from_numpy(encoded.reshape(-1).astype(np.int64))
        # The model's initial weights and the Trainer's seeding use torch's global RNG; fork it so
        # that fitting neither depends on nor changes the caller's random state.
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.manual_seed(seed)
            model = self._build_model(len(classes))
            result = Trainer(model, config).fit((inputs, targets))
        # Set together, after training: a fit that fails leaves no half-fitted estimator.
        self.classes_, self.mean_, self.scale_ = classes, mean, scale
        self.model_ = model.eval()
        self.history_ = [epoch.flat() for epoch in result.history]
        self.n_iter_ = len(self.history_)
        return self

    def _cuda_devices(self) -> list:
        if not self.device.startswith("cuda"):
            return []
        return [torch.device(self.device).index or 0]

    # --- prediction ---------------------------------------------------------------------
    def _logits(self, X) -> np.ndarray:
        """Float64 logits ``(n_samples, n_classes)``; one warning for non-converged samples."""
        check_is_fitted(self)
        X = _validate_data(self, _to_numpy(X, flatten=True), dtype=(np.float64, np.float32), reset=False)
        inputs = torch.from_numpy(_standardise(X, self.mean_, self.scale_))
        device = next(self.model_.parameters()).device
        outputs, nonconverged = [], 0
        with torch.no_grad(), warnings.catch_warnings():
            # The layer warns per batch; one aggregated warning per call is reported below.
            warnings.simplefilter("ignore", NonConvergenceWarning)
            for start in range(0, inputs.shape[0], PREDICT_BATCH_SIZE):
                logits, solution = self.model_(inputs[start:start + PREDICT_BATCH_SIZE].to(device))
                outputs.append(logits.double().cpu())
                status = getattr(solution, "status", None)
                if status is not None:
                    nonconverged += int((status != Status.CONVERGED).sum())
        if nonconverged:
            warnings.warn(f"{nonconverged} of {inputs.shape[0]} samples did not reach the equilibrium "
                          f"(tol={self.tol}, max_iter={self.max_iter}); their predictions use the last iterate",
                          NonConvergenceWarning, stacklevel=3)
        return torch.cat(outputs).numpy()

    def decision_function(self, X) -> np.ndarray:
        """Logits ``(n_samples, n_classes)``; binary: ``logit_1 - logit_0``, shape ``(n_samples,)``."""
        logits = self._logits(X)
        if logits.shape[1] == 2:
            return logits[:, 1] - logits[:, 0]
        return logits

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (softmax of the logits), columns ordered as ``classes_``."""
        logits = self._logits(X)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X) -> np.ndarray:
        logits = self._logits(X)
        peak = logits.max(axis=1, keepdims=True)
        return logits - peak - np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))

    def predict(self, X) -> np.ndarray:
        """The most probable label of ``classes_`` per sample."""
        logits = self._logits(X)  # first: it raises NotFittedError before classes_ is read
        return self.classes_[np.argmax(logits, axis=1)]
