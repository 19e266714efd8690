"""Broyden's update over blocks of rows (CPU, no autograd) is the same update as over the
whole batch at once and as the autograd path: same iterates to rounding, same iteration
counts and statuses, with per-sample stopping (frozen samples), a NaN sample, skipped
updates, the ring buffer overwriting its oldest pairs, and compaction."""

from __future__ import annotations

import pytest
import torch

import pycdeq
import pycdeq.solvers.broyden as broyden
from pycdeq import Broyden, Status, Termination

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
        calls.append(1)
        out = r * torch.tanh(z @ w.T) + inj
        if nan_sample is not None and len(calls) > 3:
            out = torch.where((rows == nan_sample)[:, None], float("nan"), out)
        return out

    fn.calls = calls
    fn.args = (rates, x, torch.arange(BATCH))
    return fn, torch.zeros(BATCH, DIM, dtype=dtype), w


def _solve(fn, z0, solver, row_bytes, monkeypatch, grad=False):
    monkeypatch.setattr(broyden, "ROW_BYTES", row_bytes)
    fn.calls.clear()
    with torch.set_grad_enabled(grad):
        return pycdeq.solve(fn, z0, solver, args=fn.args)


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
        assert torch.equal(blocks.iterations, whole.iterations)
        assert torch.equal(blocks.status, whole.status)
        assert blocks.nfe == whole.nfe
        torch.testing.assert_close(blocks.z, whole.z, rtol=0, atol=10 * torch.finfo(dtype).eps)
    assert len(set(whole.iterations.tolist())) > 2  # samples stopped at different iterations
    if nan_sample is None:
        assert whole.converged.all()
    else:
        assert whole.status[nan_sample] == Status.NON_FINITE
        assert whole.converged.sum() == BATCH - 1


def test_blocks_match_the_autograd_path(monkeypatch):
    fn, z0, w = _problem(torch.float64)
    w.requires_grad_(True)  # the graph through the solver: no in-place writes, one block
    solver = Broyden(memory=4, max_iter=60, termination=Termination(abstol=1e-11))
    blocks = _solve(fn, z0, solver, 2 * DIM * 8, monkeypatch)
    graph = _solve(fn, z0, solver, 2 * DIM * 8, monkeypatch, grad=True)
    assert graph.z.requires_grad
    assert torch.equal(blocks.iterations, graph.iterations)
    torch.testing.assert_close(blocks.z, graph.z.detach(), rtol=0, atol=1e-14)
    (grad,) = torch.autograd.grad(graph.z.sum(), w)
    assert torch.isfinite(grad).all()


def test_blocks_with_compaction(monkeypatch):
    fn, z0, _ = _problem(torch.float64)
    term = Termination(abstol=1e-11)
    whole = _solve(fn, z0, Broyden(max_iter=60, termination=term), BATCH * DIM * 8, monkeypatch)
    compact = _solve(fn, z0, Broyden(max_iter=60, termination=term, compact=True), 2 * DIM * 8, monkeypatch)
    assert torch.equal(compact.iterations, whole.iterations)
    torch.testing.assert_close(compact.z, whole.z, rtol=0, atol=1e-14)
