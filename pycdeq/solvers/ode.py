"""The public ODE methods: ``Tsit5``, ``Dopri5``, ``BS3``, ``VCAB3`` (adaptive) and ``Euler``, ``RK4`` (fixed).

An ODE method is a frozen dataclass of options, used two ways:

* as a DEQ solver, ``pycdeq.solve(fn, z0, Tsit5(...))``: it integrates ``dz/dt = fn(z) - z``
  per sample until the sample passes ``termination`` on ``||fn(z) - z||`` (a continuous DEQ,
  :mod:`.steady_state`), with the usual implicit adjoint;
* for a finite time, ``pycdeq.integrate(rhs, z0, t1, Tsit5(...))`` (:mod:`.integrate`); the
  ``termination`` and ``stability_factor`` options play no part there.

Two tolerances, two jobs. ``rtol``/``atol`` bound the integrator's local error per step
(:mod:`.controller`); ``termination`` decides when a sample is at steady state. Integration
error feeds into the residual, so a steady-state test as loose as the integrator leaves the
residual hovering around the threshold (``docs/continuous-solve.md``: every sample ran to the
step budget with the integrator at 1e-2 and the test at 5e-3).

**The rule** (checked at construction, ``ValueError`` otherwise): with ``tau`` the
steady-state tolerance (``abstol`` in mode ``"abs"``, ``reltol`` in ``"rel"``, the smaller of
the two in ``"norm"``), ``max(rtol, atol) * TOLERANCE_MARGIN <= tau`` (``TOLERANCE_MARGIN = 2``).
When ``termination`` is omitted it is ``Termination(mode="abs", abstol=5 * max(rtol, atol),
norm="max")``, and where pycdeq picks the integrator for a given steady-state tolerance (the
paper's models, the estimator) it picks ``tau / 5`` (:func:`integrator_tolerance`): stop
when every element of ``fn(z) - z`` is within ``tau`` (the prototype's 1e-3 / 5e-3
pairing). Absolute and element-wise because a relative test is fooled by a large
constant component (its ``||fn(z)||`` passes the test at ``t = 0``: diffrax #448) and an
``l2`` test's meaning changes with the state's size; ``mode="rel"`` (the paper's) remains
available for states whose components share one scale.

The rule is a guard, not the whole story: the worst residual floor measured came from
stiffness, not from the tolerance ratio (an explicit method parks the stiffest mode on the
edge of its stability region). The steady-state solve removes that floor with a stability
cap on the step (``stability_factor``, :func:`.controller.stability_limit`); with it, every
test problem converged even at a tolerance ratio of 1, so the margin of 2 is headroom. A
sample that still cannot reach its test reports ``MAX_ITERS``, never a silent success.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Tuple, Union

import torch

from .. import _checks
from .adaptive import Tolerances
from .base import FlatMap, Solver
from .controller import FixedStep, PIController, StepSizeController
from .multistep import AB3_STABILITY_BOUNDARY, AdamsBashforth
from .runge_kutta import RungeKutta
from .solution import SolverRecord
from .steady_state import solve_steady_state
from .tableaus import BS3 as _BS3
from .tableaus import DOPRI5 as _DOPRI5
from .tableaus import EULER as _EULER
from .tableaus import RK4 as _RK4
from .tableaus import TSIT5 as _TSIT5
from .tableaus import ButcherTableau
from .termination import Termination

#: The integrator tolerance times this must not exceed the steady-state tolerance.
TOLERANCE_MARGIN = 2.0
#: The default steady-state tolerance, in units of the integrator tolerance.
DEFAULT_TERMINATION_FACTOR = 5.0


def steady_state_tolerance(termination: Termination) -> float:
    """The tolerance ``tau`` of a steady-state test (the tightest one it applies)."""
    if termination.mode == "abs":
        return termination.abstol
    if termination.mode == "rel":
        return termination.reltol
    return min(termination.abstol, termination.reltol)


def integrator_tolerance(steady_state: float) -> float:
    """The integrator tolerance pycdeq pairs with a steady-state tolerance ``tau``:
    ``tau / DEFAULT_TERMINATION_FACTOR`` (the inverse of the default termination)."""
    return steady_state / DEFAULT_TERMINATION_FACTOR


class ODEMethod(Solver):
    """An ODE method: a stepper (Runge-Kutta tableau or multistep rule) and a step-size
    controller. As a :class:`Solver` it integrates ``dz/dt = fn(z) - z`` to steady state.

    Subclasses are frozen dataclasses with ``termination`` and ``max_steps`` fields.
    """

    max_steps: int
    controller: StepSizeController
    #: Steady-state solve only: cap the step at this fraction of the estimated stability
    #: limit (``None``: no cap).
    stability_factor: Optional[float] = None

    @abstractmethod
    def stepper(self) -> Union[RungeKutta, AdamsBashforth]:
        """A fresh stepper for one solve (a multistep stepper keeps per-sample history)."""

    @property
    @abstractmethod
    def initial_dt(self) -> Optional[float]:
        """The first step of every sample; ``None``: Hairer's selection per sample."""

    @property
    @abstractmethod
    def error_order(self) -> int:
        """Power of ``h`` in the local error estimate (the controller's exponent)."""

    @property
    @abstractmethod
    def stability_boundary(self) -> float:
        """Largest stable ``h * lam`` for a real eigenvalue ``-lam`` (the stability cap's scale)."""

    @abstractmethod
    def tolerances(self) -> Optional[Tolerances]:
        """The error norm's tolerances (``None``: a fixed-step method, no error estimate)."""

    def solve_flat(self, fn: FlatMap, z0: torch.Tensor, args: Tuple[torch.Tensor, ...] = ()) -> SolverRecord:
        """Integrate ``dz/dt = fn(z, *args) - z`` per sample to steady state (adds ``t``,
        ``accepted_steps``, ``rejected_steps`` to the record)."""
        return solve_steady_state(self, fn, z0, args)


