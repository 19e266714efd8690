"""Anderson's and Broyden's single steps against an independent float64 computation.

Convergence on a contraction proves little: a wrong mixing (an off-by-one in Anderson's
ring buffer) or a wrong update (a Broyden denominator off by 2) still converges there, only
slower. So every step of a run is recomputed here from the solver's own recorded iterates,
with the formulas of the module docstrings written out densely in float64 (no ring buffers,
no incremental Gram matrix, no blocks), for more steps than the memory holds (the buffers
wrap). Then a problem Picard iteration cannot solve (spectral radius > 1) that they must.
"""

from __future__ import annotations

import pytest
import torch

import pycdeq
from pycdeq import Anderson, Broyden, FixedPoint, Status, Termination

EPS = torch.finfo(torch.float64).eps
DIM, STEPS, MEMORY = 6, 8, 3


def _problem(seed=0):
    """Per-sample ``tanh(A_b z + c_b)``, ``||A_b||_2 = 0.9``: non-linear, Jacobians that differ
    per sample and per iterate, and far from converged after ``STEPS`` steps."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(2, DIM, DIM, generator=gen, dtype=torch.float64)
    a = 0.9 * a / torch.linalg.matrix_norm(a, ord=2)[:, None, None]
    c = torch.randn(2, DIM, generator=gen, dtype=torch.float64)
    return lambda z: torch.tanh(torch.einsum("bij,bj->bi", a, z) + c)


def _recorded_run(fn, solver):
    """The iterates ``z_0 .. z_STEPS`` the solver evaluated ``fn`` at (nothing converges)."""
    iterates = []

    def recorded(z):
        iterates.append(z.clone())
        return fn(z)

    with torch.no_grad():
        solution = pycdeq.solve(recorded, torch.zeros(2, DIM, dtype=torch.float64), solver)
    assert (solution.status == Status.MAX_ITERS).all() and len(iterates) == STEPS + 1
    return iterates


def _anderson_step(xs, fs, lam, beta):
    """The docstring's step from the last ``n`` iterates ``xs`` and values ``fs`` (one
    sample): ``min ||sum a_i r_i||^2 + lam s ||a||^2`` s.t. ``sum a_i = 1`` (``s`` the mean of
    the Gram diagonal) by its KKT system, then ``sum a_i (x_i + beta r_i)``. Also returns
    the KKT matrix's condition number and ``sum |a_i| ||x_i + beta r_i||``."""
    r = fs - xs  # (n, d)
    n = r.shape[0]
    gram = r @ r.T
    s = torch.diagonal(gram).mean()
    kkt = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    kkt[0, 1:] = kkt[1:, 0] = 1
    kkt[1:, 1:] = gram + lam * s * torch.eye(n, dtype=torch.float64)
    rhs = torch.zeros(n + 1, dtype=torch.float64)
    rhs[0] = 1
    alpha = torch.linalg.solve(kkt, rhs)[1:]
    points = xs + beta * r
    return alpha @ points, torch.linalg.cond(kkt), (alpha.abs() * points.norm(dim=1)).sum()


@pytest.mark.parametrize("beta", [1.0, 0.6])
@pytest.mark.parametrize("m", [1, MEMORY])
def test_every_anderson_step_is_the_regularised_least_squares_mixing(m, beta):
    fn = _problem()
    solver = Anderson(m=m, beta=beta, max_iter=STEPS, termination=Termination(abstol=1e-300))
    iterates = _recorded_run(fn, solver)
    values = [fn(z) for z in iterates]
    for k in range(STEPS):
        first = max(0, k + 1 - m)  # the last min(k + 1, m) iterates
        for b in range(2):
            xs = torch.stack([z[b] for z in iterates[first:k + 1]])
            fs = torch.stack([f[b] for f in values[first:k + 1]])
            expected, cond, scale = _anderson_step(xs, fs, solver.lam, beta)
            # Backward-stable solves of the (n+1)-system: weights to ~cond eps relative
            # (x 10 n for the Gram sums over DIM terms), mixed into points of size `scale`.
            tolerance = 10 * (DIM + m) * cond * EPS * scale
            error = torch.linalg.vector_norm(iterates[k + 1][b] - expected)
            assert error <= tolerance, (k, b, float(error), float(tolerance))


