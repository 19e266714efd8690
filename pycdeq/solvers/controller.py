"""Step-size control, per sample: the error norm, the PI controller, the initial step.

Error norm. A step's local error estimate ``err`` is measured per sample, element-wise
against the mixed tolerance of that element,

    ratio = RMS_i( err_i / (atol + rtol * max(|y_i|, |y_new_i|)) ),

and the step is accepted when ``ratio <= 1``. The scaling is per element, so a large
constant component of a sample loosens the tolerance of that component only (a norm of the
whole state would let it swamp the others, the diffrax #448 failure mode).

PI control (Gustafsson; Söderlind's notation as in diffrax / torchode). With ``q`` the
tableau's ``error_order`` (error ``~ h^q``), the next step is ``h * factor`` with

    factor = clamp(safety * ratio_n ** (-(pcoeff + icoeff) / q) * ratio_prev ** (pcoeff / q),
                   factor_min, factor_max),

``ratio_prev`` being the ratio of the sample's last *accepted* step (floored at 1e-4, as in
Hairer's DOPRI5, so that one nearly exact step does not stall the next). ``pcoeff = 0`` is
plain integral (I) control. A non-finite ratio (NaN or Inf in a stage) rejects the step and
shrinks it by ``factor_min``. The controller computes for every sample; the loops apply the
result only to samples that are still running (a finished sample's step size is left alone,
so it cannot run off to infinity and be misreported).

Step-size underflow: a running sample whose next step is non-finite, below ``dt_min``, or
below ``16 eps |t|`` of the state's dtype (relative to the problem's time scale, where adding
it no longer moves ``t`` meaningfully) is stopped with status ``DT_MIN``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple, Union

import torch

from .. import _checks
from .runge_kutta import FlatField

_RATIO_FLOOR = 1e-4

#: The power of ``h`` in the local error: the method's fixed ``error_order``, or one per
#: sample where it varies (a multistep method's first steps).
ErrorOrder = Union[int, torch.Tensor]


def rms(v: torch.Tensor) -> torch.Tensor:
    """Per-sample root mean square of a flat ``(batch, dim)`` tensor."""
    return torch.linalg.vector_norm(v, dim=1) * (v.shape[1] ** -0.5)


def error_ratio(error: torch.Tensor, y: torch.Tensor, y_new: torch.Tensor, rtol: float, atol: float,
                columns: Optional[int] = None) -> torch.Tensor:
    """Per-sample RMS of ``error`` against the mixed tolerance (module docstring).

    ``columns``: how many leading columns enter the norm (``None``: all). The backsolve
    adjoint leaves out its parameter-gradient accumulators (a "seminorm", Kidger et al. 2021).
    """
    with torch.no_grad():
        if columns is not None:
            error, y, y_new = error[:, :columns], y[:, :columns], y_new[:, :columns]
        scale = torch.maximum(y.abs(), y_new.abs()).mul_(rtol).add_(atol)
        return rms(error / scale)


class StepSizeController(ABC):
    """Decides, per sample, whether a step is accepted and how long the next one is."""

    #: Whether the controller reads an error estimate (fixed-step methods have none).
    adaptive: ClassVar[bool]
    #: A running sample whose step falls to or below this stops with ``DT_MIN``.
    dt_min: float

    def initial_state(self, like: torch.Tensor) -> torch.Tensor:
        """``ratio_prev`` before the first accepted step: 1 (no proportional correction)."""
        return torch.ones(like.shape[0], dtype=like.dtype, device=like.device)

    @abstractmethod
    def adapt(self, dt: torch.Tensor, ratio: Optional[torch.Tensor], prev_ratio: torch.Tensor,
              order: ErrorOrder) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(accept, dt_next, prev_ratio_next)`` for every sample."""


@dataclass(frozen=True)
class PIController(StepSizeController):
    """PI step-size control (module docstring). The gains ``pcoeff=0.2, icoeff=0.8`` took
    15-20 % fewer evaluations on the MNIST-dense steady state than torchode's default 0.2/0.5;
    ``pcoeff=0`` is plain integral control."""

    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0
    pcoeff: float = 0.2
    icoeff: float = 0.8
    dt_min: float = 0.0

    adaptive: ClassVar[bool] = True

    def __post_init__(self):
        _checks.in_range("safety", self.safety, 0.0, 1.0, low_open=True)
        _checks.in_range("factor_min", self.factor_min, 0.0, 1.0, low_open=True, high_open=True)
        _checks.positive("factor_max", self.factor_max)
        if self.factor_max <= 1.0:
            raise ValueError(f"factor_max must be > 1, got {self.factor_max}")
        _checks.positive("pcoeff", self.pcoeff, allow_zero=True)
        _checks.positive("icoeff", self.icoeff)
        _checks.positive("dt_min", self.dt_min, allow_zero=True)

    def adapt(self, dt: torch.Tensor, ratio: Optional[torch.Tensor], prev_ratio: torch.Tensor,
              order: ErrorOrder) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if ratio is None:
            raise ValueError("PIController needs an error estimate; this method has none "
                             "(fixed-step methods use FixedStep)")
        with torch.no_grad():
            finite = torch.isfinite(ratio)
            accept = finite & (ratio <= 1.0)
            r = torch.where(finite, ratio, torch.ones_like(ratio)).clamp_min(1e-10)
            q = float(order) if isinstance(order, int) else order.to(r.dtype)
            factor = self.safety * r.pow(-(self.pcoeff + self.icoeff) / q)
            if self.pcoeff != 0.0:
                factor = factor * prev_ratio.pow(self.pcoeff / q)
            factor = torch.where(finite, factor, torch.full_like(factor, self.factor_min))
            factor = factor.clamp(self.factor_min, self.factor_max)
            dt_next = dt * factor.to(dt.dtype)
            prev_next = torch.where(accept, ratio.clamp_min(_RATIO_FLOOR), prev_ratio)
        return accept, dt_next, prev_next


