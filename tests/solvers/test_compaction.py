"""compact=True: finished samples leave the work, and nothing else changes."""

import pytest
import torch
from torch import nn

import pycdeq
from _rounding import assert_same_stop, state_bound  # a sibling module: tests/solvers is on sys.path
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

    def fn(z, r, inj, rows):  # the per-sample inputs arrive as batch-aligned args
        calls.append(z.shape[0])
        out = r * torch.tanh(z @ w.T) + inj
        # Per call, every sample's residual (NaN for the rows left out).
        residual = torch.full((batch,), float("nan"), dtype=torch.float64)
        residual[rows] = torch.linalg.vector_norm(out - z, dim=1)
        fn.residuals.append(residual)
        return out

    fn.residuals = []
    fn.rates = rates[:, 0]
    return fn, torch.zeros(batch, dim, dtype=torch.float64), (rates, x, torch.arange(batch)), calls


@pytest.mark.parametrize("solver_class", SOLVERS)
def test_compaction_gives_the_same_solution_with_fewer_rows(solver_class):
    fn, z0, args, calls = _problem()
    tol = 1e-9
    term = pycdeq.Termination(abstol=tol)
    plain = pycdeq.solve(fn, z0, solver_class(max_iter=80, termination=term), args=args)
    plain_calls, plain_residuals = list(calls), list(fn.residuals)
    calls.clear()
    fn.residuals.clear()
    compact = pycdeq.solve(fn, z0, solver_class(max_iter=80, termination=term, compact=True), args=args)
    assert torch.equal(compact.status, plain.status)
    # Identical up to rounding: kernels round differently by batch size (see _rounding).
    # The expansive sample 3 is left out: its iterates grow chaotically, so rounding
    # differences grow too.
    ok = plain.converged
    bound = state_bound(plain.z, fn.rates, terms=z0.shape[1])
    for i in ok.nonzero()[:, 0].tolist():
        band = float((1 + fn.rates[i]) * bound[i])
        k_plain, k_compact = int(plain.iterations[i]), int(compact.iterations[i])
        assert_same_stop(k_compact, k_plain, [r[i] for r in fn.residuals], [r[i] for r in plain_residuals],
                         tol, band)
        if k_plain == k_compact:
            assert torch.linalg.vector_norm(compact.z[i] - plain.z[i]) <= bound[i]
            assert abs(compact.residual[i] - plain.residual[i]) <= band
    assert plain.status[3] == Status.MAX_ITERS and compact.converged.sum() == z0.shape[0] - 1
    assert compact.iterations[3] == plain.iterations[3] and compact.nfe == plain.nfe
    # The work shrinks: every call after the first compaction sees at most half the batch.
    assert min(calls) < z0.shape[0] <= max(calls)
    assert sum(calls) < sum(plain_calls)


def test_compaction_keeps_gradients_exact():
    fn, z0, (rates, x, rows), _ = _problem(batch=8, dim=6)
    scale = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    x = x.clone().requires_grad_(True)  # a batch-aligned arg gets its implicit gradient too
    term = pycdeq.Termination(abstol=1e-11)

    def scaled(z, r, inj, rows):
        return scale * fn(z, r, inj, rows)

    grads = []
    for compact in (False, True):
        solver = pycdeq.Anderson(max_iter=300, termination=term, compact=compact)
        solution = pycdeq.solve(scaled, z0, solver, args=(rates, x, rows),
                                adjoint=pycdeq.GMRES(rtol=1e-12, max_iter=100))
        keep = solution.converged
        grads.append(torch.autograd.grad(solution.z[keep].sum(), (scale, x)))
    # Each adjoint solve meets GMRES's rtol 1e-12, so each gradient is within cond(I - J)
    # 1e-12 <= (1 + 0.95 * 0.9) / (1 - 0.95 * 0.9) 1e-12 ~ 1.3e-11 relative of the exact one;
    # the forward solutions differ by rounding only (see _rounding). rtol 1e-9: 75x that.
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
    tol = 1e-6
    term = pycdeq.Termination(abstol=tol)
    z_plain, s_plain = pycdeq.DEQ(f, pycdeq.Broyden(termination=term))(x)
    z_comp, s_comp = pycdeq.DEQ(f, pycdeq.Broyden(termination=term, compact=True))(x)
    assert s_plain.converged.all() and s_comp.converged.all()
    # Both are within ||r|| / (1 - q) of the one fixed point (f is a q-contraction in z,
    # q = ||0.3 W||_2, tanh being 1-Lipschitz), to float32 rounding of the residual
    # (state_bound). (Their stops are compared, rounding-aware, in float64 above.)
    q = torch.linalg.matrix_norm(f.lin.weight.detach().double(), ord=2)
    bound = 2 * tol / (1 - q) + state_bound(z_plain.detach(), q, terms=8)
    assert (torch.linalg.vector_norm(z_comp - z_plain, dim=1) <= bound).all()

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
    # Bitwise by construction: fn is elementwise and the norms are per row, so a row's
    # arithmetic does not depend on which other rows are present.
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
