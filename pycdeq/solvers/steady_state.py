"""The continuous DEQ solve: integrate ``dz/dt = fn(z) - z`` from ``t = 0`` to steady state.

A fixed point of ``fn`` is an equilibrium of this ODE, and every explicit Runge-Kutta step
maps an equilibrium to itself, so integrating until the right-hand side ``fn(z) - z``
vanishes finds the fixed point. Each sample is its own ODE: it has its own time, step size,
accept/reject decisions and status, and stops when it passes the termination rule
(:class:`~pycdeq.solvers.termination.Termination`) on ``||fn(z) - z||``, which is exactly
the ODE's right-hand side, so the test needs no extra evaluation.

Loop invariants, per sample: ``z`` is the last accepted state and ``k = fn(z) - z`` its
residual; the termination rule is applied to every accepted state (``SampleTracker``); a
sample that stops is frozen bitwise (``torch.where``), steps with ``h = 0`` from then on (so
``fn`` sees exactly its final state), and its step size and controller memory no longer
change. A sample whose step size underflows stops with ``DT_MIN``; one that exhausts
``max_steps`` (accepted + rejected) with ``MAX_ITERS``.

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

from typing import Callable

import torch

from ._state import SampleTracker
from .controller import initial_step, stability_limit, underflow
from .runge_kutta import secant
from .solution import Solution, Status


def time_dtype(device: torch.device) -> torch.dtype:
    """Times and step sizes are kept in float64 where the device has it (they are tiny
    ``(batch,)`` vectors; float32 times lose steps near large ``t``)."""
    return torch.float32 if device.type == "mps" else torch.float64


def solve_steady_state(method, fn: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor) -> Solution:
    """Run ``method`` (an ODE options object) on the flat map ``fn`` from ``z0``."""
    termination = method.termination
    stepper = method.stepper()
    controller = method.controller()
    stability = getattr(method, "stability_factor", None)
    boundary = method.stability_boundary
    tracker = SampleTracker(termination, z0)
    interval = termination.check_interval(z0.device)
    batch, device = z0.shape[0], z0.device
    tdtype = time_dtype(device)

    def residual_field(_t, z):
        return fn(z) - z

    z = z0
    fz = fn(z)
    k = fz - z
    nfe = 1
    tracker.observe(0, z, fz)
    t = torch.zeros(batch, dtype=tdtype, device=device)
    accepted = torch.zeros(batch, dtype=torch.long, device=device)
    rejected = torch.zeros_like(accepted)
    step = 0
    # A batch already at steady state (or with no budget) returns z0 itself: no more calls.
    if method.max_steps > 0 and bool(tracker.active.any()):
        if method.initial_dt is None:
            dt, evaluations = initial_step(residual_field, None, z, k, controller, tdtype)
            nfe += evaluations
        else:
            dt = torch.full((batch,), float(method.initial_dt), dtype=tdtype, device=device)
        prev_ratio = controller.initial_state(dt)
        rho = torch.zeros_like(dt)  # running max of the stiffness estimate
        while step < method.max_steps:
            running = tracker.active
            h = torch.where(running, dt, torch.zeros_like(dt))
            result = stepper.step(residual_field, None, z, k, h, stiffness=stability is not None)
            nfe += result.evaluations
            step += 1
            ratio = None if result.error is None else controller.error_ratio(result.error, z, result.y)
            accept, dt_next, prev_next = controller.adapt(h, ratio, prev_ratio, result.error_order)
            take = running & accept
            stepper.commit(take)
            if stability is not None:
                with torch.no_grad():
                    estimate = result.stiffness if result.stiffness is not None \
                        else secant(result.k, k, result.y, z)
                    estimate = estimate.to(tdtype)
                    rho = torch.where(take & torch.isfinite(estimate), torch.maximum(rho, estimate), rho)
                    dt_next = torch.minimum(dt_next, stability_limit(rho, boundary, stability))
            z = torch.where(take[:, None], result.y, z)
            k = torch.where(take[:, None], result.k, k)
            t = torch.where(take, t + h, t)
            accepted = accepted + take.long()
            rejected = rejected + (running & ~accept).long()
            dt = torch.where(running, dt_next, dt)
            prev_ratio = torch.where(running, prev_next, prev_ratio)
            tracker.observe(step, z, k + z)
            too_small = tracker.active & underflow(dt, t, controller.dt_min, 1.0, z0.dtype)
            tracker.status = torch.where(too_small, torch.full_like(tracker.status, Status.DT_MIN),
                                         tracker.status)
            if step % interval == 0 and not bool(tracker.active.any()):
                break
    z, residual, status = tracker.finish(z, method.max_steps)
    return Solution(z=z, z0=z0, residual=residual, status=status, iterations=tracker.iterations,
                    nfe=nfe, steps=step, accepted_steps=accepted, rejected_steps=rejected, t=t)
