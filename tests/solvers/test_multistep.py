"""VCAB3: the variable-step Adams-Bashforth stepper and the method built on it.

Known answers: AB of order ``k`` integrates exactly any ``y' = F(t)`` with ``F`` a polynomial of
degree ``< k``, for *any* step sequence (it integrates the interpolating polynomial), so a
variable-step coefficient error shows up as a non-zero error on ``F = t^2``. On a smooth
non-linear problem with equal steps the global error converges at order 3, and the error
estimate scales like ``h^4``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pycdeq import VCAB3, GMRES, Status, Termination, integrate, solve
from pycdeq.solvers.multistep import AB3_STABILITY_BOUNDARY, AdamsBashforth

F64 = torch.float64


def field(t, y):  # y' = -t y^3, y(0) = 1: y = 1 / sqrt(1 + t^2)
    return -t[:, None] * y ** 3


def exact(t):
    return 1 / math.sqrt(1 + t * t)


def run_steps(stepper, rhs, t, y, steps, take=None):
    """Apply ``steps`` (a list of (batch,) step sizes), every sample accepting every step."""
    k = rhs(t, y)
    for h in steps:
        result = stepper.step(rhs, t, y, k, h)
        accept = torch.ones(y.shape[0], dtype=torch.bool) if take is None else take
        stepper.commit(accept)
        y = torch.where(accept[:, None], result.y, y)
        k = torch.where(accept[:, None], result.k, k)
        t = torch.where(accept, t + h, t)
    return t, y, result


def test_quadratic_forcing_is_integrated_exactly_for_any_step_sequence():
    rhs = lambda t, y: (t ** 2)[:, None].expand_as(y)  # noqa: E731
    stepper = AdamsBashforth()
    t0 = torch.zeros(2, dtype=F64)
    y0 = torch.zeros(2, 1, dtype=F64)
    # The first two steps run at orders 1 and 2 (not exact for t^2): start from the exact
    # values by taking those two steps tiny, then irregular steps, different per sample.
    h = [torch.tensor(v, dtype=F64) for v in ([1e-9, 2e-9], [1e-9, 1e-9], [0.3, 0.05], [0.1, 0.4],
                                             [0.7, 0.2], [0.05, 0.9], [0.4, 0.3])]
    t, y, _ = run_steps(stepper, rhs, t0, y0, h)
    torch.testing.assert_close(y[:, 0], t ** 3 / 3, rtol=1e-12, atol=1e-15)


def global_error(n):
    """Two start steps of h^2 (Euler's local error O(h^4), AB2's O(h^6)), then equal steps h.
    (Equal steps from the start would show order 2: one Euler step of size h leaves an
    O(h^2) error; the adaptive controller avoids that by starting small.)"""
    stepper = AdamsBashforth()
    h = 3.0 / n
    start = torch.full((1,), h * h, dtype=F64)
    rest = torch.full((1,), (3.0 - 2 * h * h) / (n - 2), dtype=F64)
    t, y, _ = run_steps(stepper, field, torch.zeros(1, dtype=F64), torch.ones(1, 1, dtype=F64),
                        [start, start] + [rest] * (n - 2))
    return abs(float(y) - exact(float(t)))


def test_global_error_converges_at_order_three():
    steps = [64, 128, 256, 512]
    h = np.array([3.0 / n for n in steps])
    slope, _ = np.polyfit(np.log(h), np.log([global_error(n) for n in steps]), 1)
    assert 2.75 < slope < 3.3, slope


def test_error_estimate_scales_like_h_to_the_fourth_and_matches_the_true_local_error():
    """After an exact start (history on the true solution), one AB3 step's estimate is close to
    its true local error (Milne's device), and both scale like h^4."""
    hs = np.array([0.1, 0.05, 0.025, 0.0125])
    estimates, errors = [], []
    for h in hs:
        stepper = AdamsBashforth()
        # Build history on the exact solution at t = 0.3 - 2h, 0.3 - h, 0.3.
        times = [0.3 - 2 * h, 0.3 - h]
        for s in times:
            ts = torch.full((1,), s, dtype=F64)
            ys = torch.full((1, 1), exact(s), dtype=F64)
            stepper.step(field, ts, ys, field(ts, ys), torch.full((1,), h, dtype=F64))
            stepper.commit(torch.ones(1, dtype=torch.bool))
        t = torch.full((1,), 0.3, dtype=F64)
        y = torch.full((1, 1), exact(0.3), dtype=F64)
        result = stepper.step(field, t, y, field(t, y), torch.full((1,), h, dtype=F64))
        assert int(result.error_order) == 4  # third order after two accepted steps
        estimates.append(abs(float(result.error)))
        errors.append(abs(float(result.y) - exact(0.3 + h)))
    slope, _ = np.polyfit(np.log(hs), np.log(estimates), 1)
    assert abs(slope - 4) < 0.3, slope
    np.testing.assert_allclose(estimates, errors, rtol=0.25)


def test_order_rises_with_accepted_steps_only_and_rejection_keeps_the_history():
    stepper = AdamsBashforth()
    t = torch.zeros(2, dtype=F64)
    y = torch.ones(2, 1, dtype=F64)
    k = field(t, y)
    h = torch.full((2,), 0.1, dtype=F64)
    orders = []
    take = torch.tensor([True, False])  # sample 1 rejects every step
    for _ in range(4):
        result = stepper.step(field, t, y, k, h)
        orders.append(result.error_order.tolist())
        stepper.commit(take)
        y = torch.where(take[:, None], result.y, y)
        k = torch.where(take[:, None], result.k, k)
        t = torch.where(take, t + h, t)
    # error_order = order + 1: sample 0 goes Euler, AB2, AB3, AB3; sample 1 stays at Euler.
    assert orders == [[2, 2], [3, 2], [4, 2], [4, 2]]
    # The rejecting sample's retries are the very first step again (no history leaked in).
    first = AdamsBashforth().step(field, torch.zeros(1, dtype=F64), torch.ones(1, 1, dtype=F64),
                                  field(torch.zeros(1, dtype=F64), torch.ones(1, 1, dtype=F64)), h[:1])
    torch.testing.assert_close(result.y[1:], first.y, rtol=0, atol=0)


def test_zero_step_leaves_a_sample_in_place_with_zero_error():
    stepper = AdamsBashforth()
    t, y, _ = run_steps(stepper, field, torch.zeros(2, dtype=F64), torch.ones(2, 1, dtype=F64),
                        [torch.full((2,), 0.1, dtype=F64)] * 3)
    result = stepper.step(field, t, y, field(t, y), torch.tensor([0.0, 0.1], dtype=F64))
    assert torch.equal(result.y[0], y[0]) and float(result.error[0].abs().max()) == 0.0
    assert result.evaluations == 1


def test_integrate_is_per_sample_and_lands_on_t1():
    lam = torch.tensor([[0.5], [3.0]], dtype=F64)
    rhs = lambda t, y: -lam * y  # noqa: E731
    traj = integrate(rhs, torch.ones(2, 1, dtype=F64), 2.0, VCAB3(rtol=1e-8, atol=1e-8, max_steps=5000))
    assert bool((traj.status == Status.CONVERGED).all()) and torch.equal(traj.t, torch.full((2,), 2.0, dtype=F64))
    # Measured max error 4.1e-7 (41 tol; rounding adds < 1e-13): 3x that.
    torch.testing.assert_close(traj.z, torch.exp(-2 * lam), rtol=0, atol=120 * 1e-8)
    # Every step costs one evaluation: the initial derivative, Hairer's trials, one per step.
    alone = integrate(rhs, torch.ones(2, 1, dtype=F64), 2.0, VCAB3(rtol=1e-8, atol=1e-8, max_steps=5000, dt0=0.01))
    assert alone.nfe == 1 + alone.steps
    # The stiffer sample takes more accepted steps than the other.
    assert int(traj.accepted_steps[1]) > int(traj.accepted_steps[0])


def test_continuous_deq_converges_per_sample_with_the_stability_cap():
    """A contraction whose ``J - I`` spectrum reaches -1.86: past AB3's real stability limit for
    h > 0.29. Each sample stops on its own test, at its own step, near the equilibrium."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 5, 5, generator=gen, dtype=F64))
    spectrum = torch.diag_embed(torch.linspace(-0.9, 0.9, 5, dtype=F64).expand(3, 5))
    factors = torch.tensor([0.3, 0.7, 0.95], dtype=F64)
    m = q @ spectrum @ q.transpose(1, 2) * factors[:, None, None]
    c = torch.randn(3, 5, generator=gen, dtype=F64)
    fn = lambda z: torch.einsum("bij,bj->bi", m, z) + c  # noqa: E731
    term = Termination(mode="abs", abstol=1e-7, norm="max")
    solution = VCAB3(rtol=1e-8, atol=1e-8, dt0=1.0, max_steps=3000, termination=term).solve_flat(fn, torch.zeros_like(c))
    assert bool(solution.converged.all())
    equilibrium = torch.linalg.solve(torch.eye(5, dtype=F64) - m, c)
    # |z - z*|_max <= |z - z*|_2 <= |r|_2 / (1 - q) <= sqrt(5) |r|_max / (1 - q).
    torch.testing.assert_close(solution.z, equilibrium, rtol=0, atol=math.sqrt(5) * 1e-7 / (1 - 0.95 * 0.9))
    assert bool((solution.iterations[1:] > solution.iterations[:-1]).all())
    assert solution.nfe == 1 + solution.steps  # dt0 given: no trial evaluations
    assert VCAB3().stability_boundary == AB3_STABILITY_BOUNDARY == pytest.approx(6 / 11)


def test_implicit_gradient_of_a_vcab3_deq_passes_gradcheck():
    gen = torch.Generator().manual_seed(3)
    w = (0.3 * torch.randn(4, 4, generator=gen, dtype=F64)).requires_grad_()
    x = torch.randn(2, 4, generator=gen, dtype=F64, requires_grad=True)
    method = VCAB3(rtol=1e-9, atol=1e-9, max_steps=5000, termination=Termination(mode="abs", abstol=1e-8))

    def layer(w, x):
        solution = solve(lambda z: torch.tanh(z @ w.T + x), torch.zeros_like(x), method,
                         adjoint=GMRES(rtol=1e-12, atol=0, max_iter=50))
        return solution.z

    assert torch.autograd.gradcheck(layer, (w, x), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)