def _check_common(method: ODEMethod) -> None:
    _checks.positive_int("max_steps", method.max_steps, allow_zero=True)
    if not isinstance(method.termination, Termination):
        raise TypeError(f"termination must be a Termination, got {type(method.termination).__name__}")


@dataclass(frozen=True)
class AdaptiveMethod(ODEMethod):
    """Options shared by the adaptive (embedded-error) methods; see the module docstring.

    ``termination=None`` is replaced at construction by the default derived from the
    tolerances (module docstring), so ``method.termination`` is always a ``Termination``.
    ``max_steps`` bounds accepted + rejected steps per solve. ``dt0=None`` picks each
    sample's first step by Hairer's algorithm (refined from a zero state; one to four
    evaluations); for a continuous DEQ ``dt0=1`` (the time scale of the ``-z`` term) saves
    another ~10 %. ``controller``: the step-size controller's options
    (:class:`~pycdeq.solvers.controller.PIController`: gains, safety, growth bounds and
    ``dt_min``, the step below which a sample stops with status ``DT_MIN``).
    ``stability_factor`` (steady-state solve only; ``None`` disables) caps the step at that
    fraction of the stability limit estimated for the sample.
    """

    rtol: float = 1e-3
    atol: float = 1e-3
    termination: Optional[Termination] = None  # type: ignore[assignment]  # resolved in __post_init__
    max_steps: int = 100
    dt0: Optional[float] = None
    controller: PIController = field(default_factory=PIController)
    stability_factor: Optional[float] = 0.8

    tableau: ClassVar[ButcherTableau]

    def __post_init__(self):
        _checks.positive("rtol", self.rtol, allow_zero=True)
        _checks.positive("atol", self.atol, allow_zero=True)
        if self.rtol == 0 and self.atol == 0:
            raise ValueError("rtol and atol cannot both be 0")
        if self.dt0 is not None:
            _checks.positive("dt0", self.dt0)
        if not isinstance(self.controller, PIController):
            raise TypeError(f"controller must be a PIController, got {type(self.controller).__name__}")
        if self.stability_factor is not None:
            _checks.in_range("stability_factor", self.stability_factor, 0.0, 1.0, low_open=True)
        tolerance = max(self.rtol, self.atol)
        termination = self.termination
        if termination is None:
            termination = Termination(mode="abs", abstol=DEFAULT_TERMINATION_FACTOR * tolerance, norm="max")
            object.__setattr__(self, "termination", termination)
        _check_common(self)
        tau = steady_state_tolerance(termination)
        if tolerance * TOLERANCE_MARGIN > tau:
            raise ValueError(
                f"the integrator tolerance max(rtol, atol) = {tolerance:g} is too loose for the "
                f"steady-state test (tolerance {tau:g} in mode {termination.mode!r}): integration "
                f"error keeps the residual above the threshold. Need max(rtol, atol) <= tau / "
                f"{TOLERANCE_MARGIN:g} = {tau / TOLERANCE_MARGIN:g}; tighten rtol/atol or loosen termination.")

    @property
    def initial_dt(self) -> Optional[float]:
        return self.dt0

    @property
    def error_order(self) -> int:
        order = self.tableau.error_order
        assert order is not None, f"the adaptive tableau {self.tableau.name} has an error estimate"
        return order

    @property
    def stability_boundary(self) -> float:
        return self.tableau.stability_boundary

    def tolerances(self) -> Tolerances:
        return Tolerances(self.rtol, self.atol)

    def stepper(self) -> Union[RungeKutta, AdamsBashforth]:
        return RungeKutta(self.tableau)


