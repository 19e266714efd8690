"""``GMRES(stopping="batch")``: the reference's whole-batch GMRES, checked against dense float64 algebra.

DeepEquilibriumNetworks.jl v0.2.6 solves ``(I - J^T) g = v`` with Krylov.jl's GMRES on the
whole batch's vector, from ``g = 0``, stopping at ``||r|| <= atol + rtol ||v||``. The k-th GMRES
iterate from zero is the minimiser of ``||v - A x||`` over the Krylov space
``span(v, A v, ..., A^(k-1) v)``; the tests compute it densely and check the iteration count,
the iterate and the zero-iteration case.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pycdeq import GMRES, DEQ, FixedPoint, Termination
from pycdeq.adjoints.gmres import whole_batch_gmres


def block_system(batch=4, dim=6, spread=0.5, seed=0):
    """Per-sample ``A_b = I - J_b^T`` (block diagonal over the batch) and a right-hand side."""
    gen = torch.Generator().manual_seed(seed)
    jac = spread * torch.randn(batch, dim, dim, generator=gen, dtype=torch.float64) / dim ** 0.5
    v = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    return jac, v


def vjp_of(jac):
    return lambda u: torch.einsum("bji,bj->bi", jac, u)  # J^T u per sample


def dense_matrix(jac):
    """The whole batch's ``I - J^T`` as one block-diagonal matrix."""
    return torch.block_diag(*[torch.eye(j.shape[0], dtype=j.dtype) - j.T for j in jac])


def krylov_minimiser(a, v, k):
    """``argmin ||v - a x||`` over ``span(v, a v, ..., a^(k-1) v)`` (an orthonormal basis by QR)."""
    if k == 0:
        return torch.zeros_like(v), v.norm()
    columns = [v]
    for _ in range(k - 1):
        columns.append(a @ columns[-1])
    basis, _ = torch.linalg.qr(torch.stack(columns, dim=1))
    y = torch.linalg.lstsq(a @ basis, v[:, None]).solution
    x = (basis @ y)[:, 0]
    return x, (v - a @ x).norm()


def test_tight_tolerance_matches_the_dense_solve_of_every_block():
    jac, v = block_system()
    gmres = GMRES(rtol=1e-12, atol=0.0, max_iter=60, restart=60, stopping="batch")
    g, stats = gmres.solve(vjp_of(jac), v)
    exact = torch.linalg.solve(torch.eye(v.shape[1], dtype=v.dtype) - jac.transpose(1, 2), v[..., None])[..., 0]
    # Condition number of the system times the tolerance bounds the error of the solution.
    cond = torch.linalg.cond(dense_matrix(jac))
    torch.testing.assert_close(g, exact, rtol=0, atol=float(10 * cond * 1e-12 * v.norm()))
    assert stats.converged.all()


@pytest.mark.parametrize("tolerance", [0.3, 0.05, 1e-3])
def test_stops_at_the_first_krylov_iterate_passing_atol_plus_rtol_norm_v(tolerance):
    jac, v = block_system(spread=0.9)
    a, flat = dense_matrix(jac), v.reshape(-1)
    threshold = tolerance + tolerance * flat.norm()
    gmres = GMRES(rtol=tolerance, atol=tolerance, max_iter=24, restart=24, stopping="batch")
    g, stats = gmres.solve(vjp_of(jac), v)
    k = int(stats.iterations[0])
    assert (stats.iterations == k).all() and stats.vjps == k
    x_k, residual_k = krylov_minimiser(a, flat, k)
    assert residual_k <= threshold * (1 + 1e-9)
    if k > 0:
        assert krylov_minimiser(a, flat, k - 1)[1] > threshold
    # GMRES's iterate is the Krylov minimiser (unique: A is nonsingular).
    torch.testing.assert_close(g.reshape(-1), x_k, rtol=0, atol=1e-8 * float(flat.norm()))
    torch.testing.assert_close(stats.residual, (flat - a @ g.reshape(-1)).norm().expand(v.shape[0]),
                               rtol=1e-6, atol=1e-12)


def test_small_right_hand_side_takes_no_iteration_no_vjp_and_returns_zero():
    jac, v = block_system()
    v = v / v.norm() * 0.0525  # ||v|| <= atol / (1 - rtol) = 0.05 / 0.95 = 0.05263
    calls = []

    def vjp(u):
        calls.append(1)
        return vjp_of(jac)(u)

    g, stats = GMRES(rtol=0.05, atol=0.05, max_iter=20, stopping="batch").solve(vjp, v)
    assert not calls and stats.vjps == 0
    assert torch.equal(g, torch.zeros_like(v))
    assert (stats.iterations == 0).all() and stats.converged.all()
    # Just above the threshold it iterates.
    _, stats = GMRES(rtol=0.05, atol=0.05, max_iter=20, stopping="batch").solve(vjp_of(jac), v / 0.0525 * 0.0530)
    assert (stats.iterations > 0).all()


def test_whole_batch_stopping_couples_the_samples_unlike_the_per_sample_rule():
    jac, v = block_system(spread=0.9)
    v[0] *= 1e-3  # a sample that passes almost at once on its own
    per_sample = GMRES(rtol=1e-3, atol=0.0, max_iter=24, restart=24).solve(vjp_of(jac), v)[1]
    batch = GMRES(rtol=1e-3, atol=0.0, max_iter=24, restart=24, stopping="batch").solve(vjp_of(jac), v)[1]
    assert per_sample.iterations.unique().numel() > 1
    assert batch.iterations.unique().numel() == 1


def test_whole_batch_gmres_returns_per_sample_shaped_stats():
    jac, v = block_system()
    g, residual, iterations, converged, products = whole_batch_gmres(
        lambda u: u - vjp_of(jac)(u), v, rtol=1e-8, atol=0.0, max_iter=40, restart=40, check_every=1)
    assert g.shape == v.shape
    assert residual.shape == iterations.shape == converged.shape == (v.shape[0],)


def test_unknown_stopping_rule_is_refused_naming_the_option():
    with pytest.raises(ValueError, match="stopping"):
        GMRES(stopping="global")


class TanhLayer(nn.Module):
    def __init__(self, dim=5):
        super().__init__()
        self.lin = nn.Linear(dim, dim).double()
        with torch.no_grad():
            self.lin.weight.mul_(0.4 / torch.linalg.matrix_norm(self.lin.weight, 2))

    def forward(self, z, x):
        return torch.tanh(self.lin(z) + x)


def test_zero_iterations_give_the_one_step_gradient_through_the_final_f_call():
    """With ``output="f_of_iterate"``, a solve that takes no GMRES iteration leaves exactly the
    gradient of ``L(f(u*, x))`` with ``u*`` held constant (the reference's behaviour)."""
    torch.manual_seed(0)
    f = TanhLayer()
    solver = FixedPoint(max_iter=200, termination=Termination(abstol=1e-12))
    layer = DEQ(f, solver, adjoint=GMRES(rtol=0.05, atol=0.05, max_iter=20, stopping="batch"),
                output="f_of_iterate")
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    z, solution = layer(x)
    (0.01 * z.sum()).backward()  # ||dL/du*|| = 0.01 ||J^T 1|| is far below 0.0526
    assert solution.adjoint.vjps == 0
    got = [p.grad.clone() for p in f.parameters()] + [x.grad.clone()]
    for p in f.parameters():
        p.grad = None
    x.grad = None
    with torch.no_grad():
        u_star = layer.solver.solve_flat(lambda u: f(u, x), torch.zeros_like(x)).z
    (0.01 * f(u_star, x).sum()).backward()
    expected = [p.grad for p in f.parameters()] + [x.grad]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
