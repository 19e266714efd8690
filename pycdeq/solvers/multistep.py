"""The variable-step, variable-order Adams-Bashforth stepper behind ``VCAB3``.

An Adams-Bashforth step integrates the polynomial ``p`` that interpolates the last ``k``
derivatives, per sample. In Newton form over the sample's own past times ``t_n``,
``t_n - h1``, ``t_n - h1 - h2`` (``s = t - t_n``):

    p(s)  = f_n + s d1 + s (s + h1) d2,       d1 = f[t_n, t_n-1],  d2 = f[t_n, t_n-1, t_n-2]
    y_new = y_n + int_0^h p = y_n + h (f_n + (h / 2) d1 + (h^2 / 3 + h1 h / 2) d2)

(Hairer, Norsett & Wanner, *Solving ODEs I*, III.5). A sample runs at order
``k = min(accepted steps + 1, 3)``: Euler for its first step, AB2 for its second, AB3 from then
on, so the method needs no Runge-Kutta start and every step costs one evaluation,
``F(t + h, y_new)``, which is also the next step's ``f_n`` (as FSAL).

Error estimate (Milne's device, the predictor-corrector difference of an ABM code): adding the
new derivative ``f_new`` as an interpolation node raises the polynomial's degree by one, and
the integral of the change is the difference between this step and the next-order
Adams-Moulton step,

    err = (f_new - p(h)) * int_0^h w(s) ds / w(h),     w(s) = prod over the k nodes of (s - node),

an estimate of the local error ``O(h^(k+1))`` that costs no evaluation. ``StepResult.error_order``
carries ``k + 1`` per sample so the controller's exponent follows the order during the start.

History: the stepper is made per solve (``VCAB3.stepper()``) and keeps each sample's two
previous derivatives and step sizes; the loops call :meth:`AdamsBashforth.commit` with the
samples that accepted their step, and only those shift their history (a rejected step retries
from the same history with a smaller ``h``; a frozen sample, stepping with ``h = 0``, keeps
its). Everything is out of place, so autograd can differentiate through the steps.
"""

from __future__ import annotations

from typing import Optional

import torch

from .runge_kutta import FlatField, StepResult

#: Largest ``h * lam`` for a real eigenvalue ``-lam`` at which constant-step AB3 is stable.
AB3_STABILITY_BOUNDARY = 6.0 / 11.0


class AdamsBashforth:
    """Per-solve stepper of VCAB3 (orders 1 to 3). Same ``step`` contract as ``RungeKutta``."""

    max_order = 3

    def __init__(self):
        self._f1 = self._f2 = None  # f_{n-1}, f_{n-2}: (batch, dim), zeros until filled
        self._h1 = self._h2 = None  # the sample's last two accepted step sizes (time dtype)
        self._count = None  # accepted steps per sample
        self._pending = None  # (f_n, h) of the last step, for commit

    def _ensure_history(self, k: torch.Tensor, h: torch.Tensor) -> None:
        if self._count is None:
            self._f1 = torch.zeros_like(k)
            self._f2 = torch.zeros_like(k)
            # 1 (not 0) keeps the unused divided differences finite; their weights are 0.
            self._h1 = torch.ones_like(h)
            self._h2 = torch.ones_like(h)
            self._count = torch.zeros(h.shape, dtype=torch.long, device=h.device)

    def start(self, k: torch.Tensor, dt: torch.Tensor) -> None:
        """Allocate the history before the first step (so that every step is the same
        computation: under torch.compile, one graph)."""
        self._ensure_history(k, dt)

    def step(self, rhs: FlatField, t: Optional[torch.Tensor], y: torch.Tensor, k1: torch.Tensor,
             dt: torch.Tensor, *, stiffness: bool = False) -> StepResult:
        """One step of size ``dt`` (per sample) from ``(t, y, f_n = k1)`` at each sample's order.
        ``stiffness`` is accepted for the common contract; AB has no stage pair to estimate it."""
        self._ensure_history(k1, dt)
        h, h1, h2 = dt, self._h1, self._h2
        h12 = h1 + h2
        order = (self._count + 1).clamp(max=self.max_order)
        second = (order >= 2).to(h.dtype)
        third = (order >= 3).to(h.dtype)
        # Per-sample coefficients in the time dtype, converted to the state's dtype in one go:
        # the divided differences' denominators, the step's weights of d1 and d2, the same for
        # p(h) - f_n (the old polynomial at the new time) and the error weight int w / w(h).
        weight = torch.where(
            order == 1, h / 2,
            torch.where(order == 2,
                        h * (h / 3 + h1 / 2) / (h + h1),
                        h * (h * h / 4 + (h1 + h12) * h / 3 + h1 * h12 / 2) / ((h + h1) * (h + h12))))
        coefficients = torch.stack([1 / h1, 1 / h2, 1 / h12, h, second * h / 2, third * (h * h / 3 + h1 * h / 2),
                                    second * h, third * h * (h + h1), weight], dim=1).to(y.dtype)
        inv_h1, inv_h2, inv_h12, step, c1, c2, e1, e2, weight = coefficients[:, :, None].unbind(dim=1)
        d1 = (k1 - self._f1) * inv_h1
        d2 = (d1 - (self._f1 - self._f2) * inv_h2) * inv_h12
        y_new = torch.addcmul(y, step, k1 + c1 * d1 + c2 * d2)
        t_new = None if t is None else t.to(y.dtype) + h.to(y.dtype)
        k_new = rhs(t_new, y_new)
        with torch.no_grad():
            extrapolated = k1 + e1 * d1 + e2 * d2
            error = (k_new.detach() - extrapolated.detach()).mul_(weight)
        self._pending = (k1, h)
        return StepResult(y_new, k_new, error, 1, None, error_order=order + 1)

    def commit(self, take: torch.Tensor) -> None:
        """Shift the history of the samples that accepted the last step."""
        f_n, h = self._pending
        column = take[:, None]
        self._f2 = torch.where(column, self._f1, self._f2)
        self._f1 = torch.where(column, f_n, self._f1)
        self._h2 = torch.where(take, self._h1, self._h2)
        self._h1 = torch.where(take, h, self._h1)
        self._count = self._count + take.long()
        self._pending = None
