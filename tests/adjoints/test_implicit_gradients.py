"""Implicit gradients of fixed points.

For ``z* = f(z*, theta)`` the exact gradient is ``dL/dtheta = g^T df/dtheta`` with
``(I - J)^T g = dL/dz*``. Checked here: finite differences (``gradcheck`` in float64) for
parameters *and* the input ``x`` captured in ``fn``, for the GMRES and fixed-point adjoints;
agreement with backprop through a tightly converged unrolled solve; JFB (``g = dL/dz*``)
against a hand computation, sign included; no gradient to ``z0``; adjoint statistics;
double backward and a Jacobian-regularization-style loss.
"""

from __future__ import annotations

import pytest
import torch

import pycdeq
from pycdeq import GMRES, JFB, Anderson, Broyden, FixedPoint, FixedPointAdjoint, Status, Termination, Unrolled

TIGHT = Termination(abstol=1e-13)
ADJOINTS = {
    "gmres": lambda: GMRES(rtol=1e-12, atol=1e-14, max_iter=100),
    "fixed_point_anderson": lambda: FixedPointAdjoint(Anderson(max_iter=300, termination=TIGHT)),
    "fixed_point_picard": lambda: FixedPointAdjoint(FixedPoint(max_iter=500, termination=TIGHT)),
    "fixed_point_broyden": lambda: FixedPointAdjoint(Broyden(max_iter=300, termination=TIGHT)),
}


