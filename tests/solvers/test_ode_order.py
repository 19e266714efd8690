"""Each Runge-Kutta tableau shows its order of convergence, and its error estimate its order.

The test problem is non-linear and non-autonomous (so the stage times and the non-linear
order conditions are exercised) and has a known solution:

    y' = -t y^3,  y(0) = 1   =>   y(t) = 1 / sqrt(1 + t^2).

The global error at ``t = 3`` after ``n`` equal steps is fitted as ``C h^p`` (least squares in
log-log); ``p`` must match the tableau's order. Fifth-order pairs approach their order from
above in the range float64 can resolve (the measured local slopes are 5.9, 5.8, 5.5, 5.3 for
Tsit5), so the bound is one-sided there.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pycdeq.solvers.controller import initial_step
from pycdeq.solvers.runge_kutta import RungeKutta
from pycdeq.solvers.tableaus import BS3, DOPRI5, EULER, RK4, TSIT5

T_END = 3.0


def field(t, y):
    return -t[:, None] * y ** 3


def exact(t):
    return 1 / math.sqrt(1 + t * t)


def global_error(tableau, n):
    stepper = RungeKutta(tableau)
    dt = torch.full((1,), T_END / n, dtype=torch.float64)
    t = torch.zeros(1, dtype=torch.float64)
    y = torch.full((1, 1), exact(0.0), dtype=torch.float64)
    k = field(t, y)
    for _ in range(n):
        result = stepper.step(field, t, y, k, dt)
        y, k, t = result.y, result.k, t + dt
    return abs(float(y) - exact(T_END))


def fitted_order(tableau, steps):
    h = np.array([T_END / n for n in steps])
    err = np.array([global_error(tableau, n) for n in steps])
    slope, _ = np.polyfit(np.log(h), np.log(err), 1)
    return slope


@pytest.mark.parametrize("tableau, steps, above", [
    (TSIT5, [16, 32, 64, 128], 0.7),
    (DOPRI5, [16, 32, 64, 128], 0.7),
    (BS3, [16, 32, 64, 128], 0.25),
    (RK4, [16, 32, 64, 128], 0.25),
    (EULER, [64, 128, 256, 512], 0.25),
], ids=["tsit5", "dopri5", "bs3", "rk4", "euler"])
def test_global_error_converges_at_the_order_of_the_method(tableau, steps, above):
    order = fitted_order(tableau, steps)
    assert tableau.order - 0.25 < order < tableau.order + above, f"{tableau.name}: fitted order {order:.2f}"


@pytest.mark.parametrize("tableau", [TSIT5, DOPRI5, BS3], ids=lambda t: t.name)
def test_embedded_error_estimate_scales_like_h_to_the_error_order(tableau):
    stepper = RungeKutta(tableau)
    t = torch.full((1,), 0.3, dtype=torch.float64)
    y = torch.full((1, 1), exact(0.3), dtype=torch.float64)
    k = field(t, y)
    hs = np.array([0.2, 0.1, 0.05, 0.025])
    estimates = [abs(float(stepper.step(field, t, y, k, torch.full((1,), h, dtype=torch.float64)).error))
                 for h in hs]
    slope, _ = np.polyfit(np.log(hs), np.log(estimates), 1)
    assert abs(slope - tableau.error_order) < 0.35


@pytest.mark.parametrize("tableau", [TSIT5, DOPRI5, BS3], ids=lambda t: t.name)
def test_fsal_last_stage_is_the_derivative_at_the_new_state(tableau):
    stepper = RungeKutta(tableau)
    t = torch.tensor([0.1, 0.7], dtype=torch.float64)
    y = torch.tensor([[0.5], [1.5]], dtype=torch.float64)
    result = stepper.step(field, t, y, field(t, y), torch.tensor([0.3, 0.05], dtype=torch.float64))
    assert result.evaluations == tableau.stages - 1
    torch.testing.assert_close(result.k, field(t + torch.tensor([0.3, 0.05], dtype=torch.float64), result.y),
                               rtol=1e-13, atol=1e-13)


def test_step_sizes_are_per_sample():
    """Two samples of the same ODE with different step sizes give the single-sample results."""
    stepper = RungeKutta(TSIT5)
    t = torch.zeros(2, dtype=torch.float64)
    y = torch.full((2, 1), exact(0.0), dtype=torch.float64)
    dt = torch.tensor([0.1, 0.4], dtype=torch.float64)
    both = stepper.step(field, t, y, field(t, y), dt).y
    # Elementwise arithmetic only, but on two rows or one the same element may go through a
    # vector loop or its scalar tail, which can round an a*b+c differently (FMA): an ulp per
    # operation, about two per stage, of values <= 1 here.
    tolerance = 2 * TSIT5.stages * torch.finfo(torch.float64).eps
    for i in range(2):
        alone = stepper.step(field, t[i:i + 1], y[i:i + 1], field(t[i:i + 1], y[i:i + 1]), dt[i:i + 1]).y
        torch.testing.assert_close(both[i:i + 1], alone, rtol=0, atol=tolerance)


def test_initial_step_starts_from_zero_state_with_a_usable_step():
    """From ``y0 = 0`` plain Hairer gives ``h <= 1e-4``; the refinement reaches the step the
    error estimate asks for (and never one the error estimate would reject outright)."""
    y0 = torch.zeros(3, 4, dtype=torch.float64)

    def rhs(t, y):
        return 1.0 - y

    h, evaluations = initial_step(rhs, None, y0, rhs(None, y0), rtol=1e-3, atol=1e-3, error_order=5,
                                  time_dtype=torch.float64)
    assert 2 <= evaluations <= 4
    assert bool((h > 0.05).all()) and bool((h < 10).all())
    # Same estimate for identical samples.
    assert torch.equal(h, h[:1].expand(3))