@dataclass(frozen=True)
class FixedStep(StepSizeController):
    """The controller of fixed-step methods: every step is accepted, ``dt`` never changes."""

    dt_min: float = 0.0
    adaptive: ClassVar[bool] = False

    def adapt(self, dt, ratio, prev_ratio, order):
        return torch.ones_like(dt, dtype=torch.bool), dt, prev_ratio


def stability_limit(rho: torch.Tensor, boundary: float, factor: float) -> torch.Tensor:
    """Largest step that keeps ``h * rho`` at ``factor`` of the stability boundary.

    Used by the steady-state solve only. There an adaptive explicit method does not stop at
    the stability limit: as the residual shrinks, so does the error estimate, the step grows
    until the stiffest mode of ``J - I`` sits on the edge of the stability region, neither
    growing nor decaying, at an amplitude where its error estimate balances the tolerance.
    That mode is a residual floor of the size of the integrator tolerance (times up to ~100
    on a mildly stiff problem, measured): a sample never passes a steady-state test below
    it. Capping ``h`` at ``factor * boundary / rho`` (``rho`` the running maximum of the
    estimated largest eigenvalue magnitude) keeps every mode decaying (``|R| <= 0.3`` on the
    real axis for ``factor = 0.8``), removes the floor, and costs no evaluation.
    """
    return (factor * boundary) / rho.clamp_min(torch.finfo(rho.dtype).tiny)


def underflow(dt: torch.Tensor, t: torch.Tensor, dt_min: float, time_scale: float,
              state_dtype: torch.dtype) -> torch.Tensor:
    """(batch,) bool: the step size is non-finite, below ``dt_min``, or too small to move ``t``."""
    floor = 16.0 * torch.finfo(state_dtype).eps * torch.clamp(t.abs(), min=time_scale)
    return ~torch.isfinite(dt) | (dt <= dt_min) | (dt < floor)


def initial_step(rhs: FlatField, t0: Optional[torch.Tensor], y0: torch.Tensor, f0: torch.Tensor, *,
                 rtol: float, atol: float, error_order: int, time_dtype: torch.dtype,
                 columns: Optional[int] = None, refinements: int = 3) -> Tuple[torch.Tensor, int]:
    """Hairer, Nørsett & Wanner's starting step (Solving ODEs I, II.4), per sample.

    With ``sc = atol + rtol |y0|``, ``d0 = rms(y0/sc)``, ``d1 = rms(f0/sc)``: a trial Euler
    step ``h0 = 0.01 d0 / d1`` (``1e-6`` if either is tiny) estimates the second derivative
    ``d2 = rms((F(t0 + h0, y0 + h0 f0) - f0) / sc) / h0``, and the step is
    ``h = min(100 h0, (0.01 / max(d1, d2)) ** (1 / q))``.

    Refinement (ours): where the cap ``100 h0`` binds, the error-based estimate asks for a
    much larger step than the trial step could vouch for. That is the rule, not the exception,
    from ``y0 = 0`` (``d0 = 0`` gives ``h0 = 1e-6``, so ``h <= 1e-4``), which is how a DEQ or a
    Neural ODE starts, and the controller then spends four or five steps growing ``h`` tenfold
    at a time. So the estimate is repeated from ``h0 := h`` for those samples, at most
    ``refinements`` times, one evaluation each instead of one step each.

    Returns ``(h, evaluations)``.
    """
    with torch.no_grad():
        y0, f0 = y0.detach(), f0.detach()
        cols = (lambda v: v[:, :columns]) if columns is not None else (lambda v: v)
        scale = cols(y0).abs().mul(rtol).add_(atol)
        d0 = rms(cols(y0) / scale).to(time_dtype)
        d1 = rms(cols(f0) / scale).to(time_dtype)
        tiny = (d0 < 1e-5) | (d1 < 1e-5)
        h0 = torch.where(tiny, torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
        evaluations = 0
        refine = torch.ones_like(tiny)
        h = h0
        for attempt in range(refinements + 1):
            y1 = torch.addcmul(y0, h0.to(y0.dtype)[:, None], f0)
            f1 = rhs(None if t0 is None else t0 + h0.to(t0.dtype), y1).detach()
            evaluations += 1
            d2 = rms(cols(f1 - f0) / scale).to(time_dtype) / h0
            dmax = torch.maximum(d1, d2)
            h1 = torch.where(dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6),
                             (0.01 / dmax.clamp_min(1e-300)) ** (1.0 / error_order))
            h_new = torch.minimum(100 * h0, h1)
            # A non-finite trial (NaN from a too large h0) keeps the previous, finite estimate.
            refine = refine & torch.isfinite(h_new)
            h = torch.where(refine, h_new, h)
            refine = refine & (h1 > 100 * h0)
            if attempt == refinements or not bool(refine.any()):
                break
            h0 = torch.where(refine, h, h0)
        return h, evaluations
