"""One explicit Runge-Kutta step on a batch, with per-sample step sizes.

The stepper is pure maths: given ``t`` (per sample, or ``None`` for an autonomous field),
the state ``y``, its derivative ``k = F(t, y)`` and step sizes ``h`` (per sample), it returns
``y_new``, ``k_new = F(t + h, y_new)`` and the embedded error estimate. Which samples accept
their step, and what ``h`` comes next, is the controller's business (:mod:`.controller`), and
which samples are still running is the loop's (:mod:`.steady_state`, :mod:`.integrate`).

``k_new`` is always returned because both loops need it: it is the next step's first stage,
and for the steady-state solve it *is* the residual ``fn(z) - z`` of the new state. With an
FSAL tableau it comes free with the last stage; otherwise it costs one extra evaluation.

Autograd: the stages are built out of place (the one in-place ``add_`` acts on a fresh
accumulator whose old value autograd never needs), so the ``Unrolled`` adjoint and
``integrate(adjoint="backprop")`` differentiate through the steps. The error estimate is
computed without autograd: it only steers the step size, which is treated as a constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch

from .tableaus import ButcherTableau

# rhs(t, y): t is (batch,) in y's dtype (or None for autonomous fields), y is (batch, dim).
FlatField = Callable[[Optional[torch.Tensor], torch.Tensor], torch.Tensor]


def _nonzero(weights: Sequence[float]) -> Tuple[Tuple[int, float], ...]:
    return tuple((j, float(w)) for j, w in enumerate(weights) if w != 0.0)


def _weighted_sum(terms: Tuple[Tuple[int, float], ...], ks) -> torch.Tensor:
    """``sum_j w_j k_j`` over the non-zero weights (at least one)."""
    (j0, w0), rest = terms[0], terms[1:]
    acc = ks[j0] * w0 if w0 != 1.0 else ks[j0].clone()
    for j, w in rest:
        acc.add_(ks[j], alpha=w)
    return acc


def secant(k_a: torch.Tensor, k_b: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||k_a - k_b|| / ||y_a - y_b||`` (0 where the points coincide)."""
    dy = torch.linalg.vector_norm(y_a - y_b, dim=1)
    dk = torch.linalg.vector_norm(k_a - k_b, dim=1)
    return torch.where(dy > 0, dk / dy.clamp_min(torch.finfo(dy.dtype).tiny), torch.zeros_like(dy))


@dataclass
class StepResult:
    y: torch.Tensor  #: proposed new state, every sample (accepted or not)
    k: torch.Tensor  #: F(t + h, y): the next step's first stage
    error: Optional[torch.Tensor]  #: h * sum_i e_i k_i (no autograd), None for fixed-step methods
    evaluations: int  #: calls of F on the batch
    #: per-sample estimate of the largest |eigenvalue| of dF/dy met in the step (no autograd),
    #: from two stages at the same time; None when the tableau has no such pair.
    stiffness: Optional[torch.Tensor] = None
    #: per-sample power of ``h`` in ``error`` when it varies (a multistep method's start);
    #: None: the method's fixed ``error_order``.
    error_order: Optional[torch.Tensor] = None


class RungeKutta:
    """The explicit stepper for one tableau; coefficients are read once, zeros dropped."""

    def __init__(self, tableau: ButcherTableau):
        self.tableau = tableau
        self._rows = tuple(_nonzero(row) for row in tableau.a)
        self._c = tuple(float(c) for c in tableau.c)
        self._b = _nonzero(tableau.b)
        self._error = _nonzero(tableau.error) if tableau.error is not None else None
        self._fsal = tableau.fsal
        # Two last stages at the same time (Tsit5, Dopri5): their secant estimates the
        # Jacobian's largest eigenvalue, as in Hairer's stiffness detection for DOPRI5.
        self._stiffness_pair = self._fsal and tableau.stages >= 3 and tableau.c[-2] == tableau.c[-1]

    def step(self, rhs: FlatField, t: Optional[torch.Tensor], y: torch.Tensor, k1: torch.Tensor,
             dt: torch.Tensor, *, stiffness: bool = False) -> StepResult:
        """One step of size ``dt`` (per sample, any float dtype) from ``(t, y, k1)``. Stage
        times are formed in the state's dtype, the dtype ``rhs`` receives them in.
        ``stiffness=True`` also returns the stage-pair stiffness estimate where the tableau
        has one."""
        h_flat = dt.to(y.dtype)
        h = h_flat[:, None]
        if t is not None:
            t = t.to(y.dtype)
        ks = [k1]
        evaluations = 0
        y_new = y_prev_stage = None
        for i in range(1, self.tableau.stages):
            row = self._rows[i]
            y_stage = torch.addcmul(y, h, _weighted_sum(row, ks)) if row else y
            t_stage = None if t is None else t + self._c[i] * h_flat
            ks.append(rhs(t_stage, y_stage))
            evaluations += 1
            y_prev_stage, y_new = y_new, y_stage
        if self._fsal:
            # The last stage was evaluated at y + h sum_j b_j k_j = y_new: reuse it.
            assert y_new is not None, "an FSAL tableau has two or more stages"
            k_new = ks[-1]
        else:
            y_new = torch.addcmul(y, h, _weighted_sum(self._b, ks))
            k_new = rhs(None if t is None else t + h_flat, y_new)
            evaluations += 1
        error = None
        estimate = None
        with torch.no_grad():
            if self._error is not None:
                error = _weighted_sum(self._error, [k.detach() for k in ks]).mul_(h)
            if stiffness and self._stiffness_pair and y_prev_stage is not None:
                estimate = secant(ks[-1], ks[-2], y_new, y_prev_stage)
        return StepResult(y_new, k_new, error, evaluations, estimate)

    def start(self, k: torch.Tensor, dt: torch.Tensor) -> None:
        """A one-step method keeps no history: nothing to prepare before the first step."""

    def commit(self, take: torch.Tensor) -> None:
        """A one-step method keeps no history: nothing to do when samples accept a step."""
