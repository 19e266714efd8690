"""The fixed-shape form of the solvers' histories (``history.fixed_shapes``: every slot, the
unwritten ones zero and masked; what runs on CUDA, under torch.compile and in a CUDA graph)
against the form eager CPU runs (the written slots only): the same per-sample results to
rounding, through the ring's wrap-around, under autograd, and with compaction at batch sizes
that equal the sizes of the solvers' shared state."""

from __future__ import annotations

import pytest
import torch

import pycdeq
from pycdeq import Anderson, Broyden, FixedPoint, Termination, Unrolled
from pycdeq.solvers.history import fixed_shapes

TOL = 1e-11
RATE = 0.9  # the largest per-sample contraction factor below
SOLVERS = {  # memories shorter than the solves: the rings wrap around
    "anderson": lambda **kw: Anderson(m=3, max_iter=150, termination=Termination(abstol=TOL), **kw),
    "anderson_damped": lambda **kw: Anderson(m=4, beta=0.6, max_iter=150, termination=Termination(abstol=TOL), **kw),
    "broyden": lambda **kw: Broyden(memory=4, max_iter=150, termination=Termination(abstol=TOL), **kw),
    "fixed_point": lambda **kw: FixedPoint(max_iter=400, termination=Termination(abstol=TOL), **kw),
}


def problem(batch, dim=12, seed=0):
    """``z = rate_b tanh(W z + x_b)``, rates spread over [0.2, RATE]: the samples stop apart."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    w = w / torch.linalg.matrix_norm(w, ord=2)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    rates = torch.linspace(0.2, RATE, batch, dtype=torch.float64)[:, None]
    return (lambda z, r, inj: r * torch.tanh(z @ w.T + inj)), torch.zeros(batch, dim, dtype=torch.float64), (rates, x)


def assert_same_per_sample(a, b):
    assert torch.equal(a.status, b.status) and torch.equal(a.iterations, b.iterations)
    # Both stopped at the same iteration with ||f(z) - z|| <= TOL, f a contraction with factor
    # <= RATE: each within TOL / (1 - RATE) of the fixed point.
    torch.testing.assert_close(a.z, b.z, rtol=0, atol=2 * TOL / (1 - RATE))


@pytest.mark.parametrize("name", SOLVERS)
def test_fixed_shapes_give_the_written_slots_results(name):
    fn, z0, args = problem(batch=5)
    with torch.no_grad():
        sliced = pycdeq.solve(fn, z0, SOLVERS[name](), args=args)
        with fixed_shapes():
            fixed = pycdeq.solve(fn, z0, SOLVERS[name](), args=args)
    assert bool(sliced.converged.all()) and int(sliced.iterations.max()) > 8
    assert_same_per_sample(fixed, sliced)
    assert fixed.nfe == sliced.nfe


@pytest.mark.parametrize("name", ["anderson", "broyden"])
def test_fixed_shapes_differentiate_like_the_written_slots_under_unrolled(name):
    fn, z0, (rates, x) = problem(batch=3)
    grads = []
    for context in (torch.enable_grad, fixed_shapes):
        x_leaf = x.clone().requires_grad_(True)
        with context():
            sol = pycdeq.solve(fn, z0, SOLVERS[name](), args=(rates, x_leaf), adjoint=Unrolled())
            grads.append(torch.autograd.grad(sol.z.square().sum(), x_leaf)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("batch", [4, 5, 6])  # Anderson's m + 1, Broyden's memory, ...
def test_compaction_slices_only_per_sample_state(name, batch):
    fn, z0, args = problem(batch=batch)
    with torch.no_grad():
        whole = pycdeq.solve(fn, z0, SOLVERS[name](), args=args)
        compact = pycdeq.solve(fn, z0, SOLVERS[name](compact=True), args=args)
    assert_same_per_sample(compact, whole)
