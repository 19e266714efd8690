"""Anderson, Broyden and FixedPoint reach known fixed points, per sample.

Problems:

* linear ``z = A_b z + b_b`` with one matrix per sample, ``||A_b||_2 = q_b < 1``; the fixed
  point ``(I - A_b)^{-1} b_b`` is known exactly, and for a contraction the error is bounded
  by the residual: ``||z - z*|| <= ||fn(z) - z|| / (1 - q)``;
* ``tanh(W z + U x)`` with ``||W||_2 < 1`` (a contraction, since tanh is 1-Lipschitz); the
  reference is a long, tight float64 Picard run;
* conv-like ``(B, C, H, W)`` states and tuple (multiscale) states through ``pycdeq.solve``.
"""

from __future__ import annotations

import pytest
import torch

import pycdeq
from pycdeq import Anderson, Broyden, FixedPoint, Status, Termination

SOLVERS = {
    "anderson": lambda term, max_iter: Anderson(max_iter=max_iter, termination=term),
    "anderson_damped": lambda term, max_iter: Anderson(m=3, beta=0.7, max_iter=max_iter, termination=term),
    "broyden": lambda term, max_iter: Broyden(max_iter=max_iter, termination=term),
    "fixed_point": lambda term, max_iter: FixedPoint(max_iter=max_iter, termination=term),
    "fixed_point_damped": lambda term, max_iter: FixedPoint(damping=0.8, max_iter=max_iter, termination=term),
}


