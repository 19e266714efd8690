"""The continuous DEQ solve: ``dz/dt = fn(z) - z`` integrated per sample to steady state.

Known answers: for ``fn(z) = M_b z + c_b`` the equilibrium is ``(I - M_b)^{-1} c_b`` and sample
``b`` relaxes at rate ``1 - q_b`` (``q_b`` the spectral radius of ``M_b``), so samples with
different ``q_b`` stop at very different times. Each must stop on its own test, be frozen
bitwise afterwards (every later call of ``fn`` sees its final state) and keep its own counts.
"""

from __future__ import annotations

import pytest
import torch

import pycdeq
from pycdeq import BS3, GMRES, RK4, Dopri5, Euler, Status, Termination, Tsit5, Unrolled

FACTORS = [0.1, 0.5, 0.8, 0.9, 0.95]


def linear_problem(factors=FACTORS, dim=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(factors), dim, dim, generator=gen, dtype=torch.float64))
    spectrum = torch.diag_embed(torch.linspace(-1, 1, dim, dtype=torch.float64).expand(len(factors), dim))
    m = q @ spectrum @ q.transpose(1, 2) * torch.tensor(factors, dtype=torch.float64)[:, None, None]
    c = torch.randn(len(factors), dim, generator=gen, dtype=torch.float64)
    equilibrium = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - m, c)
    return m, c, equilibrium


class Recorder:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, z):
        self.calls.append(z.detach().clone())
        return self.fn(z)


@pytest.mark.parametrize("method_cls, tol", [(Tsit5, 1e-8), (Dopri5, 1e-8), (BS3, 1e-7)])
def test_linear_equilibrium_each_sample_stops_at_its_own_time_and_is_frozen(method_cls, tol):
    m, c, equilibrium = linear_problem()
    fn = Recorder(lambda z: torch.einsum("bij,bj->bi", m, z) + c)
    method = method_cls(rtol=tol, atol=tol, max_steps=2000,
                        termination=Termination(mode="abs", abstol=1e-6, norm="max"))
    solution = method.solve_flat(fn, torch.zeros_like(c))
    assert bool((solution.status == Status.CONVERGED).all())
    assert bool((solution.residual <= 1e-6).all())
    # Residual 1e-6 with contraction q: error <= residual / (1 - q).
    error = (solution.z - equilibrium).abs().amax(dim=1)
    bound = 1e-6 / (1 - torch.tensor(FACTORS, dtype=torch.float64))
    assert bool((error <= bound * 1.01).all()), (error, bound)
    # Slower relaxation -> later stop, in time and in steps.
    assert bool((solution.t[1:] > solution.t[:-1]).all()), solution.t
    assert bool((solution.iterations[1:] >= solution.iterations[:-1]).all())
    assert int(solution.iterations[0]) < int(solution.iterations[-1])
    torch.testing.assert_close(solution.accepted_steps + solution.rejected_steps, solution.iterations,
                               rtol=0, atol=0)
    # Frozen: after its last step, every evaluation of sample b is at its final state.
    # Call 0 is z0, call 1 Hairer's trial, then 6 (tsit5/dopri5) or 3 (bs3) per step.
    per_step = method.tableau.stages - 1
    first_step_call = len(fn.calls) - per_step * solution.steps
    for b in range(c.shape[0]):
        after = first_step_call + per_step * int(solution.iterations[b])
        for z in fn.calls[after:]:
            assert torch.equal(z[b], solution.z[b])
    assert solution.nfe == len(fn.calls)


@pytest.mark.parametrize("method_cls", [Tsit5, Dopri5, BS3])
def test_stability_cap_removes_the_residual_floor_of_stiff_modes(method_cls):
    """With ``J - I`` spread over ``[-1.9, -0.1]``, an adaptive explicit method left alone
    parks the stiffest mode on the edge of its stability region, where its amplitude (set by
    the integrator tolerance) keeps the residual at 2-6 times the test: every sample runs out
    of budget. The stability cap keeps that mode decaying and both samples converge."""
    m, c, _ = linear_problem(factors=[0.8, 0.9])
    fn = lambda z: torch.einsum("bij,bj->bi", m, z) + c
    term = Termination(mode="abs", abstol=1e-6, norm="max")
    capped = method_cls(rtol=5e-7, atol=5e-7, max_steps=600, termination=term).solve_flat(fn, torch.zeros_like(c))
    assert bool(capped.converged.all()) and int(capped.iterations.max()) < 300
    floor = method_cls(rtol=5e-7, atol=5e-7, max_steps=600, termination=term,
                       stability_factor=None).solve_flat(fn, torch.zeros_like(c))
    assert bool((floor.status == Status.MAX_ITERS).all())
    assert bool((floor.residual > 1.5e-6).all())


