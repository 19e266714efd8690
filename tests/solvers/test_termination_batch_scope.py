"""``Termination(scope="batch")``: the reference's rule, one norm over the whole batch.

DeepEquilibriumNetworks.jl v0.2.6 stops the continuous DEQ when ``||f(u) - u|| <= reltol
||f(u)||`` with ``||.||`` the 2-norm of the whole batch's state vector. The tests check the
rule on hand-computed numbers, then through full solves against the rule evaluated by hand
from every recorded ``(z, fn(z))`` of the flattened batch.
"""

from __future__ import annotations

import pytest
import torch

import pycdeq
from pycdeq import VCAB3, Anderson, FixedPoint, Status, Termination, Tsit5


def test_l2_batch_norm_is_the_norm_of_the_flattened_batch():
    r = torch.tensor([[0.3, 0.4], [0.0, 0.1]])
    term = Termination(scope="batch")
    assert torch.isclose(term.batch_norm(term.sample_norm(r)), r.reshape(-1).norm())


def test_max_batch_norm_is_the_largest_entry_of_the_batch():
    r = torch.tensor([[0.3, -0.4], [0.0, 0.1]])
    term = Termination(norm="max", scope="batch")
    assert term.batch_norm(term.sample_norm(r)).item() == pytest.approx(0.4)


def test_batch_rule_on_hand_numbers_differs_from_per_sample_rule():
    # ||r|| = (0.5, 0.1), ||f|| = (20, 1). Per sample, rel 0.05: 0.5 <= 1 passes, 0.1 <= 0.05 fails.
    # Batch: sqrt(0.25 + 0.01) = 0.5099 <= 0.05 sqrt(401) = 1.0012: every sample passes.
    residual, fz_norm = torch.tensor([0.5, 0.1]), torch.tensor([20.0, 1.0])
    per_sample = Termination(mode="rel", reltol=0.05).converged(residual, fz_norm)
    batch = Termination(mode="rel", reltol=0.05, scope="batch").converged(residual, fz_norm)
    assert per_sample.tolist() == [True, False]
    assert batch.tolist() == [True, True]
    # A batch that fails although one sample passes: ||r|| = (0.01, 2), ||f|| = (1, 10):
    # sqrt(0.0001 + 4) = 2.00002 > 0.05 sqrt(101) = 0.5025.
    residual, fz_norm = torch.tensor([0.01, 2.0]), torch.tensor([1.0, 10.0])
    assert Termination(mode="rel", reltol=0.05).converged(residual, fz_norm).tolist() == [True, False]
    assert Termination(mode="rel", reltol=0.05, scope="batch").converged(residual, fz_norm).tolist() == [False, False]


def test_batch_abs_and_norm_modes_on_hand_numbers():
    residual, fz_norm = torch.tensor([3e-3, 4e-3]), torch.tensor([1.0, 1.0])  # batch l2 5e-3, ||f|| sqrt 2
    assert Termination(mode="abs", abstol=5e-3, scope="batch").converged(residual, fz_norm).tolist() == [True, True]
    assert Termination(mode="abs", abstol=4.9e-3, scope="batch").converged(residual, fz_norm).tolist() == [False, False]
    both = Termination(mode="norm", abstol=5e-3, reltol=3e-3, scope="batch").converged(residual, fz_norm)
    assert both.tolist() == [False, False]  # 5e-3 > 3e-3 * sqrt(2) = 4.24e-3
    max_norm = Termination(mode="abs", abstol=4e-3, norm="max", scope="batch")
    assert max_norm.converged(residual, fz_norm).tolist() == [True, True]


class Recorder:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, z):
        out = self.fn(z)
        self.calls.append((z.clone(), out.clone()))
        return out


