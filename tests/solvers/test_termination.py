"""The termination rule: modes abs / rel / norm, norms l2 / max, safe, best, check interval.

Through a full solve each sample must stop at the *first* iterate that passes the rule (the
iterate before it fails), with the rule evaluated by hand from the recorded ``z`` and
``fn(z)`` of every call.
"""

from __future__ import annotations

import pytest
import torch

import pycdeq
from pycdeq import Anderson, Broyden, FixedPoint, Status, Termination


def hand_norm(v, norm):
    return v.norm(dim=1) if norm == "l2" else v.abs().max(dim=1).values


def hand_rule(mode, norm, abstol, reltol, z, fz):
    r = hand_norm(fz - z, norm)
    f = hand_norm(fz, norm)
    absolute, relative = r <= abstol, r <= reltol * f
    return {"abs": absolute, "rel": relative, "norm": absolute & relative}[mode]


class Recorder:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, z):
        out = self.fn(z)
        self.calls.append((z.clone(), out.clone()))
        return out


def problem(batch=5, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, dim, dim, generator=gen, dtype=torch.float64)
    a = a / torch.linalg.matrix_norm(a, ord=2)[:, None, None] * torch.linspace(0.3, 0.9, batch,
                                                                                dtype=torch.float64)[:, None, None]
    # Very different scales per sample, so that abs and rel stop at different iterations.
    scale = torch.logspace(-2, 2, batch, dtype=torch.float64)[:, None]
    b = torch.randn(batch, dim, generator=gen, dtype=torch.float64) * scale
    return lambda z: torch.einsum("bij,bj->bi", a, z) + b, b


@pytest.mark.parametrize("mode", ["abs", "rel", "norm"])
@pytest.mark.parametrize("norm", ["l2", "max"])
@pytest.mark.parametrize("solver_cls", [FixedPoint, Anderson, Broyden])
def test_each_sample_stops_at_first_iterate_passing_the_rule(mode, norm, solver_cls):
    abstol, reltol = 1e-6, 1e-7
    term = Termination(mode=mode, norm=norm, abstol=abstol, reltol=reltol)
    fn, b = problem()
    rec = Recorder(fn)
    with torch.no_grad():
        sol = pycdeq.solve(rec, torch.zeros_like(b), solver_cls(max_iter=400, termination=term))
    assert sol.converged.all()
    # The rule by hand on the whole recorded batch (then row i): the same norms of the same
    # (batch, dim) tensors as the solver's, so bitwise equal by construction. (On a one-row
    # slice the l2 reduction may run another kernel and differ in the last bit.)
    for i, k in enumerate(sol.iterations.tolist()):
        z, fz = rec.calls[k]
        assert hand_rule(mode, norm, abstol, reltol, z, fz)[i].item()
        torch.testing.assert_close(sol.residual[i], hand_norm(fz - z, norm)[i], rtol=0, atol=0)
        if k > 0:
            z, fz = rec.calls[k - 1]
            assert not hand_rule(mode, norm, abstol, reltol, z, fz)[i].item()


def test_abs_and_rel_stop_differently_on_samples_of_different_scale():
    fn, b = problem()
    stops = {}
    for mode in ("abs", "rel"):
        term = Termination(mode=mode, abstol=1e-6, reltol=1e-6)
        with torch.no_grad():
            stops[mode] = pycdeq.solve(fn, torch.zeros_like(b), FixedPoint(max_iter=400, termination=term)).iterations
    # Large-scale samples (the last) need more iterations for abs, small ones (the first) for rel.
    assert stops["abs"][-1] > stops["rel"][-1]
    assert stops["abs"][0] < stops["rel"][0]


def test_norm_mode_needs_both_tests_so_stops_no_earlier_than_either():
    fn, b = problem()
    it = {}
    for mode in ("abs", "rel", "norm"):
        term = Termination(mode=mode, abstol=1e-6, reltol=1e-6)
        with torch.no_grad():
            it[mode] = pycdeq.solve(fn, torch.zeros_like(b), FixedPoint(max_iter=400, termination=term)).iterations
    assert torch.equal(it["norm"], torch.maximum(it["abs"], it["rel"]))


def test_max_norm_is_max_abs_and_l2_is_euclidean_per_sample():
    v = torch.tensor([[3.0, -4.0], [0.0, 0.5]])
    assert Termination(norm="l2").sample_norm(v).tolist() == [5.0, 0.5]
    assert Termination(norm="max").sample_norm(v).tolist() == [4.0, 0.5]


def test_converged_rule_on_hand_numbers():
    residual = torch.tensor([1e-5, 1e-3, 1e-3, 1e-1])
    fz_norm = torch.tensor([1.0, 100.0, 1.0, 1e4])
    assert Termination(mode="abs", abstol=1e-4).converged(residual, fz_norm).tolist() == [True, False, False, False]
    assert Termination(mode="abs", abstol=1e-2).converged(residual, fz_norm).tolist() == [True, True, True, False]
    assert Termination(mode="rel", reltol=1e-4).converged(residual, fz_norm).tolist() == [True, True, False, True]
    both = Termination(mode="norm", abstol=1e-2, reltol=1e-4).converged(residual, fz_norm)
    assert both.tolist() == [True, True, False, False]
    # The boundary passes (<=), as in "||r|| <= abstol".
    assert Termination(mode="abs", abstol=0.5).converged(torch.tensor([0.5]), torch.tensor([1.0])).item()


