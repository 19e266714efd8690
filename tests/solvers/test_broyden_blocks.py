"""Broyden's update over blocks of rows (CPU, no autograd) is the same update as over the
whole batch at once and as the autograd path (the ``Unrolled`` adjoint, which runs the
solver under autograd): same iterates to rounding, same iteration counts and statuses, with
per-sample stopping (frozen samples), a NaN sample, skipped updates, the ring buffer
overwriting its oldest pairs, and compaction.

"To rounding": blocks run the history products on fewer rows at a time, which may pick
other kernels (see ``_rounding``), so iterates agree within ``state_bound`` and the stops
agree unless a residual lies within that rounding of the tolerance."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

import pycdeq
import pycdeq.solvers.broyden as broyden
from _rounding import assert_same_stop, state_bound  # a sibling module: tests/solvers is on sys.path
from pycdeq import Broyden, Status, Termination, Unrolled

BATCH, DIM = 11, 64  # DIM * n > SMALL_PRODUCT from n = 7 on: both product paths run


def _problem(dtype, nan_sample=None):
    """z = rate_b * tanh(W z) + x_b with per-sample rates (different stopping iterations);
    with ``nan_sample`` that sample's map returns NaN from its fourth evaluation on."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(DIM, DIM, generator=gen, dtype=torch.float64)
    w = (w / torch.linalg.matrix_norm(w, 2)).to(dtype)
    rates = torch.linspace(0.2, 0.95, BATCH, dtype=dtype)[:, None]
    x = torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64).to(dtype)
    calls = []

    def fn(z, r, inj, rows):  # batch-aligned args: a compacting solver hands over its rows
        out = r * torch.tanh(z @ w.T) + inj
        if nan_sample is not None and len(calls) >= 3:
            out = torch.where((rows == nan_sample)[:, None], float("nan"), out)
        # Per call, every sample's residual (NaN for rows a compacting solve left out).
        residual = torch.full((BATCH,), float("nan"), dtype=dtype)
        residual[rows] = torch.linalg.vector_norm(out - z, dim=1).detach()
        calls.append(residual)
        return out

    fn.calls = calls
    fn.args = (rates, x, torch.arange(BATCH))
    fn.rates = rates[:, 0].double()
    return fn, torch.zeros(BATCH, DIM, dtype=dtype), w


class Solved(NamedTuple):
    """A solve and, per call of fn, every sample's residual (the solution is immutable)."""

    solution: pycdeq.Solution
    residual_history: list

    def __getattr__(self, name):
        return getattr(self.solution, name)


def _solve(fn, z0, solver, row_bytes, monkeypatch, adjoint=None):
    """Without autograd (blocks of ``row_bytes``), or with ``adjoint`` under autograd."""
    monkeypatch.setattr(broyden, "ROW_BYTES", row_bytes)
    fn.calls.clear()
    if adjoint is None:
        with torch.no_grad():
            solution = pycdeq.solve(fn, z0, solver, args=fn.args)
    else:
        solution = pycdeq.solve(fn, z0, solver, args=fn.args, adjoint=adjoint)
    return Solved(solution, list(fn.calls))


def _assert_same_solve(a, b, fn, tol):
    """Same statuses; per sample the same stop (unless rounding-near the tolerance) and, if
    so, the same iterate to rounding (sample contraction rates ``fn.rates``)."""
    assert torch.equal(a.status, b.status)
    za, zb = a.z.detach().double(), b.z.detach().double()
    bound = state_bound(b.z.detach(), fn.rates.to(b.z.dtype), terms=DIM).double()
    for i in range(BATCH):
        if a.status[i] == Status.NON_FINITE:
            continue
        k_a, k_b = int(a.iterations[i]), int(b.iterations[i])
        band = float((1 + fn.rates[i]) * bound[i])
        assert_same_stop(k_a, k_b, [r[i] for r in a.residual_history], [r[i] for r in b.residual_history],
                         tol, band)
        if k_a == k_b:
            assert torch.linalg.vector_norm(za[i] - zb[i]) <= bound[i], (i, za[i] - zb[i], bound[i])


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-5)])
@pytest.mark.parametrize("memory", [30, 4])
@pytest.mark.parametrize("nan_sample", [None, 6])
def test_blocks_match_the_whole_batch_update(dtype, tol, memory, nan_sample, monkeypatch):
    fn, z0, _ = _problem(dtype, nan_sample)
    solver = Broyden(memory=memory, max_iter=60, termination=Termination(abstol=tol))
    row = DIM * z0.element_size()
    whole = _solve(fn, z0, solver, BATCH * row, monkeypatch)
    for rows in (1, 3):  # 3 does not divide the batch: a short last block
        blocks = _solve(fn, z0, solver, rows * row, monkeypatch)
        _assert_same_solve(blocks, whole, fn, tol)
    assert len(set(whole.iterations.tolist())) > 2  # samples stopped at different iterations
    if nan_sample is None:
        assert whole.converged.all()
    else:
        assert whole.status[nan_sample] == Status.NON_FINITE
        assert whole.converged.sum() == BATCH - 1


@pytest.mark.parametrize("memory", [30, 4])  # 4: the ring buffer overwrites pairs
def test_blocks_match_the_autograd_path(memory, monkeypatch):
    fn, z0, w = _problem(torch.float64)
    w.requires_grad_(True)
    tol = 1e-11
    solver = Broyden(memory=memory, max_iter=60, termination=Termination(abstol=tol))
    blocks = _solve(fn, z0, solver, 2 * DIM * 8, monkeypatch)
    # Unrolled runs the solver itself under autograd (the default adjoint would run the
    # forward under no_grad, i.e. the block path again): no in-place writes, one block.
    graph = _solve(fn, z0, solver, 2 * DIM * 8, monkeypatch, adjoint=Unrolled())
    assert graph.z.requires_grad and graph.z.grad_fn is not None
    assert blocks.converged.all()
    _assert_same_solve(blocks, graph, fn, tol)
    (grad,) = torch.autograd.grad(graph.z.sum(), w)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0


def test_blocks_with_compaction(monkeypatch):
    fn, z0, _ = _problem(torch.float64)
    term = Termination(abstol=1e-11)
    whole = _solve(fn, z0, Broyden(max_iter=60, termination=term), BATCH * DIM * 8, monkeypatch)
    compact = _solve(fn, z0, Broyden(max_iter=60, termination=term, compact=True), 2 * DIM * 8, monkeypatch)
    assert whole.converged.all()
    _assert_same_solve(compact, whole, fn, term.abstol)