def test_sample_at_steady_state_at_t0_returns_its_initial_state():
    c = torch.tensor([[1.0, -2.0], [3.0, 0.5]], dtype=torch.float64)
    fn = Recorder(lambda z: torch.tanh(z - c) + c)  # fixed point z = c exactly
    # The whole batch at steady state: no further evaluation, z0 itself comes back.
    solution = Tsit5().solve_flat(fn, c.clone())
    assert solution.nfe == 1 and solution.steps == 0
    assert torch.equal(solution.z, c)
    assert bool((solution.status == Status.CONVERGED).all())
    assert bool((solution.iterations == 0).all()) and bool((solution.t == 0).all())
    # Mixed batch: the sample already there is frozen at t = 0 with 0 steps.
    z0 = torch.stack([c[0], c[1] + 1.0])
    solution = Tsit5().solve_flat(fn, z0)
    assert torch.equal(solution.z[0], c[0])
    assert int(solution.iterations[0]) == 0 and float(solution.t[0]) == 0.0
    assert int(solution.iterations[1]) > 0 and bool((solution.status == Status.CONVERGED).all())


@pytest.mark.parametrize("mode", ["abs", "norm", "default"])
def test_large_constant_component_does_not_stop_the_solve_early(mode):
    """diffrax #448: ``dz/dt = -k z`` with ``k = (0, 1)``, ``z0 = (1e5, 5)``: the constant
    component must neither trigger the steady-state test nor loosen the step control of the
    moving one. Compared with the same moving component alone."""
    if mode == "default":  # Tsit5's own termination for rtol = atol = 2e-4: abs, max, 1e-3
        method = Tsit5(rtol=2e-4, atol=2e-4, max_steps=500)
        assert method.termination.abstol == pytest.approx(1e-3)
    else:
        termination = Termination(mode=mode, abstol=1e-3, reltol=1e-3, norm="max")
        method = Tsit5(rtol=1e-4, atol=1e-4, termination=termination, max_steps=500)
    k_with = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    with_constant = method.solve_flat(lambda z: z - k_with * z, torch.tensor([[1e5, 5.0]], dtype=torch.float64))
    # The moving component alone (fn(z) = 0 gives dz/dt = -z; abs test, as ||fn|| = 0).
    alone_method = Tsit5(rtol=1e-4, atol=1e-4, max_steps=500,
                         termination=Termination(mode="abs", abstol=1e-3, norm="max"))
    alone = alone_method.solve_flat(lambda z: 0.0 * z, torch.tensor([[5.0]], dtype=torch.float64))
    # z(t) = 5 exp(-t) reaches the test |dz/dt| <= 1e-3 at t = log(5000) = 8.52.
    assert bool(with_constant.converged.all()) and bool(alone.converged.all())
    assert float(alone.t) > 8.4
    assert float(with_constant.t) > 8.4
    assert float(with_constant.z[0, 1]) <= 1.1e-3 and float(with_constant.z[0, 0]) == 1e5
    assert abs(int(with_constant.accepted_steps) - int(alone.accepted_steps)) <= 2


def test_blow_up_stops_with_dt_min_and_never_hangs():
    """``dz/dt = z^2`` from ``z0 = 1`` blows up at ``t = 1``: the step size collapses and the
    sample stops with ``DT_MIN`` long before the budget; the other sample (``dz/dt = 1 - z``)
    converges as usual."""
    def fn(z):
        grow = torch.tensor([[1.0], [0.0]], dtype=z.dtype)
        return grow * (z + z * z) + (1 - grow)

    solution = Tsit5(rtol=1e-6, atol=1e-6, max_steps=100_000).solve_flat(
        fn, torch.tensor([[1.0], [0.0]], dtype=torch.float32))
    assert int(solution.status[0]) == Status.DT_MIN
    assert int(solution.status[1]) == Status.CONVERGED
    assert solution.steps < 2_000
    assert 0.99 < float(solution.t[0]) < 1.0 + 1e-3


def test_nan_region_rejects_steps_until_dt_min():
    """fn returns NaN beyond z > 2 for one sample: every step into it is rejected (never
    accepted), the step size underflows, the sample reports DT_MIN with a finite state."""
    def fn(z):
        out = z + 1.0 - 0.1 * z  # relaxes towards z = 10
        bad = (z > 2.0) & (torch.arange(z.shape[0])[:, None] == 0)
        return torch.where(bad, torch.full_like(z, float("nan")), out)

    solution = Tsit5(max_steps=10_000).solve_flat(fn, torch.zeros(2, 1, dtype=torch.float64))
    assert int(solution.status[0]) == Status.DT_MIN
    assert bool(torch.isfinite(solution.z).all()) and float(solution.z[0]) <= 2.0
    assert int(solution.status[1]) == Status.CONVERGED
    assert solution.steps < 2_000


