"""batched_gmres: one Krylov space per sample, checked against dense solves."""

from __future__ import annotations

import pytest
import torch

from pycdeq.adjoints.gmres import batched_gmres


def systems(batch=6, dim=12, spread=0.4, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    a = torch.eye(dim, dtype=dtype) + spread * torch.randn(batch, dim, dim, generator=gen, dtype=dtype) / dim ** 0.5
    rhs = torch.randn(batch, dim, generator=gen, dtype=dtype)
    return a, rhs


def matvec(a):
    return lambda u: torch.einsum("bij,bj->bi", a, u)


def gmres(a, rhs, x0=None, **kw):
    options = dict(rtol=1e-12, atol=0.0, max_iter=200, restart=50, check_every=1)
    options.update(kw)
    return batched_gmres(matvec(a), rhs, torch.zeros_like(rhs) if x0 is None else x0, **options)


def true_residual(a, rhs, x):
    return torch.linalg.vector_norm(rhs - matvec(a)(x), dim=1)


def test_matches_dense_solve_per_sample():
    a, rhs = systems()
    x, residual, iterations, converged, products = gmres(a, rhs)
    exact = torch.linalg.solve(a, rhs)
    assert converged.all()
    torch.testing.assert_close(x, exact, rtol=1e-9, atol=1e-10)
    assert (true_residual(a, rhs, x) <= 1e-12 * rhs.norm(dim=1) * 10).all()
    # In exact arithmetic GMRES ends in at most dim steps.
    assert (iterations <= a.shape[1]).all() and products <= a.shape[1] + 2


def test_reported_residual_is_the_true_residual():
    a, rhs = systems(spread=0.8)
    x, residual, *_ = gmres(a, rhs, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(residual, true_residual(a, rhs, x), rtol=1e-4, atol=1e-13)
    assert (residual <= 1e-6 * rhs.norm(dim=1)).all()


@pytest.mark.parametrize("restart", [1, 2, 3, 5])
def test_restarted_gmres_converges_to_the_same_solution(restart):
    a, rhs = systems(dim=10, spread=0.3)
    x, residual, iterations, converged, products = gmres(a, rhs, restart=restart, max_iter=500, rtol=1e-10)
    assert converged.all()
    torch.testing.assert_close(x, torch.linalg.solve(a, rhs), rtol=1e-8, atol=1e-9)
    assert (true_residual(a, rhs, x) <= 1e-10 * rhs.norm(dim=1) * 1.01).all()
    if restart < 10:
        # It had to restart: more Arnoldi steps than a full GMRES would need.
        assert iterations.max() > restart


def test_per_sample_iterations_follow_each_krylov_dimension():
    """``A_b = I + (rank r_b)``: the minimal polynomial has degree r_b + 1, so sample b
    needs exactly r_b + 1 Arnoldi steps, whatever the others need."""
    gen = torch.Generator().manual_seed(1)
    dim, ranks = 16, [0, 1, 2, 4, 7]
    a = torch.eye(dim, dtype=torch.float64).repeat(len(ranks), 1, 1)
    for i, r in enumerate(ranks):
        if r:
            u = torch.randn(dim, r, generator=gen, dtype=torch.float64)
            v = torch.randn(dim, r, generator=gen, dtype=torch.float64)
            a[i] += 0.3 * u @ v.T / dim ** 0.5
    rhs = torch.randn(len(ranks), dim, generator=gen, dtype=torch.float64)
    x, residual, iterations, converged, products = gmres(a, rhs, rtol=1e-10)
    assert converged.all()
    assert iterations.tolist() == [r + 1 for r in ranks]
    torch.testing.assert_close(x, torch.linalg.solve(a, rhs), rtol=1e-9, atol=1e-10)
    # Products on the batch: one initial residual plus the slowest sample's steps.
    assert products == 1 + max(ranks) + 1


def test_converged_samples_are_frozen_while_others_continue():
    gen = torch.Generator().manual_seed(2)
    dim = 8
    a = torch.eye(dim, dtype=torch.float64).repeat(2, 1, 1)
    a[1] += 0.5 * torch.randn(dim, dim, generator=gen, dtype=torch.float64) / dim ** 0.5
    rhs = torch.randn(2, dim, generator=gen, dtype=torch.float64)
    x, residual, iterations, converged, products = gmres(a, rhs)
    assert iterations.tolist()[0] == 1 and iterations[1] > 1
    assert torch.equal(x[0], rhs[0])  # A = I: x = rhs after one step
    torch.testing.assert_close(x[1], torch.linalg.solve(a[1], rhs[1]), rtol=1e-9, atol=1e-10)


def test_breakdown_in_first_krylov_step_gives_exact_solution_without_nan():
    """rhs an eigenvector of A: the Krylov space is invariant after one step (h_21 = 0)."""
    gen = torch.Generator().manual_seed(3)
    dim = 6
    q, _ = torch.linalg.qr(torch.randn(2, dim, dim, generator=gen, dtype=torch.float64))
    eigenvalues = torch.tensor([[2.0, 3, 4, 5, 6, 7], [0.5, 1, 1.5, 2, 2.5, 3]], dtype=torch.float64)
    a = q @ torch.diag_embed(eigenvalues) @ q.transpose(1, 2)
    rhs = q[:, :, 0] * 3.0  # eigenvector with eigenvalue eigenvalues[:, 0]
    x, residual, iterations, converged, products = gmres(a, rhs, atol=1e-14, rtol=0.0)
    assert torch.isfinite(x).all() and torch.isfinite(residual).all()
    assert converged.all() and iterations.tolist() == [1, 1]
    torch.testing.assert_close(x, rhs / eigenvalues[:, :1], rtol=1e-12, atol=1e-14)


def test_zero_right_hand_side_returns_zero_without_nan():
    a, rhs = systems(batch=3)
    rhs[1] = 0
    x, residual, iterations, converged, products = gmres(a, rhs, atol=1e-14, rtol=1e-12)
    assert torch.isfinite(x).all()
    assert converged.all()
    assert torch.equal(x[1], torch.zeros_like(x[1])) and iterations[1] == 0 and residual[1] == 0
    torch.testing.assert_close(x[[0, 2]], torch.linalg.solve(a[[0, 2]], rhs[[0, 2]]), rtol=1e-9, atol=1e-10)


def test_all_zero_right_hand_side_from_nonzero_start_goes_to_zero():
    a, rhs = systems(batch=2)
    x, residual, iterations, converged, products = gmres(a, torch.zeros_like(rhs), x0=rhs, atol=1e-12, rtol=0.0)
    assert converged.all()
    assert x.abs().max() < 1e-10


def test_exact_start_needs_no_iterations():
    a, rhs = systems(batch=3)
    exact = torch.linalg.solve(a, rhs)
    x, residual, iterations, converged, products = gmres(a, rhs, x0=exact, atol=1e-10, rtol=0.0)
    assert iterations.tolist() == [0, 0, 0] and products == 1 and converged.all()
    assert torch.equal(x, exact)


def test_budget_is_respected_and_nonconverged_samples_are_flagged():
    a, rhs = systems(dim=30, spread=1.5)
    x, residual, iterations, converged, products = gmres(a, rhs, max_iter=5, restart=50, rtol=1e-12)
    assert products <= 5
    assert not converged.any()
    assert (residual > 1e-12 * rhs.norm(dim=1)).all()
    # Still an improvement over the start.
    assert (true_residual(a, rhs, x) < rhs.norm(dim=1)).all()


def test_float32_systems_solve_to_float32_accuracy():
    a, rhs = systems(dtype=torch.float32)
    x, residual, iterations, converged, products = gmres(a, rhs, rtol=1e-5)
    assert x.dtype == torch.float32 and converged.all()
    exact = torch.linalg.solve(a.double(), rhs.double())
    assert ((x.double() - exact).norm(dim=1) / exact.norm(dim=1)).max() < 1e-4


def test_check_every_does_not_change_the_solution():
    a, rhs = systems()
    first = gmres(a, rhs, check_every=1)
    sparse = gmres(a, rhs, check_every=4)
    torch.testing.assert_close(first[0], sparse[0], rtol=0, atol=0)
    assert torch.equal(first[2], sparse[2])
