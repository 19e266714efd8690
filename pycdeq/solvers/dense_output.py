"""Dense output of a per-sample integration: ``z(t)`` at any time, per sample, from the steps taken.

The interpolating adjoint (:class:`~pycdeq.solvers.ode_adjoint.InterpolatingAdjoint`) reads the
forward state at the backward solve's stage times. Every sample has its own step grid, so
:class:`DenseOutput` keeps, after each loop iteration of the forward solve, every sample's
last accepted ``(t, z, dz/dt)``: a sample that rejected its step or had already stopped
repeats its previous point. Between a sample's consecutive distinct points ``t_i < t_(i+1)``
the state is the cubic Hermite interpolant of ``z`` and ``dz/dt`` at both ends
(``theta = (t - t_i) / h``, ``h = t_(i+1) - t_i``):

    z(t) = (2 theta^3 - 3 theta^2 + 1) z_i + (theta^3 - 2 theta^2 + theta) h k_i
           + (3 theta^2 - 2 theta^3) z_(i+1) + (theta^3 - theta^2) h k_(i+1).

It matches the method at every step end (values and derivatives), is continuous with a
continuous derivative, and its error is ``O(h^4)`` per step: at least the order of VCAB3's
own continuous extension (order 3) and of the local error the controller keeps within the
tolerance for BS3; for the fifth-order methods (Tsit5, Dopri5) it is a lower-order
interpolant than their own, so the backward solve reads ``z`` a little less accurately than
the steps computed it (SciMLSensitivity uses Tsit5's fourth-order free interpolant there).
The same formula serves every method, so the adjoint needs nothing from the stepper.

Times before the first point or after a sample's last one return that end point (a sample
that stopped before ``t1`` is held at its last state, as its forward solution was).
Memory: two state-sized tensors per loop iteration.
"""

from __future__ import annotations

from typing import List

import torch


class DenseOutput:
    """Records ``(t, z, k)`` per loop iteration (:meth:`record`), then evaluates ``z(t)``."""

    def __init__(self):
        self._times: List[torch.Tensor] = []
        self._states: List[torch.Tensor] = []
        self._slopes: List[torch.Tensor] = []
        self._stacked = None

    def record(self, t: torch.Tensor, z: torch.Tensor, k: torch.Tensor) -> None:
        """Every sample's current accepted point: ``t`` ``(batch,)``, ``z`` and ``k = dz/dt``
        ``(batch, dim)``. Stored detached (the adjoint differentiates ``f`` at ``z(t)``, not
        the interpolant)."""
        self._times.append(t.detach())
        self._states.append(z.detach())
        self._slopes.append(k.detach())
        self._stacked = None

    def _stack(self):
        if self._stacked is None:
            if not self._times:
                raise RuntimeError("DenseOutput has no recorded points")
            # (batch, points) times, non-decreasing along each row; (points, batch, dim) states.
            self._stacked = (torch.stack(self._times, dim=1).contiguous(), torch.stack(self._states),
                             torch.stack(self._slopes))
        return self._stacked

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """The state of every sample at time ``t`` (a 0-d or one-element tensor), ``(batch, dim)``."""
        times, states, slopes = self._stack()
        batch, points = times.shape
        if points == 1:
            return states[0]
        query = t.reshape(1, 1).to(times.dtype).expand(batch, 1).contiguous()
        # The last point at or before t; the interval to the next point (clamped to the last one).
        left = (torch.searchsorted(times, query, right=True)[:, 0] - 1).clamp(0, points - 2)
        right = left + 1
        rows = torch.arange(batch, device=times.device)
        t_left, t_right = times[rows, left], times[rows, right]
        h = t_right - t_left
        # theta in [0, 1]: beyond a sample's last distinct point it holds that point (h = 0: theta = 1).
        theta = torch.where(h > 0, (query[:, 0] - t_left) / torch.where(h > 0, h, torch.ones_like(h)),
                            torch.ones_like(h)).clamp(0.0, 1.0)
        dtype = states.dtype
        theta, h = theta.to(dtype)[:, None], h.to(dtype)[:, None]
        theta2, theta3 = theta * theta, theta * theta * theta
        z_left, z_right = states[left, rows], states[right, rows]
        k_left, k_right = slopes[left, rows], slopes[right, rows]
        return ((2 * theta3 - 3 * theta2 + 1) * z_left + (theta3 - 2 * theta2 + theta) * h * k_left
                + (3 * theta2 - 2 * theta3) * z_right + (theta3 - theta2) * h * k_right)