def params(batch=3, dim=4, inputs=2, norm=0.6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    w = norm * w / torch.linalg.matrix_norm(w, ord=2)
    u = torch.randn(dim, inputs, generator=gen, dtype=torch.float64)
    c = 0.1 * torch.randn(dim, generator=gen, dtype=torch.float64)
    x = torch.randn(batch, inputs, generator=gen, dtype=torch.float64)
    return [t.requires_grad_() for t in (w, u, c, x)]


def layer(w, u, c, x):
    return lambda z: torch.tanh(z @ w.T + x @ u.T + c)


def solve_z(w, u, c, x, adjoint, solver=None):
    solver = solver or Anderson(max_iter=300, termination=TIGHT)
    z0 = torch.zeros(x.shape[0], w.shape[0], dtype=x.dtype)
    return pycdeq.solve(layer(w, u, c, x), z0, solver, adjoint=adjoint).z


@pytest.mark.parametrize("name", ["gmres", "fixed_point_anderson"])
def test_gradcheck_parameters_and_input(name):
    adjoint = ADJOINTS[name]()
    assert torch.autograd.gradcheck(lambda *p: solve_z(*p, adjoint), params(), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["fixed_point_picard", "fixed_point_broyden"])
def test_gradcheck_other_adjoint_solvers_offset_and_input(name):
    adjoint = ADJOINTS[name]()
    w, u, c, x = params()
    assert torch.autograd.gradcheck(lambda c, x: solve_z(w, u, c, x, adjoint), (c, x), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_with_broyden_forward_solver():
    adjoint = ADJOINTS["gmres"]()
    solver = Broyden(max_iter=300, termination=TIGHT)
    w, u, c, x = params()
    assert torch.autograd.gradcheck(lambda w, x: solve_z(w, u, c, x, adjoint, solver), (w, x),
                                    eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_tuple_state_through_solve():
    """Two scales coupled through ``W`` (split in blocks): gradients reach ``W`` and ``x``."""
    w, u, c, x = params(dim=5)

    def run(w, x):
        def fn(state):
            z1, z2 = state
            flat = torch.tanh(torch.cat([z1, z2.flatten(1)], 1) @ w.T + x @ u.T + c)
            return flat[:, :1], flat[:, 1:].reshape(-1, 2, 2)

        z0 = (torch.zeros(3, 1, dtype=torch.float64), torch.zeros(3, 2, 2, dtype=torch.float64))
        z1, z2 = pycdeq.solve(fn, z0, Anderson(max_iter=300, termination=TIGHT), adjoint=ADJOINTS["gmres"]()).z
        return z1, z2

    assert torch.autograd.gradcheck(run, (w, x), eps=1e-6, atol=1e-6, rtol=1e-5)


def _grads(adjoint, solver=None, weights=None):
    p = params()
    z = solve_z(*p, adjoint, solver)
    weights = torch.linspace(-1, 2, z.numel(), dtype=z.dtype).reshape(z.shape) if weights is None else weights
    loss = (z * weights).sum() + (z ** 2).sum()
    return torch.autograd.grad(loss, p)


@pytest.mark.parametrize("solver", [FixedPoint(max_iter=500, termination=TIGHT),
                                    Anderson(max_iter=300, termination=TIGHT)], ids=["picard", "anderson"])
def test_implicit_gradient_matches_unrolled_backprop_of_a_converged_solve(solver):
    implicit = _grads(ADJOINTS["gmres"]())
    unrolled = _grads(Unrolled(), solver)
    for name, a, b in zip("wucx", implicit, unrolled):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=f"gradient w.r.t. {name}")


def test_all_adjoints_agree_with_each_other():
    reference = _grads(ADJOINTS["gmres"]())
    for name in ("fixed_point_anderson", "fixed_point_picard", "fixed_point_broyden"):
        for a, b in zip(reference, _grads(ADJOINTS[name]())):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=name)


def test_jfb_equals_v_transpose_df_dtheta_at_the_fixed_point():
    p = params()
    z = solve_z(*p, JFB())
    weights = torch.linspace(-1, 2, z.numel(), dtype=z.dtype).reshape(z.shape)
    got = torch.autograd.grad((z * weights).sum(), p)
    # By hand: v = dL/dz* = weights, then one VJP of f at the detached fixed point.
    z_star = z.detach()
    expected = torch.autograd.grad(layer(*p)(z_star), p, weights)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_jfb_sign_on_a_scalar_map_by_hand():
    """f(z) = a z + b, a = 0.5, b = 1: z* = 2. L = 3 z*, so v = 3.
    JFB: dL/db = v * df/db = 3, dL/da = v * z* = 6 (exact IFT: 6 and 12, same sign)."""
    a = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    fn = lambda z: a * z + b
    z0 = torch.zeros(1, 1, dtype=torch.float64)
    z = pycdeq.solve(fn, z0, Anderson(termination=TIGHT), adjoint=JFB()).z
    assert z.item() == pytest.approx(2.0, abs=1e-12)
    grad_a, grad_b = torch.autograd.grad(3 * z.sum(), (a, b))
    assert grad_b.item() == pytest.approx(3.0, abs=1e-12)
    assert grad_a.item() == pytest.approx(6.0, abs=1e-11)
    exact_a, exact_b = torch.autograd.grad(3 * pycdeq.solve(fn, z0, Anderson(termination=TIGHT)).z.sum(), (a, b))
    assert exact_b.item() == pytest.approx(6.0, abs=1e-9) and exact_a.item() == pytest.approx(12.0, abs=1e-9)


@pytest.mark.parametrize("adjoint", [GMRES(), FixedPointAdjoint(), JFB(), Unrolled()],
                         ids=["gmres", "fixed_point", "jfb", "unrolled"])
def test_initial_guess_gets_no_gradient_through_the_solve(adjoint):
    w, u, c, x = params()
    z0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    sol = pycdeq.solve(layer(w, u, c, x), z0, Anderson(termination=TIGHT), adjoint=adjoint)
    assert sol.z0 is z0
    sol.z.pow(2).sum().backward()
    assert z0.grad is None
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


@pytest.mark.parametrize("name,method", [("gmres", "gmres"), ("fixed_point_anderson", "fixed_point")])
def test_adjoint_statistics_are_recorded_after_backward(name, method):
    p = params()
    z0 = torch.zeros(3, 4, dtype=torch.float64)
    sol = pycdeq.solve(layer(*p), z0, Anderson(termination=TIGHT), adjoint=ADJOINTS[name]())
    assert sol.adjoint is not None and sol.adjoint.method == method
    assert sol.adjoint.iterations is None  # nothing solved yet
    # The loss ignores sample 1: its adjoint right-hand side is 0, solved without iterations.
    (sol.z[[0, 2]] ** 2).sum().backward()
    stats = sol.adjoint
    assert stats.iterations.shape == (3,) and stats.residual.shape == (3,) and stats.converged.shape == (3,)
    assert stats.converged.all()
    assert stats.iterations[1] == 0 and (stats.iterations[[0, 2]] > 0).all()
    assert (stats.residual <= 1e-12).all()
    assert stats.vjps > 0


def test_jfb_statistics_report_zero_vjps():
    p = params()
    sol = pycdeq.solve(layer(*p), torch.zeros(3, 4, dtype=torch.float64), Anderson(), adjoint=JFB())
    sol.z.sum().backward()
    assert sol.adjoint.method == "jfb" and sol.adjoint.vjps == 0
    assert sol.adjoint.iterations.tolist() == [0, 0, 0]


def test_adjoint_budget_exhaustion_is_reported_not_hidden():
    p = params(norm=0.99)
    sol = pycdeq.solve(layer(*p), torch.zeros(3, 4, dtype=torch.float64), Anderson(termination=TIGHT),
                       adjoint=FixedPointAdjoint(FixedPoint(max_iter=2, termination=TIGHT)))
    sol.z.sum().backward()
    assert not sol.adjoint.converged.any()
    assert (sol.adjoint.iterations == 2).all()


def test_no_grad_builds_no_graph_and_makes_no_extra_call():
    p = params()
    calls = []
    fn = layer(*p)

    def counted(z):
        calls.append(1)
        return fn(z)

    z0 = torch.zeros(3, 4, dtype=torch.float64)
    with torch.no_grad():
        sol = pycdeq.solve(counted, z0, Anderson(termination=TIGHT))
    assert not sol.z.requires_grad and sol.adjoint is None
    assert len(calls) == sol.nfe
    calls.clear()
    sol = pycdeq.solve(counted, z0, Anderson(termination=TIGHT))
    assert sol.z.requires_grad
    assert len(calls) == sol.nfe  # one extra call, at z*, for df/dtheta, counted in nfe


def test_returned_values_equal_the_forward_solution():
    p = params()
    z0 = torch.zeros(3, 4, dtype=torch.float64)
    with torch.no_grad():
        plain = pycdeq.solve(layer(*p), z0, Anderson(termination=TIGHT))
    with_grad = pycdeq.solve(layer(*p), z0, Anderson(termination=TIGHT))
    assert torch.equal(plain.z, with_grad.z.detach())
    assert torch.equal(plain.status, with_grad.status)


# --- second derivatives ---------------------------------------------------------------------
#
# With ``create_graph=True`` the adjoint solve is itself recorded, so the first gradient is
# differentiable. What is exact and what is not: the VJPs inside the adjoint solve and
# ``df/dtheta`` are evaluated at ``z*`` as a *constant* (a detached leaf), as in Bai et al.'s
# Jacobian regularization. So d/dtheta of the first gradient includes the dependence of
# ``J = df/dz`` and ``df/dtheta`` on ``theta`` at fixed ``z*`` and the dependence of
# ``v = dL/dz*`` on ``theta`` (through the implicit gradient again), but not the motion of
# ``z*`` inside ``J`` and ``df/dtheta``. When ``J`` and ``df/dtheta`` do not depend on ``z``
# (an affine map, differentiated w.r.t. its offset ``b``) nothing is dropped and the second
# derivative is exact: tested below against the closed form.


def test_double_backward_is_exact_for_an_affine_map_in_its_offset():
    gen = torch.Generator().manual_seed(5)
    dim = 4
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    a = 0.5 * a / torch.linalg.matrix_norm(a, ord=2)
    b = torch.randn(2, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    z = pycdeq.solve(lambda z: z @ a.T + b, torch.zeros(2, dim, dtype=torch.float64),
                     Anderson(termination=TIGHT), adjoint=GMRES(rtol=1e-13, atol=1e-15)).z
    (grad_b,) = torch.autograd.grad((z ** 2).sum(), b, create_graph=True)
    # Closed form: M = (I - A)^-1, z* = b M^T (row-wise), dL/db = 2 z* M, so with the
    # symmetric K = M^T M (acting on rows), dL/db = 2 b K and d||dL/db||^2/db = 8 b K K.
    m = torch.linalg.inv(torch.eye(dim, dtype=torch.float64) - a)
    k = m.T @ m
    torch.testing.assert_close(grad_b, 2 * b.detach() @ k, rtol=1e-10, atol=1e-12)
    (second,) = torch.autograd.grad(grad_b.pow(2).sum(), b)
    torch.testing.assert_close(second, 8 * b.detach() @ k @ k, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["gmres", "fixed_point_anderson"])
def test_double_backward_runs_and_gives_finite_parameter_gradients(name):
    p = params()
    z = solve_z(*p, ADJOINTS[name]())
    first = torch.autograd.grad((z ** 2).sum(), p, create_graph=True)
    # The same first gradient as without create_graph.
    plain = torch.autograd.grad((solve_z(*p, ADJOINTS[name]()) ** 2).sum(), p)
    for a, b in zip(first, plain):
        torch.testing.assert_close(a.detach(), b, rtol=1e-10, atol=1e-12)
    penalty = sum(g.pow(2).sum() for g in first)
    penalty.backward()
    for t in p:
        assert t.grad is not None and torch.isfinite(t.grad).all()
    assert p[0].grad.abs().sum() > 0


def _jacobian_loss(w, u, c, x, probe):
    z = solve_z(w, u, c, x, ADJOINTS["gmres"]())
    fz = layer(w, u, c, x)(z)
    (vjp,) = torch.autograd.grad(fz, z, probe, create_graph=True)
    return vjp.pow(2).sum()


def test_jacobian_regularization_vjp_gradient_matches_finite_differences():
    """``||probe^T J(z*(theta), theta)||^2`` differentiated through the VJP (create_graph)
    and through ``z*`` by the implicit gradient: the full derivative, so gradcheck holds."""
    w, u, c, x = params()
    probe = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    assert torch.autograd.gradcheck(lambda w, x: _jacobian_loss(w, u, c, x, probe), (w, x),
                                    eps=1e-6, atol=1e-6, rtol=1e-5)


def test_jacobian_regularization_trains_the_parameters():
    w, u, c, x = params(norm=0.9)
    probe = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    losses = []
    for _ in range(10):
        loss = _jacobian_loss(w, u, c, x, probe)
        w.grad = None
        loss.backward()
        assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
        with torch.no_grad():
            w -= 0.05 * w.grad
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert all(b <= a for a, b in zip(losses, losses[1:]))


def test_unrolled_gradient_flows_through_every_iteration():
    """With a short unrolled budget the gradient is the truncated one, not the implicit one:
    Unrolled really backpropagates the iterations it ran."""
    p = params(norm=0.9)
    z0 = torch.zeros(3, 4, dtype=torch.float64)
    term = Termination(abstol=1e-13)
    short = pycdeq.solve(layer(*p), z0, FixedPoint(max_iter=3, termination=term), adjoint=Unrolled())
    assert (short.status == Status.MAX_ITERS).all()
    (g_short,) = torch.autograd.grad(short.z.sum(), p[2])
    # By hand: three Picard steps from 0, differentiated by autograd.
    w, u, c, x = p
    z = z0
    for _ in range(3):
        z = torch.tanh(z @ w.T + x @ u.T + c)
    (g_hand,) = torch.autograd.grad(z.sum(), c)
    torch.testing.assert_close(g_short, g_hand, rtol=1e-12, atol=1e-14)
