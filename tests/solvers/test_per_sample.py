"""Per-sample semantics of the discrete solvers.

A batch whose samples converge at very different iterations (per-sample contraction
factors 0.1 .. 0.95): every sample stops on its own, is frozen bitwise from then on, and
reports its own iteration count; ``nfe`` counts calls of ``fn`` on the whole batch. A sample
that cannot converge, or that produces NaN, is reported as such while the others finish
exactly as they would without it.
"""

from __future__ import annotations

import pytest
import torch

import pycdeq
from _rounding import assert_same_stop, state_bound  # a sibling module: tests/solvers is on sys.path
from pycdeq import Anderson, Broyden, FixedPoint, Status, Termination

FACTORS = [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95]
# Iteration budgets that let every contractive sample converge (Picard needs ~430 for 0.95).
BUDGET = {"anderson": 150, "broyden": 150, "fixed_point": 600}
SOLVERS = {
    "anderson": lambda term, n: Anderson(max_iter=n, termination=term),
    "broyden": lambda term, n: Broyden(max_iter=n, termination=term),
    "fixed_point": lambda term, n: FixedPoint(max_iter=n, termination=term),
}


def problem(factors=FACTORS, dim=10, seed=0):
    """Per-sample linear maps ``A_b z + b_b`` with ``A_b = q_b Q_b D Q_b^T`` (``Q_b``
    orthogonal, ``D`` spread over ``[-1, 1]``): spectral radius and norm are exactly ``q_b``,
    so a Picard step shrinks the error by ``q_b`` and the samples stop far apart."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(factors), dim, dim, generator=gen, dtype=torch.float64))
    spectrum = torch.diag_embed(torch.linspace(-1, 1, dim, dtype=torch.float64).expand(len(factors), dim))
    a = q @ spectrum @ q.transpose(1, 2) * torch.tensor(factors, dtype=torch.float64)[:, None, None]
    b = torch.randn(len(factors), dim, generator=gen, dtype=torch.float64)
    return a, b


class Recorder:
    """Wraps ``fn`` and keeps a copy of every batch it is called on."""

    def __init__(self, fn):
        self.fn = fn
        self.inputs = []

    def __call__(self, z):
        self.inputs.append(z.detach().clone())
        return self.fn(z)


def run(fn, z0, solver):
    with torch.no_grad():
        return pycdeq.solve(fn, z0, solver)


@pytest.mark.parametrize("name", SOLVERS)
def test_converged_samples_are_frozen_bitwise_and_report_their_own_iterations(name):
    a, b = problem()
    fn = Recorder(lambda z: torch.einsum("bij,bj->bi", a, z) + b)
    sol = run(fn, torch.zeros_like(b), SOLVERS[name](Termination(abstol=1e-9), BUDGET[name]))
    assert sol.converged.all()
    iterations = sol.iterations.tolist()
    # Iteration k evaluates fn on iterate z_k (k = 0 is z0), so fn saw max(iterations) + 1 batches.
    assert sol.nfe == len(fn.inputs) == max(iterations) + 1
    assert sol.steps == max(iterations)
    if name == "fixed_point":  # Picard: strictly later stops for slower contractions
        assert iterations == sorted(iterations) and len(set(iterations)) == len(iterations)
    assert len(set(iterations)) >= 4, iterations
    for i, k in enumerate(iterations):
        frozen = fn.inputs[k][i]
        for later in fn.inputs[k:]:
            assert torch.equal(later[i], frozen), f"sample {i} moved after iteration {k}"
        assert torch.equal(sol.z[i], frozen)
        if k > 0:  # it was still moving right before it stopped
            assert not torch.equal(fn.inputs[k - 1][i], frozen)


def _residual_history(fn, inputs):
    """Per iterate, the per-sample residual norms ``||fn(z_k) - z_k||``."""
    return [torch.linalg.vector_norm(fn(z) - z, dim=1) for z in inputs]


@pytest.mark.parametrize("name", SOLVERS)
def test_iteration_count_in_a_batch_equals_that_of_the_sample_solved_alone(name):
    """Not bitwise: a batch and a single sample run other kernels (batched against single
    LAPACK calls and products), so iterates agree to rounding (see ``_rounding``), and the
    stop agrees unless a residual lands within that rounding of the tolerance."""
    a, b = problem()
    fn = lambda a, b: (lambda z: torch.einsum("bij,bj->bi", a, z) + b)
    tol = 1e-9
    make = lambda: SOLVERS[name](Termination(abstol=tol), BUDGET[name])
    batch_fn = Recorder(fn(a, b))
    batch = run(batch_fn, torch.zeros_like(b), make())
    batch_history = _residual_history(batch_fn.fn, batch_fn.inputs)
    q = torch.tensor(FACTORS, dtype=torch.float64)
    # Sums of dim terms; the residual moves by at most (1 + q) times the state.
    z_bound = state_bound(batch.z, q, terms=a.shape[1])
    for i in range(len(FACTORS)):
        alone_fn = Recorder(fn(a[i:i + 1], b[i:i + 1]))
        alone = run(alone_fn, torch.zeros_like(b[i:i + 1]), make())
        band = float((1 + q[i]) * z_bound[i])
        assert_same_stop(alone.iterations.item(), batch.iterations[i].item(),
                         [r[0] for r in _residual_history(alone_fn.fn, alone_fn.inputs)],
                         [r[i] for r in batch_history], tol, band)
        assert alone.nfe == alone.iterations.item() + 1
        if alone.iterations.item() == batch.iterations[i].item():
            assert torch.linalg.vector_norm(alone.z[0] - batch.z[i]) <= z_bound[i]
            assert abs(alone.residual[0] - batch.residual[i]) <= band


@pytest.mark.parametrize("name", SOLVERS)
def test_raising_max_iter_past_a_samples_stop_leaves_it_bitwise_unchanged(name):
    a, b = problem()
    fn = lambda z: torch.einsum("bij,bj->bi", a, z) + b
    term = Termination(abstol=1e-9)
    full = run(fn, torch.zeros_like(b), SOLVERS[name](term, BUDGET[name]))
    stops = full.iterations.tolist()
    for budget in sorted(set(stops))[:-1]:
        partial = run(fn, torch.zeros_like(b), SOLVERS[name](term, budget))
        for i, k in enumerate(stops):
            if k <= budget:
                assert partial.status[i] == Status.CONVERGED and partial.iterations[i] == k
                assert torch.equal(partial.z[i], full.z[i])
            else:
                assert partial.status[i] == Status.MAX_ITERS and partial.iterations[i] == budget


def _with_rootless_last_sample(a, b):
    """The last sample becomes ``z -> z + c (1 + ||z||)``: no fixed point, and the residual
    ``||c|| (1 + ||z||) >= ||c||`` everywhere, also in floating point. (Plain ``z -> z + c``
    has floating-point fixed points, ``fl(z + c) == z`` for ``|z| ~ 1e17``; that no solver
    is thrown there is checked in ``test_rootless_maps``.)"""
    c = 0.05 * b[-1] / b[-1].norm()

    def fn(z):
        out = torch.einsum("bij,bj->bi", a, z) + b
        out[-1] = z[-1] + c * (1 + z[-1].norm())
        return out

    return fn




@pytest.mark.parametrize("name", SOLVERS)
def test_sample_without_fixed_point_is_not_converged_while_the_others_converge(name):
    a, b = problem()
    clean_fn = lambda z: torch.einsum("bij,bj->bi", a, z) + b
    budget = BUDGET[name]
    make = lambda: SOLVERS[name](Termination(abstol=1e-9), budget)
    clean = run(clean_fn, torch.zeros_like(b), make())
    sol = run(_with_rootless_last_sample(a, b), torch.zeros_like(b), make())
    assert sol.status[-1] == Status.MAX_ITERS
    assert sol.iterations[-1] == budget
    assert sol.residual[-1] >= 0.05 * (1 - 1e-12)
    assert torch.isfinite(sol.z[-1]).all()
    assert sol.converged[:-1].all()
    assert sol.nfe == budget + 1
    assert torch.equal(sol.z[:-1], clean.z[:-1])
    assert torch.equal(sol.iterations[:-1], clean.iterations[:-1])


@pytest.mark.parametrize("name", ["broyden", "fixed_point"])
def test_safe_mode_flags_rootless_sample_as_diverged(name):
    """Picard's residual grows by ~1.05 per step, Broyden's singular secant model throws the
    iterate far away: both pass 50x the initial residual. (Anderson keeps this residual
    bounded, so the guard rightly stays quiet there.)"""
    a, b = problem()
    term = Termination(abstol=1e-9, safe=True, divergence_factor=50.0)
    sol = run(_with_rootless_last_sample(a, b), torch.zeros_like(b), SOLVERS[name](term, BUDGET[name]))
    assert sol.status[-1] == Status.DIVERGED
    assert sol.residual[-1] > 50 * 0.05
    assert sol.converged[:-1].all()


def test_safe_mode_flags_expansive_sample_as_diverged_while_the_others_converge():
    a, b = problem()
    a[2] = 2.0 * torch.eye(a.shape[1], dtype=a.dtype)  # Picard doubles the residual each step
    fn = lambda z: torch.einsum("bij,bj->bi", a, z) + b
    term = Termination(abstol=1e-9, safe=True, divergence_factor=100.0)
    sol = run(fn, torch.zeros_like(b), FixedPoint(max_iter=500, termination=term))
    assert sol.status[2] == Status.DIVERGED
    # Residual 2^k ||b||: the first k with 2^k > 100 is 7.
    assert sol.iterations[2] == 7
    others = [i for i in range(len(FACTORS)) if i != 2]
    assert sol.converged[others].all()
    # Without the guard the same sample just runs out of budget.
    unsafe = run(fn, torch.zeros_like(b), FixedPoint(max_iter=40, termination=Termination(abstol=1e-9)))
    assert unsafe.status[2] == Status.MAX_ITERS


def _nan_injector(fn, sample, at_call):
    calls = {"n": 0}

    def wrapped(z):
        out = fn(z)
        calls["n"] += 1
        if calls["n"] > at_call:
            out = out.clone()
            out[sample] = float("nan")
        return out

    return wrapped


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("at_call", [0, 3])
def test_nan_in_one_sample_is_non_finite_and_the_others_finish_identically(name, at_call):
    a, b = problem()
    bad = 4
    clean_fn = lambda z: torch.einsum("bij,bj->bi", a, z) + b
    make = lambda: SOLVERS[name](Termination(abstol=1e-9), BUDGET[name])
    clean = run(clean_fn, torch.zeros_like(b), make())
    dirty = run(_nan_injector(clean_fn, bad, at_call), torch.zeros_like(b), make())

    assert dirty.status[bad] == Status.NON_FINITE
    assert dirty.iterations[bad] == at_call
    # The bad sample returns its best finite iterate (z0 when even fn(z0) was NaN), never NaN;
    # its residual is that iterate's (inf when no finite residual was ever seen).
    assert torch.isfinite(dirty.z[bad]).all()
    if at_call == 0:
        assert torch.equal(dirty.z[bad], torch.zeros_like(b[bad])) and dirty.residual[bad] == float("inf")
    else:
        assert torch.isfinite(dirty.residual[bad])
    others = [i for i in range(len(FACTORS)) if i != bad]
    assert dirty.converged[others].all()
    # Bitwise the same as the solve without the NaN: the bad sample cannot leak.
    assert torch.equal(dirty.z[others], clean.z[others])
    assert torch.equal(dirty.iterations[others], clean.iterations[others])
    assert torch.equal(dirty.residual[others], clean.residual[others])
    assert dirty.status_counts() == {"converged": len(others), "non_finite": 1}


@pytest.mark.parametrize("name", SOLVERS)
def test_inf_in_one_sample_is_non_finite(name):
    a, b = problem()
    clean_fn = lambda z: torch.einsum("bij,bj->bi", a, z) + b

    def fn(z):
        out = clean_fn(z).clone()
        out[1, 0] = float("inf")
        return out

    sol = run(fn, torch.zeros_like(b), SOLVERS[name](Termination(abstol=1e-9), BUDGET[name]))
    assert sol.status[1] == Status.NON_FINITE
    assert sol.converged[[0, 2, 3, 4, 5, 6]].all()