def test_step_budget_reports_max_iters_with_the_budget_as_iterations():
    m, c, _ = linear_problem(factors=[0.99, 0.1])
    fn = lambda z: torch.einsum("bij,bj->bi", m, z) + c
    solution = Tsit5(rtol=1e-8, atol=1e-8, max_steps=5,
                     termination=Termination(mode="abs", abstol=1e-6)).solve_flat(fn, torch.zeros_like(c))
    assert int(solution.status[0]) == Status.MAX_ITERS and int(solution.iterations[0]) == 5
    assert solution.steps == 5


@pytest.mark.parametrize("method", [Euler(dt=0.5, max_steps=500, termination=Termination(abstol=1e-8)),
                                    RK4(dt=1.0, max_steps=200, termination=Termination(abstol=1e-8))],
                         ids=["euler", "rk4"])
def test_fixed_step_methods_reach_the_equilibrium(method):
    m, c, equilibrium = linear_problem(factors=[0.3, 0.7])
    fn = lambda z: torch.einsum("bij,bj->bi", m, z) + c
    solution = method.solve_flat(fn, torch.zeros_like(c))
    assert bool(solution.converged.all())
    torch.testing.assert_close(solution.z, equilibrium, rtol=0, atol=1e-7)
    assert bool((solution.rejected_steps == 0).all())


def test_check_interval_does_not_change_results():
    m, c, _ = linear_problem()
    fn = lambda z: torch.einsum("bij,bj->bi", m, z) + c
    term = dict(mode="abs", abstol=1e-6)
    every = Tsit5(rtol=1e-7, atol=1e-7, termination=Termination(**term)).solve_flat(fn, torch.zeros_like(c))
    sparse = Tsit5(rtol=1e-7, atol=1e-7, termination=Termination(**term, check_every=7)).solve_flat(
        fn, torch.zeros_like(c))
    assert torch.equal(every.z, sparse.z) and torch.equal(every.iterations, sparse.iterations)
    assert torch.equal(every.t, sparse.t) and sparse.steps >= every.steps


def deq_problem(dtype=torch.float64, batch=2, dim=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = (0.4 * torch.randn(dim, dim, generator=gen, dtype=dtype) / dim ** 0.5).requires_grad_(True)
    x = torch.randn(batch, dim, generator=gen, dtype=dtype).requires_grad_(True)
    return w, x


def test_continuous_deq_implicit_gradient_passes_gradcheck():
    w, x = deq_problem()
    # Solution error <= 1e-10 / (1 - q): far below what central differences with eps = 1e-4
    # can see, even when a perturbation changes the number of steps.
    method = Tsit5(rtol=2e-11, atol=2e-11, max_steps=400,
                   termination=Termination(mode="abs", abstol=1e-10, norm="max"))

    def layer(w, x):
        fn = lambda z: torch.tanh(z @ w.T + x)
        solution = pycdeq.solve(fn, torch.zeros_like(x), method, adjoint=GMRES(rtol=1e-12, atol=1e-14))
        assert bool(solution.converged.all())
        return solution.z

    assert torch.autograd.gradcheck(layer, (w, x), eps=1e-4, atol=1e-5, rtol=1e-3, fast_mode=True)


def test_unrolled_gradient_through_the_steps_matches_the_implicit_one():
    w, x = deq_problem()
    method = Tsit5(rtol=1e-10, atol=1e-10, max_steps=400,
                   termination=Termination(mode="abs", abstol=1e-9, norm="max"))
    fn = lambda z: torch.tanh(z @ w.T + x)
    grads = []
    for adjoint in (GMRES(rtol=1e-12, atol=1e-14), Unrolled()):
        solution = pycdeq.solve(fn, torch.zeros_like(x), method, adjoint=adjoint)
        grads.append(torch.autograd.grad(solution.z.square().sum(), (w, x)))
    for implicit, unrolled in zip(*grads):
        torch.testing.assert_close(unrolled, implicit, rtol=1e-5, atol=1e-7)


def test_tuple_state_through_pycdeq_solve():
    a = torch.tensor([[0.5, -0.2], [0.1, 0.3]], dtype=torch.float64)
    z0 = (torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64))

    def fn(z):
        u, v = z
        return (0.5 * torch.tanh(u) + a, 0.25 * torch.sin(v) + u.sum(1, keepdim=True))

    solution = pycdeq.solve(fn, z0, Tsit5(rtol=1e-9, atol=1e-9, termination=Termination(abstol=1e-8)))
    u, v = solution.z
    fu, fv = fn(solution.z)
    assert torch.allclose(u, fu, atol=1e-8) and torch.allclose(v, fv, atol=1e-8)
    assert bool(solution.converged.all())
