"""compact=True: finished samples leave the work, and nothing else changes."""

import pytest
import torch
from torch import nn

import pycdeq
from pycdeq import Status

SOLVERS = [pycdeq.Anderson, pycdeq.Broyden, pycdeq.FixedPoint]


def _problem(batch=24, dim=16, seed=0):
    """z = rate_b * tanh(W z) + x_b with per-sample rates from 0.1 to 0.95 (very different
    convergence speeds); sample 3 is expansive (rate 3) and never converges."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    w = w / torch.linalg.matrix_norm(w, 2)
    rates = torch.linspace(0.1, 0.95, batch, dtype=torch.float64)[:, None]
    rates[3] = 3.0
    x = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    calls = []

    def fn(z, r, inj):  # the per-sample inputs arrive as batch-aligned args
        calls.append(z.shape[0])
        return r * torch.tanh(z @ w.T) + inj

    return fn, torch.zeros(batch, dim, dtype=torch.float64), (rates, x), calls


@pytest.mark.parametrize("solver_class", SOLVERS)
def test_compaction_gives_the_same_solution_with_fewer_rows(solver_class):
    fn, z0, args, calls = _problem()
    term = pycdeq.Termination(abstol=1e-9)
    plain = pycdeq.solve(fn, z0, solver_class(max_iter=80, termination=term), args=args)
    plain_calls = list(calls)
    calls.clear()
    compact = pycdeq.solve(fn, z0, solver_class(max_iter=80, termination=term, compact=True), args=args)
    assert torch.equal(compact.status, plain.status)
    assert torch.equal(compact.iterations, plain.iterations)
    assert compact.nfe == plain.nfe
    # Identical up to rounding (BLAS kernels round differently by batch size). The expansive
    # sample 3 is left out: its iterates grow chaotically, so rounding differences grow too.
    ok = plain.converged
    torch.testing.assert_close(compact.z[ok], plain.z[ok], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(compact.residual[ok], plain.residual[ok], rtol=1e-6, atol=1e-15)
    assert plain.status[3] == Status.MAX_ITERS and compact.converged.sum() == z0.shape[0] - 1
    # The work shrinks: every call after the first compaction sees at most half the batch.
    assert min(calls) < z0.shape[0] <= max(calls)
    assert sum(calls) < sum(plain_calls)


def test_compaction_keeps_gradients_exact():
    fn, z0, (rates, x), _ = _problem(batch=8, dim=6)
    scale = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    x = x.clone().requires_grad_(True)  # a batch-aligned arg gets its implicit gradient too
    term = pycdeq.Termination(abstol=1e-11)

    def scaled(z, r, inj):
        return scale * fn(z, r, inj)

    grads = []
    for compact in (False, True):
        solver = pycdeq.Anderson(max_iter=300, termination=term, compact=compact)
        solution = pycdeq.solve(scaled, z0, solver, args=(rates, x), adjoint=pycdeq.GMRES(rtol=1e-12, max_iter=100))
        keep = solution.converged
        grads.append(torch.autograd.grad(solution.z[keep].sum(), (scale, x)))
    for plain, compacted in zip(*grads):
        torch.testing.assert_close(compacted, plain, rtol=1e-9, atol=1e-12)


def test_compacting_layer_matches_and_refuses_batch_statistics():
    torch.manual_seed(0)

    class F(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)
            with torch.no_grad():
                self.lin.weight.mul_(0.3)

        def forward(self, z, x):
            return torch.tanh(self.lin(z)) + x

    f = F()
    x = torch.randn(16, 8) * torch.linspace(0.01, 3, 16)[:, None]
    term = pycdeq.Termination(abstol=1e-6)
    z_plain, s_plain = pycdeq.DEQ(f, pycdeq.Broyden(termination=term))(x)
    z_comp, s_comp = pycdeq.DEQ(f, pycdeq.Broyden(termination=term, compact=True))(x)
    torch.testing.assert_close(z_comp, z_plain)
    assert torch.equal(s_comp.iterations, s_plain.iterations)

    class WithBatchNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm1d(8)

        def forward(self, z, x):
            return self.norm(z) * 0.1 + x

    with pytest.raises(ValueError, match="batch statistics"):
        pycdeq.DEQ(WithBatchNorm(), pycdeq.Anderson(compact=True))(x)


def test_compaction_on_tuple_states():
    rates = torch.linspace(0.05, 0.9, 10)

    def fn(z, r):
        return (r[:, None, None] * z[0] + 1, 0.5 * z[1] + r[:, None])

    z0 = (torch.zeros(10, 2, 3), torch.zeros(10, 4))
    term = pycdeq.Termination(abstol=1e-6)
    plain = pycdeq.solve(fn, z0, pycdeq.FixedPoint(max_iter=200, termination=term), args=(rates,))
    compact = pycdeq.solve(fn, z0, pycdeq.FixedPoint(max_iter=200, termination=term, compact=True), args=(rates,))
    for a, b in zip(compact.z, plain.z):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(compact.iterations, plain.iterations)


def test_compact_must_be_a_bool():
    with pytest.raises(TypeError, match="compact"):
        pycdeq.Anderson(compact=1)


def test_args_must_be_batch_aligned_tensors():
    z0 = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"args\[0\] must be a tensor with the batch \(4\)"):
        pycdeq.solve(lambda z, a: z * 0 + a, z0, pycdeq.FixedPoint(), args=(torch.zeros(5, 3),))
    with pytest.raises(TypeError, match="args must be a tuple"):
        pycdeq.solve(lambda z, a: z * 0 + a, z0, pycdeq.FixedPoint(), args=torch.zeros(4, 3))
