"""The continuous DEQ solve: integrate ``dz/dt = fn(z) - z`` from ``t = 0`` to steady state.

A fixed point of ``fn`` is an equilibrium of this ODE, and every explicit Runge-Kutta step
maps an equilibrium to itself, so integrating until the right-hand side ``fn(z) - z``
vanishes finds the fixed point. Each sample is its own ODE: it has its own time, step size,
accept/reject decisions and status, and stops when it passes the termination rule
(:class:`~pycdeq.solvers.termination.Termination`) on ``||fn(z) - z||``, which is exactly
the ODE's right-hand side, so the test needs no extra evaluation.

The loop is :func:`.adaptive.run`; this module is its goal, :class:`SteadyState`: ``z`` is
the last accepted state and ``k = fn(z) - z`` its residual; the termination rule is applied
to every accepted state (``SampleTracker``), which decides which samples still run. A
sample whose step size underflows stops with ``DT_MIN``; one that exhausts ``max_steps``
(accepted + rejected) with ``MAX_ITERS``.

Step size: the method's error controller, capped by a stability limit
(:func:`~pycdeq.solvers.controller.stability_limit`) from a running per-sample estimate of
the stiffest eigenvalue of ``J - I``: the second stage-pair secant of the step when the
tableau has two stages at the end time (Tsit5, Dopri5), else the secant between accepted
states. Without it an explicit method parks the stiffest mode on the edge of its stability
region and the residual stalls at a floor set by the integrator tolerance.

Cost: one evaluation of ``fn`` for the initial residual, the initial step selection (unless
``dt0`` is given), then ``stages - 1`` per step with FSAL tableaux (one with ``VCAB3``), on
the whole batch.
"""

from __future__ import annotations

from typing import Tuple

import torch

from . import adaptive
from .base import FlatMap
from .controller import initial_step, stability_limit
from .runge_kutta import secant
from .solution import SolverRecord, Status
from .tracker import SampleTracker


class SteadyState(adaptive.Goal):
    """The goal of a continuous DEQ solve: every sample runs until it passes its
    termination test; the step is capped by the stability limit (module docstring)."""

    def __init__(self, tracker: SampleTracker, stability_factor, stability_boundary: float, tdtype):
        self.tracker = tracker
        self.stability_factor = stability_factor
        self.stiffness = stability_factor is not None
        self.boundary = stability_boundary
        # Running max of the stiffness estimate, per sample (allocated here, not on the first
        # step: under torch.compile a step that sometimes allocates would compile twice).
        self.rho = torch.zeros(tracker.status.shape, dtype=tdtype, device=tracker.status.device)
        self.tdtype = tdtype

    def running(self) -> torch.Tensor:
        return self.tracker.active

    def field_time(self, t):
        return None  # dz/dt = fn(z) - z is autonomous

    def limit(self, dt_next, dt, take, clipped, result, y, k):
        if self.stability_factor is None:
            return dt_next
        with torch.no_grad():
            estimate = result.stiffness if result.stiffness is not None else secant(result.k, k, result.y, y)
            estimate = estimate.to(self.tdtype)
            rho = self.rho
            self.rho = torch.where(take & torch.isfinite(estimate), torch.maximum(rho, estimate), rho)
            return torch.minimum(dt_next, stability_limit(self.rho, self.boundary, self.stability_factor))

    def record(self, step, take, clipped, y, k, t) -> None:
        self.tracker.observe(step, y, k + y)

    def stop(self, mask: torch.Tensor) -> None:
        self.tracker.status = torch.where(mask, torch.full_like(self.tracker.status, Status.DT_MIN),
                                          self.tracker.status)


def solve_steady_state(method, fn: FlatMap, z0: torch.Tensor, args: Tuple[torch.Tensor, ...] = ()) -> SolverRecord:
    """Run ``method`` (an :class:`~pycdeq.solvers.ode.ODEMethod`) on the flat map ``fn(z, *args)``
    from ``z0``."""
    tracker = SampleTracker(method.termination, z0)
    batch, device = z0.shape[0], z0.device
    tdtype = adaptive.time_dtype(device)

    def residual_field(_t, z):
        return fn(z, *args) - z

    fz = fn(z0, *args)
    k = fz - z0
    nfe = 1
    tracker.observe(0, z0, fz)
    t = torch.zeros(batch, dtype=tdtype, device=device)
    zeros = torch.zeros(batch, dtype=torch.long, device=device)
    loop = adaptive.LoopResult(z0, k, t, zeros, zeros, nfe=0, steps=0)
    # A batch already at steady state (or with no budget) returns z0 itself: no more calls.
    if method.max_steps > 0 and bool(tracker.active.any()):
        tolerances = method.tolerances()
        if method.initial_dt is None:
            dt, evaluations = initial_step(residual_field, None, z0, k, rtol=tolerances.rtol, atol=tolerances.atol,
                                           error_order=method.error_order, time_dtype=tdtype)
            nfe += evaluations
        else:
            dt = torch.full((batch,), float(method.initial_dt), dtype=tdtype, device=device)
        goal = SteadyState(tracker, method.stability_factor, method.stability_boundary, tdtype)
        loop = adaptive.run(goal, method.stepper(), method.controller, tolerances, method.error_order,
                            residual_field, z0, k, t, dt, max_steps=method.max_steps,
                            interval=method.termination.check_interval(device))
    z, residual, status = tracker.finish(loop.y, method.max_steps)
    return SolverRecord(z=z, residual=residual, status=status, iterations=tracker.iterations,
                        nfe=nfe + loop.nfe, steps=loop.steps, accepted_steps=loop.accepted,
                        rejected_steps=loop.rejected, t=loop.t)
