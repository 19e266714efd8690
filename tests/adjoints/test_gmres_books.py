"""batched_gmres: per-sample books across restarts, autograd through the solve, and a fixed
amount of work per Arnoldi step."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from pycdeq.adjoints.gmres import batched_gmres


def matvec(a):
    return lambda u: torch.einsum("bij,bj->bi", a, u)


def mixed_systems(dim=10, dtype=torch.float64):
    """Sample 0: A = I (one step); sample 1: zero right-hand side; the others need restarts."""
    gen = torch.Generator().manual_seed(5)
    a = torch.eye(dim, dtype=dtype) + 0.5 * torch.randn(5, dim, dim, generator=gen, dtype=dtype) / dim ** 0.5
    a[0] = torch.eye(dim, dtype=dtype)
    rhs = torch.randn(5, dim, generator=gen, dtype=dtype)
    rhs[1] = 0
    return a, rhs


def test_restarted_solves_match_dense_solves_and_stopped_samples_stay_frozen():
    a, rhs = mixed_systems()
    options = dict(rtol=1e-11, atol=0.0, restart=2, check_every=1)
    x, residual, iterations, converged, products = batched_gmres(
        matvec(a), rhs, torch.zeros_like(rhs), max_iter=400, **options)
    assert converged.all()
    torch.testing.assert_close(x, torch.linalg.solve(a, rhs), rtol=1e-9, atol=1e-10)
    assert iterations[0] == 1 and iterations[1] == 0 and (iterations[2:] > 2).all()
    true = torch.linalg.vector_norm(rhs - matvec(a)(x), dim=1)
    torch.testing.assert_close(residual, true, rtol=1e-3, atol=1e-13)
    # Sample 0 stopped in the first cycle: the later cycles leave its x exactly as it was.
    first_cycle = batched_gmres(matvec(a), rhs, torch.zeros_like(rhs), max_iter=3, **options)[0]
    assert torch.equal(x[0], first_cycle[0])
    assert torch.equal(x[1], torch.zeros_like(x[1]))


def test_samples_do_not_depend_on_their_batch_mates():
    """A batch and a single sample run other kernels (batched against single products), so
    this holds to rounding, not bitwise. In float64 with rtol 1e-10 the rounding of a
    residual (~DIM eps cond(A) <= 1e-14 relative, cond <= 4.1 here) is 1e-4 of the
    tolerance, and GMRES shrinks the residual several-fold per step: a stop cannot flip.
    (In float32 at rtol 1e-6 the rounding is a tenth of the tolerance and it can.) Both
    solutions have relative residual <= 1e-10, so they differ by <= 2 cond 1e-10 ||x||."""
    a, rhs = mixed_systems(dtype=torch.float64)
    rtol = 1e-10
    options = dict(rtol=rtol, atol=0.0, max_iter=200, restart=4, check_every=1)
    together = batched_gmres(matvec(a), rhs, torch.zeros_like(rhs), **options)
    cond = torch.linalg.cond(a)
    for i in range(len(rhs)):
        alone = batched_gmres(matvec(a[i: i + 1]), rhs[i: i + 1], torch.zeros_like(rhs[i: i + 1]), **options)
        difference = torch.linalg.vector_norm(together[0][i] - alone[0][0])
        assert difference <= 2 * cond[i] * rtol * torch.linalg.vector_norm(together[0][i]) + 1e-300
        assert together[2][i] == alone[2][0]


def test_check_every_does_not_change_the_books_across_restarts():
    a, rhs = mixed_systems()
    options = dict(rtol=1e-11, atol=0.0, max_iter=400, restart=3)
    first = batched_gmres(matvec(a), rhs, torch.zeros_like(rhs), check_every=1, **options)
    sparse = batched_gmres(matvec(a), rhs, torch.zeros_like(rhs), check_every=4, **options)
    torch.testing.assert_close(first[0], sparse[0], rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(first[1], sparse[1], rtol=1e-10, atol=1e-16)
    assert torch.equal(first[2], sparse[2]) and torch.equal(first[3], sparse[3])


def test_nan_from_the_operator_after_a_sample_stopped_does_not_reach_its_solution():
    a, rhs = mixed_systems()
    clean = batched_gmres(matvec(a), rhs, torch.zeros_like(rhs), rtol=1e-11, atol=0.0, max_iter=60,
                          restart=20, check_every=1)
    calls = []

    def later_nan(u):
        calls.append(None)
        out = matvec(a)(u)
        if len(calls) > 3:  # sample 0 stopped at its first step
            out = out.clone()
            out[0] = float("nan")
        return out

    x, residual, iterations, converged, products = batched_gmres(
        later_nan, rhs, torch.zeros_like(rhs), rtol=1e-11, atol=0.0, max_iter=60, restart=20, check_every=1)
    assert torch.equal(x[0], clean[0][0]) and iterations[0] == 1 and converged[0]
    assert torch.isfinite(x).all()


def test_gradient_through_the_solve_is_the_transposed_solve():
    """Under autograd (as in a double backward) the buffers are copied, not overwritten; a
    full Krylov solve is A^-1 rhs, so its gradient is A^-T g, also with a zero rhs around."""
    gen = torch.Generator().manual_seed(7)
    dim = 6
    noise = torch.randn(4, dim, dim, generator=gen, dtype=torch.float64)
    a = torch.eye(dim, dtype=torch.float64) + 0.3 * noise / dim ** 0.5
    a.requires_grad_(True)
    rhs = torch.randn(4, dim, generator=gen, dtype=torch.float64)
    rhs[2] = 0
    rhs.requires_grad_(True)
    weights = torch.linspace(-1.0, 2.0, dim, dtype=torch.float64)
    x, *_ = batched_gmres(matvec(a), rhs, torch.zeros_like(rhs), rtol=1e-13, atol=1e-300, max_iter=40,
                          restart=3, check_every=1)
    grad_rhs, grad_a = torch.autograd.grad((x * weights).sum(), (rhs, a))
    assert torch.isfinite(grad_rhs).all() and torch.isfinite(grad_a).all()
    exact = torch.linalg.solve(a.detach().transpose(1, 2), weights.expand(4, dim))
    running = [0, 1, 3]  # sample 2 never runs (its rhs is 0): its x does not depend on rhs there
    torch.testing.assert_close(grad_rhs[running], exact[running], rtol=1e-8, atol=1e-9)


class _CountCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def test_work_per_arnoldi_step_does_not_grow_with_the_step():
    """As many torch calls for the 11th to 20th steps as for the 21st to 30th: no step loops
    over the earlier ones (as applying the rotations one by one did)."""
    gen = torch.Generator().manual_seed(3)
    dim = 512  # above the size where small products switch form
    a = torch.eye(dim) + torch.randn(2, dim, dim, generator=gen) / dim ** 0.5
    rhs = torch.randn(2, dim, generator=gen)

    def calls(max_iter):
        with _CountCalls() as counter:
            batched_gmres(matvec(a), rhs, torch.zeros_like(rhs), rtol=1e-30, atol=0.0, max_iter=max_iter,
                          restart=100, check_every=1)
        return counter.calls

    first, second, third = calls(11), calls(21), calls(31)
    assert second - first == third - second