def contractive_linear(batch, dim, factors, dtype=torch.float64, seed=0):
    """Per-sample ``A_b`` with spectral norm ``factors[b]``, ``b_b``, and the exact fixed point."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, dim, dim, generator=gen, dtype=torch.float64)
    a = a / torch.linalg.matrix_norm(a, ord=2)[:, None, None]
    a = a * torch.as_tensor(factors, dtype=torch.float64)[:, None, None]
    b = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    exact = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - a, b)
    return a.to(dtype), b.to(dtype), exact.to(dtype)


def linear_fn(a, b):
    return lambda z: torch.einsum("bij,bj->bi", a, z) + b


def solve_no_grad(fn, z0, solver, **kw):
    with torch.no_grad():
        return pycdeq.solve(fn, z0, solver, **kw)


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_linear_contraction_reaches_exact_fixed_point_per_sample(name, dtype, tol):
    factors = [0.2, 0.5, 0.7, 0.9]
    a, b, exact = contractive_linear(4, 12, factors, dtype)
    fn = linear_fn(a, b)
    term = Termination(mode="abs", abstol=tol)
    sol = solve_no_grad(fn, torch.zeros_like(b), SOLVERS[name](term, 500))

    assert sol.status.tolist() == [Status.CONVERGED] * 4
    assert sol.converged.all()
    # The reported residual is the residual of the returned z itself (not of one more step).
    recomputed = torch.linalg.vector_norm(fn(sol.z) - sol.z, dim=1)
    slack = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(sol.residual, recomputed, rtol=1e-3, atol=slack)
    assert (sol.residual <= tol).all()
    # Per-sample error bound of a contraction: ||z - z*|| <= ||r|| / (1 - q).
    error = torch.linalg.vector_norm(sol.z.double() - exact.double(), dim=1)
    bound = tol / (1 - torch.tensor(factors, dtype=torch.float64)) + 10 * slack
    assert (error <= bound).all(), (error, bound)


def tanh_problem(batch=5, dim=16, inputs=7, norm=0.8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    w = norm * w / torch.linalg.matrix_norm(w, ord=2)
    u = torch.randn(dim, inputs, generator=gen, dtype=torch.float64)
    x = torch.randn(batch, inputs, generator=gen, dtype=torch.float64)
    return w, u, x


def tanh_reference(w, u, x):
    """Long float64 Picard run (0.8^400 ~ 1e-39: down to the rounding floor, a few ulps of
    |z| <= 1 per element, under 10 dim eps): error <= 10 dim eps / (1 - 0.8) ~ 2e-13."""
    fn = lambda z: torch.tanh(z @ w.T + x @ u.T)
    z = torch.zeros(x.shape[0], w.shape[0], dtype=torch.float64)
    for _ in range(400):
        z = fn(z)
    assert torch.linalg.vector_norm(fn(z) - z, dim=1).max() < 10 * z.shape[1] * torch.finfo(z.dtype).eps
    return z


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_tanh_contraction_matches_long_tight_reference(name, dtype, tol):
    w, u, x = tanh_problem()
    reference = tanh_reference(w, u, x)
    w, u, x = w.to(dtype), u.to(dtype), x.to(dtype)
    fn = lambda z: torch.tanh(z @ w.T + x @ u.T)
    sol = solve_no_grad(fn, torch.zeros(x.shape[0], w.shape[0], dtype=dtype),
                        SOLVERS[name](Termination(abstol=tol), 300))
    assert sol.converged.all()
    assert (sol.residual <= tol).all()
    assert sol.z.dtype == dtype
    error = torch.linalg.vector_norm(sol.z.double() - reference, dim=1)
    # ||z - z*|| <= ||r|| / (1 - 0.8); the computed r is off by the rounding of f, under 10
    # ulps of |z| <= 1 per element (sqrt(dim) 10 eps in l2): in float64 far less than the
    # 1 % slack, which also covers the reference's own error (above).
    rounding = (10 * w.shape[0] ** 0.5 * torch.finfo(dtype).eps / (1 - 0.8)) if dtype == torch.float32 else 0
    assert (error <= tol / (1 - 0.8) * 1.01 + rounding).all(), error


@pytest.mark.parametrize("name", ["anderson", "broyden", "fixed_point"])
def test_conv_like_state_keeps_shape_and_converges(name):
    gen = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1, bias=False).double()
    with torch.no_grad():
        # ||conv||_2 <= sqrt(max row sum * max column sum) of |kernel| (Schur's test), where a
        # row is an output channel and a column an input channel: scale both to <= 0.6.
        weight = conv.weight.abs()
        bound = torch.maximum(weight.sum(dim=(1, 2, 3)).max(), weight.sum(dim=(0, 2, 3)).max())
        conv.weight.mul_(0.6 / bound)
    x = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64)
    fn = lambda z: torch.tanh(conv(z) + x)
    with torch.no_grad():
        sol = pycdeq.solve(fn, torch.zeros_like(x), SOLVERS[name](Termination(abstol=1e-10), 300))
        assert sol.z.shape == x.shape
        assert sol.converged.all()
        residual = torch.linalg.vector_norm((fn(sol.z) - sol.z).flatten(1), dim=1)
    assert (residual <= 1e-10 * 1.0001).all()
    assert sol.residual.shape == (2,) and sol.iterations.shape == (2,)


@pytest.mark.parametrize("name", ["anderson", "broyden", "fixed_point"])
def test_tuple_state_multiscale_reaches_coupled_fixed_point(name):
    """Two scales coupled both ways: (z1, z2) = (A1 z1 + P z2 + b1, Q z1 + A2 z2 + b2)."""
    gen = torch.Generator().manual_seed(4)
    d1, d2, batch = 6, (2, 2), 3
    n2 = 4
    full = torch.randn(d1 + n2, d1 + n2, generator=gen, dtype=torch.float64)
    full = 0.7 * full / torch.linalg.matrix_norm(full, ord=2)
    rhs = torch.randn(batch, d1 + n2, generator=gen, dtype=torch.float64)
    exact = torch.linalg.solve(torch.eye(d1 + n2, dtype=torch.float64) - full, rhs.T).T

    def fn(state):
        z1, z2 = state
        flat = torch.cat([z1, z2.reshape(batch, -1)], dim=1)
        out = flat @ full.T + rhs
        return out[:, :d1], out[:, d1:].reshape(batch, *d2)

    z0 = (torch.zeros(batch, d1, dtype=torch.float64), torch.zeros(batch, *d2, dtype=torch.float64))
    sol = solve_no_grad(fn, z0, SOLVERS[name](Termination(abstol=1e-11), 300))
    assert isinstance(sol.z, tuple) and len(sol.z) == 2
    assert sol.z[0].shape == (batch, d1) and sol.z[1].shape == (batch, *d2)
    assert sol.z0 is z0
    assert sol.converged.all()
    got = torch.cat([sol.z[0], sol.z[1].reshape(batch, -1)], dim=1)
    assert (torch.linalg.vector_norm(got - exact, dim=1) <= 1e-11 / 0.3 * 1.01).all()


@pytest.mark.parametrize("name", ["anderson", "broyden"])
def test_accelerated_solvers_need_fewer_calls_than_picard_on_slow_contraction(name):
    a, b, _ = contractive_linear(3, 20, [0.95, 0.95, 0.95])
    fn = linear_fn(a, b)
    term = Termination(abstol=1e-8)
    picard = solve_no_grad(fn, torch.zeros_like(b), FixedPoint(max_iter=1000, termination=term))
    fast = solve_no_grad(fn, torch.zeros_like(b), SOLVERS[name](term, 1000))
    assert picard.converged.all() and fast.converged.all()
    assert fast.nfe < picard.nfe


def test_anderson_memory_one_is_still_a_convergent_picard_variant():
    a, b, exact = contractive_linear(2, 5, [0.5, 0.5])
    sol = solve_no_grad(linear_fn(a, b), torch.zeros_like(b),
                        Anderson(m=1, max_iter=300, termination=Termination(abstol=1e-10)))
    assert sol.converged.all()
    assert (sol.z - exact).abs().max() < 1e-9


def test_broyden_small_memory_ring_buffer_still_converges():
    a, b, exact = contractive_linear(3, 30, [0.9, 0.9, 0.9])
    sol = solve_no_grad(linear_fn(a, b), torch.zeros_like(b),
                        Broyden(memory=2, max_iter=500, termination=Termination(abstol=1e-9)))
    assert sol.converged.all()
    # ||z - z*|| <= 1e-9 / (1 - 0.9), to rounding of the residual and of the dense solve.
    assert (sol.z - exact).abs().max() < 1e-9 / (1 - 0.9) * (1 + 1e-3)


def test_solution_at_initial_guess_stops_with_zero_iterations():
    a, b, exact = contractive_linear(3, 4, [0.5, 0.5, 0.5])
    calls = []
    fn = linear_fn(a, b)

    def counted(z):
        calls.append(1)
        return fn(z)

    for solver in (Anderson(), Broyden(), FixedPoint()):
        calls.clear()
        sol = solve_no_grad(counted, exact.clone(), solver)
        assert sol.converged.all()
        assert sol.iterations.tolist() == [0, 0, 0]
        assert sol.nfe == 1 == len(calls) and sol.steps == 0
        assert torch.equal(sol.z, exact)


def test_max_iter_zero_evaluates_once_and_reports_not_converged():
    a, b, _ = contractive_linear(2, 4, [0.5, 0.5])
    sol = solve_no_grad(linear_fn(a, b), torch.zeros_like(b), Anderson(max_iter=0))
    assert sol.nfe == 1
    assert sol.status.tolist() == [Status.MAX_ITERS] * 2
    assert torch.equal(sol.z, torch.zeros_like(b))


def test_budget_exhausted_is_reported_as_max_iters_never_as_converged():
    a, b, _ = contractive_linear(3, 10, [0.99, 0.99, 0.99])
    term = Termination(abstol=1e-12)
    for solver in (FixedPoint(max_iter=5, termination=term), Anderson(max_iter=3, termination=term),
                   Broyden(max_iter=3, termination=term)):
        sol = solve_no_grad(linear_fn(a, b), torch.zeros_like(b), solver)
        assert sol.status.tolist() == [Status.MAX_ITERS] * 3
        assert not sol.converged.any()
        assert sol.num_nonconverged == 3
        assert (sol.residual > 1e-12).all()
        assert sol.iterations.tolist() == [solver.max_iter] * 3
        assert sol.nfe == solver.max_iter + 1
        assert sol.status_counts() == {"max_iters": 3}


def test_float32_solve_returns_float32_statistics_on_the_state_device():
    a, b, _ = contractive_linear(2, 4, [0.5, 0.5], dtype=torch.float32)
    sol = solve_no_grad(linear_fn(a, b), torch.zeros_like(b), Anderson())
    assert sol.z.dtype == torch.float32 and sol.residual.dtype == torch.float32
    assert sol.status.dtype == torch.int8 and sol.iterations.dtype == torch.long
    assert sol.residual.device == b.device
