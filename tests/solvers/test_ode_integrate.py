"""Finite-time integration: agreement with scipy, per-sample stepping, t_eval, status, errors.

References are ``scipy.integrate.solve_ivp(method="DOP853", rtol=1e-10, atol=1e-12)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import pycdeq
from pycdeq import BS3, RK4, VCAB3, Dopri5, Euler, Status, Tsit5, integrate

F64 = torch.float64


def vdp_torch(t, z):
    x, v = z[:, 0], z[:, 1]
    return torch.stack([v, (1 - x ** 2) * v - x], dim=1)


def vdp_numpy(t, y):
    return [y[1], (1 - y[0] ** 2) * y[1] - y[0]]


def lotka_torch(t, z):
    x, y = z[:, 0], z[:, 1]
    return torch.stack([1.5 * x - x * y, -3.0 * y + x * y], dim=1)


def lotka_numpy(t, y):
    return [1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]]


def forced_torch(t, z):
    return -0.5 * z + torch.sin(3 * t)[:, None] * torch.cos(z)


def forced_numpy(t, y):
    return list(-0.5 * np.asarray(y) + np.sin(3 * t) * np.cos(y))


def reference(f, y0, t1, t_eval=None):
    sol = solve_ivp(f, (0.0, t1), np.asarray(y0, dtype=float), method="DOP853", rtol=1e-10,
                    atol=1e-12, t_eval=t_eval)
    assert sol.success
    return sol.y.T  # (len(t_eval) or n, dim)


# Worst measured max-error / tolerance over the three problems below (both samples, all
# t_eval points): Tsit5 1.09, Dopri5 3.49, BS3 21.8 (tol 1e-7), VCAB3 967 (tol 1e-8; third
# order with one evaluation per step: many more steps each carrying error ~tol, and on
# Lotka-Volterra its error falls like tol^(3/4) as it should: 1.1e-3, 1.9e-4, 3.4e-5 at 1e-5,
# 1e-6, 1e-7). These are properties of the algorithms, not of a CPU: at these tolerances
# rounding adds < 1e-12 over the ~1,000 steps (eps |y| per step), so other kernels can only
# change the error by flipping an accept/reject whose error ratio lies within ~1e-13 of 1,
# which gives another valid step sequence. Limits: 3x the worst measured for the method,
# room for such a sequence and for the reference's own error (DOP853 at 1e-10/1e-12).
# (A controller that accepts 10x the error moves these by < 5x: that is caught by
# test_a_step_whose_error_exceeds_the_tolerance_is_rejected below.)
SCIPY_TOLERANCE_AND_LIMIT = {Tsit5: (1e-9, 3.3), Dopri5: (1e-9, 10.5), BS3: (1e-7, 65.0), VCAB3: (1e-8, 2900.0)}


@pytest.mark.parametrize("method_cls", [Tsit5, Dopri5, BS3, VCAB3])
@pytest.mark.parametrize("name, f_torch, f_numpy, z0, t1", [
    ("van_der_pol", vdp_torch, vdp_numpy, [[2.0, 0.0], [0.5, -1.0]], 4.0),
    ("lotka_volterra", lotka_torch, lotka_numpy, [[1.0, 1.0], [2.0, 0.5]], 3.0),
    ("forced_non_autonomous", forced_torch, forced_numpy, [[0.3, -1.0, 2.0], [1.0, 0.0, -0.5]], 5.0),
])
def test_agrees_with_scipy_dop853(method_cls, name, f_torch, f_numpy, z0, t1):
    tol, factor = SCIPY_TOLERANCE_AND_LIMIT[method_cls]
    t_eval = [0.0, t1 / 3, t1 / 2, t1]
    z0 = torch.tensor(z0, dtype=F64)
    traj = integrate(f_torch, z0, t1, method_cls(rtol=tol, atol=tol, max_steps=20_000), t_eval=t_eval)
    assert bool((traj.status == Status.CONVERGED).all())
    assert torch.equal(traj.t, torch.full((2,), t1, dtype=F64))
    for b in range(z0.shape[0]):
        ref = reference(f_numpy, z0[b].numpy(), t1, t_eval)
        np.testing.assert_allclose(traj.ys[:, b].numpy(), ref, rtol=0, atol=factor * tol)
    torch.testing.assert_close(traj.ys[-1], traj.z, rtol=0, atol=0)
    torch.testing.assert_close(traj.ys[0], z0, rtol=0, atol=0)


def test_tuple_state_agrees_with_scipy():
    """A harmonic oscillator split into a position (B, 2, 2) and a velocity (B, 4)."""
    x0 = torch.tensor([[[1.0, 0.0], [0.5, -0.5]]], dtype=F64)
    v0 = torch.tensor([[0.0, 1.0, 0.2, 0.0]], dtype=F64)
    omega = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=F64)

    def rhs(t, z):
        x, v = z
        return v.reshape(x.shape), -(omega ** 2) * x.reshape(v.shape)

    traj = integrate(rhs, (x0, v0), 2.5, Tsit5(rtol=1e-10, atol=1e-10, max_steps=2000), t_eval=[1.0, 2.5])
    x, v = traj.z
    assert x.shape == x0.shape and v.shape == v0.shape
    assert traj.ys[0].shape == (2, 1, 2, 2) and traj.ys[1].shape == (2, 1, 4)
    w = omega.numpy()
    ref = reference(lambda t, y: np.concatenate([y[4:], -(w ** 2) * y[:4]]),
                    np.concatenate([x0.reshape(-1).numpy(), v0.reshape(-1).numpy()]), 2.5, [1.0, 2.5])
    got = torch.cat([traj.ys[0].reshape(2, -1), traj.ys[1].reshape(2, -1)], dim=1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-8)


@pytest.mark.parametrize("tol", [1e-4, 1e-6, 1e-8])
def test_controller_keeps_van_der_pol_error_near_tolerance(tol):
    """Global error of Van der Pol (mu = 1) on [0, 5] stays within a small multiple of the
    local tolerance (the global error accumulates local errors). Measured max error / tol:
    Tsit5 8.4, 2.2, 1.2 and Dopri5 9.5, 4.1, 4.0 at 1e-4, 1e-6, 1e-8; limit 20 (2x; a
    controller accepting 10x the error reaches 28 at 1e-4)."""
    z0 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [-0.5, 2.0]], dtype=F64)
    for method_cls in (Tsit5, Dopri5):
        traj = integrate(vdp_torch, z0, 5.0, method_cls(rtol=tol, atol=tol, max_steps=5000))
        for b in range(3):
            ref = reference(vdp_numpy, z0[b].numpy(), 5.0)[-1]
            error = np.abs(traj.z[b].numpy() - ref).max()
            assert error < 20 * tol, (method_cls.__name__, b, error)


# The classical coefficients, written out here independently of pycdeq's tableaus:
# Dormand & Prince (1980), RK5(4)7M, and Bogacki & Shampine (1989), RK3(2).
CLASSICAL_PAIRS = {
    Dopri5: dict(
        a=[[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
           [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
           [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
           [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]],
        b=[35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
        b_hat=[5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]),
    BS3: dict(
        a=[[], [1 / 2], [0, 3 / 4], [2 / 9, 1 / 3, 4 / 9]],
        b=[2 / 9, 1 / 3, 4 / 9, 0],
        b_hat=[7 / 24, 1 / 4, 1 / 3, 1 / 8]),
}


def _one_step_of_decay(pair, h):
    """One step of ``y' = -y`` from ``y0 = 1``: the propagated ``y1`` and the estimate
    ``h sum (b - b_hat) k``."""
    ks = []
    for row in pair["a"]:
        ks.append(-(1.0 + h * sum(a * k for a, k in zip(row, ks))))
    y1 = 1.0 + h * sum(b * k for b, k in zip(pair["b"], ks))
    err = h * sum((b - bh) * k for b, bh, k in zip(pair["b"], pair["b_hat"], ks))
    return y1, abs(err)


def _step_for_ratio(pair, tol, ratio):
    """The step whose error ratio ``err / (atol + rtol max(|y0|, |y1|)) = err / (2 tol)`` is
    ``ratio`` (bisection; the ratio grows like ``h^q`` over this range)."""
    low, high = 1e-6, 1.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if _one_step_of_decay(pair, mid)[1] / (2 * tol) < ratio else (low, mid)
    return low


@pytest.mark.parametrize("method_cls", sorted(CLASSICAL_PAIRS, key=lambda m: m.__name__))
def test_a_step_whose_error_exceeds_the_tolerance_is_rejected(method_cls):
    """The controller's contract, step by step: a step is accepted exactly when its error
    estimate is within the tolerance. One step of ``y' = -y`` asked for with ``dt0 = t1``,
    sized from the classical coefficients to an error ratio of 3 (must be rejected and
    retried smaller: the global tests barely notice a controller that accepts 10x the error)
    and of 0.3 (accepted as is, landing on the classical formula's ``y1``)."""
    tol = 1e-6
    pair = CLASSICAL_PAIRS[method_cls]
    z0 = torch.ones(1, 1, dtype=F64)
    too_long = _step_for_ratio(pair, tol, 3.0)
    traj = integrate(lambda t, z: -z, z0, too_long, method_cls(rtol=tol, atol=tol, dt0=too_long, max_steps=100))
    assert int(traj.rejected_steps[0]) >= 1 and int(traj.accepted_steps[0]) >= 2
    assert bool(traj.reached_t1.all())
    short = _step_for_ratio(pair, tol, 0.3)
    traj = integrate(lambda t, z: -z, z0, short, method_cls(rtol=tol, atol=tol, dt0=short, max_steps=100))
    assert int(traj.rejected_steps[0]) == 0 and int(traj.accepted_steps[0]) == 1
    # The same arithmetic in another order: a few ulps of y1 (s stages, |terms| <= 1).
    y1, _ = _one_step_of_decay(pair, short)
    assert abs(float(traj.z[0, 0]) - y1) <= 10 * len(pair["b"]) * torch.finfo(F64).eps


def test_each_sample_is_solved_as_if_alone():
    """Elementwise dynamics with very different time scales: the batch result of every sample
    equals (bitwise) its result solved alone, and its step count is its own."""
    rates = torch.tensor([[0.1], [1.0], [10.0]], dtype=F64)

    def rhs(t, z):
        return -rates[: z.shape[0]] * z + torch.sin(t)[:, None]

    z0 = torch.ones(3, 1, dtype=F64)
    method = Tsit5(rtol=1e-6, atol=1e-6, max_steps=1000)
    batch = integrate(rhs, z0, 3.0, method)
    for b in range(3):
        rates_b = rates[b:b + 1]
        alone = integrate(lambda t, z: -rates_b * z + torch.sin(t)[:, None], z0[b:b + 1], 3.0, method)
        assert torch.equal(batch.z[b], alone.z[0])
        assert int(batch.accepted_steps[b]) == int(alone.accepted_steps[0])
    assert len(set(batch.accepted_steps.tolist())) == 3


def test_blow_up_reports_dt_min_for_that_sample_only():
    """``dz/dt = z^2`` from ``z0 = 1`` blows up at ``t = 1``; from ``0.2`` at ``t = 5``."""
    with pytest.warns(RuntimeWarning, match=r"1 of 2 samples did not reach t1 \(dt_min: 1\)"):
        traj = integrate(lambda t, z: z * z, torch.tensor([[1.0], [0.2]], dtype=F64), 2.0,
                         Tsit5(rtol=1e-6, atol=1e-6, max_steps=100_000))
    assert int(traj.status[0]) == Status.DT_MIN and 0.99 < float(traj.t[0]) < 1.001
    assert int(traj.status[1]) == Status.CONVERGED
    torch.testing.assert_close(traj.z[1], torch.tensor([0.2 / (1 - 0.4)], dtype=F64), rtol=1e-5, atol=0)
    assert traj.steps < 2_000


def test_step_budget_reports_max_iters_and_warns():
    with pytest.warns(RuntimeWarning, match="did not reach t1"):
        traj = integrate(vdp_torch, torch.tensor([[2.0, 0.0]], dtype=F64), 20.0,
                         Tsit5(rtol=1e-8, atol=1e-8, max_steps=10))
    assert int(traj.status[0]) == Status.MAX_ITERS and traj.steps == 10
    assert 0 < float(traj.t[0]) < 20.0


@pytest.mark.parametrize("method, order", [(Euler(dt=0.01), 1), (RK4(dt=0.05), 4)], ids=["euler", "rk4"])
def test_fixed_step_methods_land_on_t1(method, order):
    traj = integrate(lambda t, z: -z, torch.ones(2, 1, dtype=F64), 1.03, method)
    assert torch.equal(traj.t, torch.full((2,), 1.03, dtype=F64))
    error = float((traj.z - np.exp(-1.03)).abs().max())
    assert error < (0.01 if order == 1 else 1e-6)
    assert bool((traj.rejected_steps == 0).all())


def test_nfe_counts_calls_of_rhs():
    calls = []

    def rhs(t, z):
        calls.append(1)
        return -z

    traj = integrate(rhs, torch.ones(4, 3), 2.0, Tsit5())
    assert traj.nfe == len(calls)
    traj = integrate(rhs, torch.ones(4, 3), 2.0, Tsit5(dt0=0.1))
    assert traj.nfe == 1 + 6 * traj.steps


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(t1=0.0), ValueError, "t0=0.0, t1=0.0"),
    (dict(t1=1.0, t0=2.0), ValueError, "t0=2.0, t1=1.0"),
    (dict(t1=float("nan")), ValueError, "t1 must be finite"),
    (dict(t1=1.0, z0=torch.tensor([[float("nan")]])), ValueError, "z0 contains NaN"),
    (dict(t1=1.0, adjoint="magic"), ValueError, "adjoint"),
    (dict(t1=1.0, adjoint="backsolve"), ValueError, "needs params"),
    (dict(t1=1.0, method=pycdeq.Anderson()), TypeError, "ODE method"),
    (dict(t1=1.0, t_eval=[0.5, 0.2]), ValueError, "strictly increasing"),
    (dict(t1=1.0, t_eval=[0.5, 1.5]), ValueError, r"t_eval must lie in \[t0, t1\]"),
    (dict(t1=1.0, rhs=lambda t, z: z[:, :1]), ValueError, "rhs returned"),
    (dict(t1=1.0, z0=torch.ones(2, 3, dtype=torch.long)), TypeError, "floating-point"),
])
def test_bad_input_raises_clear_errors(kwargs, error, match):
    args = dict(rhs=lambda t, z: -z, z0=torch.ones(2, 3), method=Tsit5())
    args.update(kwargs)
    rhs, z0, t1, method = args.pop("rhs"), args.pop("z0"), args.pop("t1"), args.pop("method")
    with pytest.raises(error, match=match):
        integrate(rhs, z0, t1, method, **args)