def problem(batch=5, dim=8, seed=0):
    """Per-sample affine contractions of different rates and scales."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, dim, dim, generator=gen, dtype=torch.float64)
    rates = torch.linspace(0.3, 0.9, batch, dtype=torch.float64)
    a = a / torch.linalg.matrix_norm(a, ord=2)[:, None, None] * rates[:, None, None]
    b = torch.randn(batch, dim, generator=gen, dtype=torch.float64) * torch.logspace(-1, 1, batch,
                                                                                     dtype=torch.float64)[:, None]
    return lambda z: torch.einsum("bij,bj->bi", a, z) + b, b


def whole_batch_rule(z, fz, reltol):
    return (fz - z).reshape(-1).norm() <= reltol * fz.reshape(-1).norm()


@pytest.mark.parametrize("solver", [
    FixedPoint(max_iter=300, termination=Termination(mode="rel", reltol=1e-5, scope="batch")),
    Anderson(max_iter=300, termination=Termination(mode="rel", reltol=1e-5, scope="batch")),
], ids=["fixed_point", "anderson"])
def test_discrete_solve_stops_every_sample_at_the_first_iterate_the_whole_batch_passes(solver):
    fn, b = problem()
    recorder = Recorder(fn)
    with torch.no_grad():
        solution = pycdeq.solve(recorder, torch.zeros_like(b), solver)
    assert (solution.status == Status.CONVERGED).all()
    stop = int(solution.iterations[0])
    assert (solution.iterations == stop).all()
    assert whole_batch_rule(*recorder.calls[stop], 1e-5)
    assert not whole_batch_rule(*recorder.calls[stop - 1], 1e-5)
    assert torch.equal(solution.z, recorder.calls[stop][0])


def test_samples_that_pass_alone_keep_iterating_until_the_batch_passes():
    fn, b = problem()
    rule = dict(mode="rel", reltol=1e-5)
    with torch.no_grad():
        alone = pycdeq.solve(fn, torch.zeros_like(b), FixedPoint(max_iter=300, termination=Termination(**rule)))
        together = pycdeq.solve(fn, torch.zeros_like(b),
                                FixedPoint(max_iter=300, termination=Termination(**rule, scope="batch")))
    assert alone.iterations.min() < together.iterations.min()  # the fast samples no longer stop early
    assert together.iterations.unique().numel() == 1


@pytest.mark.parametrize("method", [VCAB3, Tsit5])
def test_continuous_solve_shares_status_steps_and_stop_across_the_batch(method):
    fn, b = problem()
    recorder = Recorder(fn)
    solver = method(rtol=1e-6, atol=1e-8, max_steps=400,
                    termination=Termination(mode="rel", reltol=1e-3, scope="batch"))
    with torch.no_grad():
        solution = pycdeq.solve(recorder, torch.zeros_like(b), solver)
    assert (solution.status == Status.CONVERGED).all()
    assert solution.iterations.unique().numel() == 1
    # The returned state passes the whole-batch rule (checked by hand on fn of it).
    z = solution.z
    assert whole_batch_rule(z, fn(z), 1e-3)


def test_batch_scope_with_max_iters_reports_every_sample_as_out_of_budget():
    fn, b = problem()
    with torch.no_grad():
        solution = pycdeq.solve(fn, torch.zeros_like(b),
                                FixedPoint(max_iter=3, termination=Termination(mode="rel", reltol=1e-9, scope="batch")))
    assert (solution.status == Status.MAX_ITERS).all()
    assert (solution.iterations == 3).all()


def test_compacting_solvers_refuse_the_batch_scope_naming_both_options():
    with pytest.raises(ValueError, match="scope='batch'.*compact"):
        Anderson(compact=True, termination=Termination(scope="batch"))
    Anderson(compact=True, termination=Termination(scope="sample"))
    Anderson(compact=False, termination=Termination(scope="batch"))


@pytest.mark.parametrize("scope", ["global", "Batch", None])
def test_unknown_scope_is_refused_naming_the_option(scope):
    with pytest.raises(ValueError, match="scope"):
        Termination(scope=scope)