@dataclass(frozen=True)
class FixedStepMethod(ODEMethod):
    """Options of the fixed-step methods: step ``dt``, at most ``max_steps`` steps.

    As a DEQ solver, ``Euler(dt=1)`` is plain fixed-point iteration and ``Euler(dt<1)`` damped
    iteration. There is no integrator tolerance, hence no tolerance rule.
    """

    dt: float = 0.1
    termination: Termination = field(default_factory=Termination)
    max_steps: int = 1000

    # Constants of the class, not options: assigned without an annotation, so they are no
    # dataclass fields and keep the types ODEMethod declares for them.
    controller = FixedStep()
    stability_factor = None
    tableau: ClassVar[ButcherTableau]

    def __post_init__(self):
        _checks.positive("dt", self.dt)
        _check_common(self)

    def stepper(self) -> RungeKutta:
        return RungeKutta(self.tableau)

    @property
    def initial_dt(self) -> float:
        return self.dt

    @property
    def error_order(self) -> int:
        return self.tableau.order  # unused: no error estimate

    @property
    def stability_boundary(self) -> float:
        return self.tableau.stability_boundary

    def tolerances(self) -> None:
        return None


@dataclass(frozen=True)
class Tsit5(AdaptiveMethod):
    """Tsitouras' 5(4) pair, FSAL: 6 evaluations per step. The default choice."""

    tableau: ClassVar[ButcherTableau] = _TSIT5


@dataclass(frozen=True)
class Dopri5(AdaptiveMethod):
    """Dormand-Prince 5(4), FSAL: 6 evaluations per step (scipy's RK45, torchdiffeq's default)."""

    tableau: ClassVar[ButcherTableau] = _DOPRI5


@dataclass(frozen=True)
class BS3(AdaptiveMethod):
    """Bogacki-Shampine 3(2), FSAL: 3 evaluations per step; cheaper at loose tolerances."""

    tableau: ClassVar[ButcherTableau] = _BS3


@dataclass(frozen=True)
class VCAB3(AdaptiveMethod):
    """Variable-coefficient Adams-Bashforth of order 3 (the paper's CIFAR-10 method): one
    evaluation per step, Euler and AB2 for a sample's first two steps, error from the
    Adams-Moulton difference (:mod:`.multistep`). Cheapest per step, but its stability
    region is small (``h * lam <= 6/11`` on the real axis against Tsit5's 3.5), so on a stiff
    ``f`` it takes many short steps."""

    @property
    def error_order(self) -> int:
        return 4

    @property
    def stability_boundary(self) -> float:
        return AB3_STABILITY_BOUNDARY

    def stepper(self) -> AdamsBashforth:
        return AdamsBashforth()


@dataclass(frozen=True)
class Euler(FixedStepMethod):
    """Explicit Euler, 1 evaluation per step, order 1."""

    tableau: ClassVar[ButcherTableau] = _EULER


@dataclass(frozen=True)
class RK4(FixedStepMethod):
    """The classic 4-stage Runge-Kutta method, 4 evaluations per step, order 4."""

    tableau: ClassVar[ButcherTableau] = _RK4