def test_rel_mode_accepts_zero_abstol_and_abs_mode_accepts_zero_reltol():
    Termination(mode="rel", abstol=0.0)
    Termination(mode="abs", reltol=0.0)
    with pytest.raises(ValueError, match="abstol"):
        Termination(mode="abs", abstol=0.0)
    with pytest.raises(ValueError, match="reltol"):
        Termination(mode="rel", reltol=0.0)
    with pytest.raises(ValueError, match="abstol"):
        Termination(mode="norm", abstol=0.0)


def test_safe_guard_fires_exactly_when_residual_passes_factor_times_initial():
    # Scalar Picard on z -> 2 z + 1 from 0: residual_k = 2^k exactly.
    fn = lambda z: 2 * z + 1
    for factor, expected in [(10.0, 4), (16.0, 5), (1000.0, 10)]:
        term = Termination(abstol=1e-8, safe=True, divergence_factor=factor)
        with torch.no_grad():
            sol = pycdeq.solve(fn, torch.zeros(1, 1, dtype=torch.float64), FixedPoint(max_iter=50, termination=term))
        assert sol.status.item() == Status.DIVERGED
        assert sol.iterations.item() == expected, factor  # first k with 2^k > factor
        assert sol.residual.item() == 2.0 ** expected


def test_best_returns_each_samples_lowest_residual_iterate_and_last_otherwise():
    # No fixed point (residual 1 + 0.5 sin(3 z) >= 0.5 per component), so Anderson wanders
    # until its budget ends and the residual goes up and down.
    gen = torch.Generator().manual_seed(2)
    shift = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    fn = lambda z: z + 1 + 0.5 * torch.sin(3 * z + shift)
    results = {}
    for best in (False, True):
        rec = Recorder(fn)
        term = Termination(abstol=1e-8, best=best)
        with torch.no_grad():
            sol = pycdeq.solve(rec, torch.zeros_like(shift), Anderson(max_iter=25, termination=term))
        assert (sol.status == Status.MAX_ITERS).all()
        zs = torch.stack([c[0] for c in rec.calls])  # (calls, batch, dim)
        residuals = torch.stack([(c[1] - c[0]).norm(dim=1) for c in rec.calls])  # (calls, batch)
        results[best] = (sol, zs, residuals)
    sol, zs, residuals = results[True]
    lowest = residuals.argmin(dim=0)
    for i, k in enumerate(lowest.tolist()):
        assert torch.equal(sol.z[i], zs[k, i])
        assert sol.residual[i] == residuals[k, i]
    sol_last, zs_last, residuals_last = results[False]
    assert torch.equal(sol_last.z, zs_last[-1])
    assert torch.equal(sol_last.residual, residuals_last[-1])
    # The test means something only if some sample's best iterate is not its last.
    assert (lowest != residuals.shape[0] - 1).any()
    assert (sol.residual <= sol_last.residual).all()


def test_best_does_not_change_converged_samples():
    fn, b = problem()
    with torch.no_grad():
        plain = pycdeq.solve(fn, torch.zeros_like(b), Anderson(termination=Termination(abstol=1e-8)))
        best = pycdeq.solve(fn, torch.zeros_like(b), Anderson(termination=Termination(abstol=1e-8, best=True)))
    assert plain.converged.all() and best.converged.all()
    assert torch.equal(plain.z, best.z)


@pytest.mark.parametrize("every", [2, 3, 8])
def test_check_interval_changes_nfe_only_not_results(every):
    fn, b = problem()
    with torch.no_grad():
        each = pycdeq.solve(fn, torch.zeros_like(b), Anderson(termination=Termination(abstol=1e-8, check_every=1)))
        sparse = pycdeq.solve(fn, torch.zeros_like(b), Anderson(termination=Termination(abstol=1e-8, check_every=every)))
    assert torch.equal(each.z, sparse.z)
    assert torch.equal(each.iterations, sparse.iterations)
    assert torch.equal(each.status, sparse.status)
    assert torch.equal(each.residual, sparse.residual)
    # The loop notices "all stopped" at the next multiple of the interval.
    stop = int(each.iterations.max())
    assert sparse.nfe == -(-stop // every) * every + 1
    assert sparse.nfe >= each.nfe == stop + 1


def test_default_check_interval_is_every_iteration_on_cpu():
    assert Termination().check_interval(torch.device("cpu")) == 1
    assert Termination(check_every=5).check_interval(torch.device("cpu")) == 5
    assert Termination().check_interval(torch.device("cuda")) > 1


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(mode="absolute"), ValueError, "mode"),
    (dict(mode=None), ValueError, "mode"),
    (dict(norm="l1"), ValueError, "norm"),
    (dict(norm="inf"), ValueError, "norm"),
    (dict(abstol=-1e-3), ValueError, "abstol"),
    (dict(abstol=float("nan")), ValueError, "abstol"),
    (dict(abstol=float("inf")), ValueError, "abstol"),
    (dict(abstol="1e-3"), TypeError, "abstol"),
    (dict(mode="rel", reltol=-1.0), ValueError, "reltol"),
    (dict(reltol=True), TypeError, "reltol"),
    (dict(divergence_factor=1.0), ValueError, "divergence_factor"),
    (dict(divergence_factor=-5.0), ValueError, "divergence_factor"),
    (dict(safe=1), TypeError, "safe"),
    (dict(best="yes"), TypeError, "best"),
    (dict(check_every=0), ValueError, "check_every"),
    (dict(check_every=2.0), TypeError, "check_every"),
])
def test_bad_termination_options_fail_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        Termination(**kwargs)


def test_termination_is_frozen_and_rejects_unknown_keywords():
    term = Termination()
    with pytest.raises(Exception):
        term.abstol = 1.0
    with pytest.raises(TypeError):
        Termination(stop_mode="rel")  # TorchDEQ issue #12: never silently ignored
    with pytest.raises(TypeError):
        Termination(tol=1e-3)
