"""The continuous adjoints of :func:`pycdeq.integrate` (and of the Neural ODE layer), as options.

``integrate(..., adjoint=...)`` takes ``"backprop"`` (autograd through the steps) or one of
the continuous adjoints below (optimise-then-discretise). Both integrate, backwards in time
from ``t1`` to ``t0``, the adjoint ``a(t) = dL/dz(t)`` and the parameter gradient ``g``:

    da/dt = -a^T df/dz,      dg/dt = -a^T df/dtheta,      a(t1) = dL/dz(t1),  g(t1) = 0,

one vector-Jacobian product of ``f`` per stage, as one system for the whole batch (a single
time and step size: the parameters couple the samples). They differ in where ``z(t)`` comes
from:

* :class:`BacksolveAdjoint` (``torchdiffeq.odeint_adjoint``, Chen et al. 2018): ``z`` is
  integrated backwards alongside ``(a, g)`` from ``z(t1)``. Constant memory; on dynamics that
  are unstable backwards the recomputed ``z`` can drift from the forward one.
* :class:`InterpolatingAdjoint` (SciMLSensitivity's ``InterpolatingAdjoint``, the paper's
  Neural ODE baseline): the forward pass keeps its dense output, and the backward pass reads
  ``z(t)`` from it. Memory grows with the forward steps (two state-sized tensors per step);
  no backward integration of ``z``, so no drift and one state fewer in the backward system.
  The dense output is the cubic Hermite interpolant of each sample's accepted steps
  (:mod:`.dense_output`).

``seminorm``: whether the backward step-size control measures the error of ``z`` and ``a``
only (``True``, Kidger, Chen & Lyons 2021: ``g`` never feeds back into the dynamics, so its
error need not limit the step) or of the whole adjoint state including ``g`` (``False``, as
torchdiffeq's and SciMLSensitivity's defaults and the paper's baseline do). The backward
solve uses the forward method with its tolerances, step budget and controller.

Strings: ``"backsolve"`` is ``BacksolveAdjoint()`` and ``"interpolating"`` is
``InterpolatingAdjoint()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Union


@dataclass(frozen=True)
class ContinuousAdjoint:
    """Options of a continuous adjoint (the base of :class:`BacksolveAdjoint` and
    :class:`InterpolatingAdjoint`): ``seminorm=True`` leaves the parameter-gradient
    accumulators out of the backward solve's error norm."""

    seminorm: bool = True

    name: ClassVar[str]
    #: Whether the backward solve reads ``z(t)`` from the forward pass's dense output.
    interpolating: ClassVar[bool]

    def __post_init__(self):
        if type(self) is ContinuousAdjoint:
            raise TypeError("ContinuousAdjoint is a base class: use BacksolveAdjoint or InterpolatingAdjoint")
        if not isinstance(self.seminorm, bool):
            raise TypeError(f"seminorm must be a bool, got {type(self.seminorm).__name__}")


@dataclass(frozen=True)
class BacksolveAdjoint(ContinuousAdjoint):
    """Continuous adjoint that recomputes ``z(t)`` backwards from ``z(t1)`` (constant memory)."""

    name: ClassVar[str] = "backsolve"
    interpolating: ClassVar[bool] = False


@dataclass(frozen=True)
class InterpolatingAdjoint(ContinuousAdjoint):
    """Continuous adjoint that reads ``z(t)`` from the forward pass's dense output."""

    name: ClassVar[str] = "interpolating"
    interpolating: ClassVar[bool] = True


#: The names ``integrate`` and ``NeuralODE`` accept for ``adjoint``.
ADJOINT_NAMES = ("backprop", "backsolve", "interpolating")
_BY_NAME: Dict[str, ContinuousAdjoint] = {"backsolve": BacksolveAdjoint(), "interpolating": InterpolatingAdjoint()}


def resolve_adjoint(adjoint) -> Union[str, ContinuousAdjoint]:
    """``"backprop"``, or the continuous adjoint that ``adjoint`` (a name or an option) stands for."""
    if isinstance(adjoint, ContinuousAdjoint):
        return adjoint
    if not isinstance(adjoint, str):
        raise TypeError(f"adjoint must be one of {', '.join(map(repr, ADJOINT_NAMES))}, a BacksolveAdjoint or an "
                        f"InterpolatingAdjoint; got {type(adjoint).__name__}")
    if adjoint not in ADJOINT_NAMES:
        raise ValueError(f"adjoint must be one of {', '.join(map(repr, ADJOINT_NAMES))}; got {adjoint!r}")
    return _BY_NAME[adjoint] if adjoint in _BY_NAME else adjoint