def _broyden_steps(zs, gs, memory):
    """The docstring's iteration on one sample, densely: ``H = -I + sum u v^T`` over the last
    ``memory`` pairs; from ``dz = z_k - z_{k-1}``, ``dg = g_k - g_{k-1}``: ``v = H^T dz``,
    ``u = (dz - H dg) / (v . dg)``; next ``z_k - H_new g_k``. Returns the predicted ``z_{k+1}``
    for every k and a bound on its rounding error."""
    eye = torch.eye(zs.shape[1], dtype=torch.float64)
    pairs, predictions, bounds = [], [], []
    for k in range(len(zs) - 1):
        if k:
            h = -eye + sum((torch.outer(u, v) for u, v, _ in pairs), torch.zeros_like(eye))
            dz, dg = zs[k] - zs[k - 1], gs[k] - gs[k - 1]
            v = h.T @ dz
            u = (dz - h @ dg) / (v @ dg)
            condition = v.norm() * dg.norm() / (v @ dg).abs()  # of the denominator
            pairs = (pairs + [(u, v, condition)])[-memory:]
        h = -eye + sum((torch.outer(u, v) for u, v, _ in pairs), torch.zeros_like(eye))
        predictions.append(zs[k] - h @ gs[k])
        # Each stored pair is the result of O(DIM) sums computed in another order, relative
        # error <= 10 DIM eps times its denominator's condition, itself computed from pairs
        # that carry theirs (hence the sum over pairs in each term); H g adds one more sum.
        total = sum((c for *_, c in pairs), torch.tensor(1.0, dtype=torch.float64))
        spread = sum((u.norm() * v.norm() for u, v, _ in pairs), torch.tensor(1.0, dtype=torch.float64))
        bounds.append(10 * DIM * EPS * (zs[k].norm() + total * spread * gs[k].norm()))
    return predictions, bounds


@pytest.mark.parametrize("memory", [MEMORY, 30])
def test_every_broyden_step_is_the_rank_one_inverse_update(memory):
    fn = _problem(seed=1)
    solver = Broyden(memory=memory, max_iter=STEPS, termination=Termination(abstol=1e-300))
    iterates = _recorded_run(fn, solver)
    residuals = [fn(z) - z for z in iterates]
    for b in range(2):
        zs = torch.stack([z[b] for z in iterates])
        gs = torch.stack([g[b] for g in residuals])
        for k, (expected, tolerance) in enumerate(zip(*_broyden_steps(zs, gs, memory))):
            error = torch.linalg.vector_norm(zs[k + 1] - expected)
            assert error <= tolerance, (k, b, float(error), float(tolerance))


def _expansive_linear(seed=3, dim=4):
    """``z = A z + b`` per sample with eigenvalues 1.2 e^(+-0.7i), -1.5, 0.5 (spectral radius
    1.5: Picard diverges) and ``I - A`` well away from singular (eigenvalues 1 - lambda, all
    of modulus >= 0.5), in a random well-conditioned basis."""
    gen = torch.Generator().manual_seed(seed)
    rho, theta = 1.2, 0.7
    core = torch.zeros(dim, dim, dtype=torch.float64)
    core[:2, :2] = rho * torch.tensor([[torch.cos(torch.tensor(theta)), -torch.sin(torch.tensor(theta))],
                                       [torch.sin(torch.tensor(theta)), torch.cos(torch.tensor(theta))]])
    core[2, 2], core[3, 3] = -1.5, 0.5
    basis = torch.eye(dim, dtype=torch.float64) + 0.3 * torch.randn(2, dim, dim, generator=gen, dtype=torch.float64)
    a = basis @ core @ torch.linalg.inv(basis)
    b = torch.randn(2, dim, generator=gen, dtype=torch.float64)
    exact = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - a, b)
    inverse_norm = torch.linalg.matrix_norm(torch.linalg.inv(torch.eye(dim, dtype=torch.float64) - a), ord=2)
    return (lambda z: torch.einsum("bij,bj->bi", a, z) + b), exact, inverse_norm


@pytest.mark.parametrize("solver", [Anderson(max_iter=100, termination=Termination(abstol=1e-10)),
                                    Broyden(max_iter=100, termination=Termination(abstol=1e-10))],
                         ids=["anderson", "broyden"])
def test_accelerated_solvers_solve_what_picard_cannot(solver):
    fn, exact, inverse_norm = _expansive_linear()
    z0 = torch.zeros_like(exact)
    with torch.no_grad():
        picard = pycdeq.solve(fn, z0, FixedPoint(max_iter=100, termination=Termination(abstol=1e-10)))
        guarded = pycdeq.solve(fn, z0, FixedPoint(max_iter=100, termination=Termination(abstol=1e-10, safe=True)))
        sol = pycdeq.solve(fn, z0, solver)
    assert (picard.status == Status.MAX_ITERS).all() and (guarded.status == Status.DIVERGED).all()
    assert sol.converged.all(), sol.status
    # r = (A - I)(z - z*): ||z - z*|| <= ||(I - A)^-1|| ||r||, plus rounding of r itself.
    bound = inverse_norm * (1e-10 + 10 * exact.shape[1] * EPS * exact.norm(dim=1).max() * 3)
    assert (torch.linalg.vector_norm(sol.z - exact, dim=1) <= bound).all()
