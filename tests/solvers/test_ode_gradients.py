"""Gradients of ``integrate``: backprop through the steps and the continuous adjoints.

Both are checked in float64 against finite differences (``gradcheck`` where the computed
solution is a smooth function of the inputs: fixed steps; central differences with a
tolerance far below the step-size noise for adaptive steps) and against each other.
"""

from __future__ import annotations

import pytest
import torch

from pycdeq import RK4, VCAB3, Dopri5, Status, Tsit5, integrate
from pycdeq.solvers.ode_adjoint import BacksolveAdjoint, InterpolatingAdjoint

F64 = torch.float64


def make_problem(batch=2, dim=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(dim, dim, generator=gen, dtype=F64) / dim ** 0.5).requires_grad_(True)
    x = torch.randn(batch, dim, generator=gen, dtype=F64).requires_grad_(True)
    z0 = (0.5 * torch.randn(batch, dim, generator=gen, dtype=F64)).requires_grad_(True)
    return w, x, z0


def rhs_for(w, x):
    # Non-autonomous, so the adjoint's time bookkeeping matters.
    return lambda t, z: torch.tanh(z @ w.T + x) * (1 + 0.3 * torch.sin(t))[:, None] - z


def test_backprop_through_fixed_steps_passes_gradcheck():
    w, x, z0 = make_problem()

    def run(w, x, z0):
        return integrate(rhs_for(w, x), z0, 1.5, RK4(dt=0.1), t_eval=[0.5, 1.5]).ys

    assert torch.autograd.gradcheck(run, (w, x, z0), eps=1e-6, atol=1e-7, rtol=1e-6)


def directional_differences(loss_of, inputs, directions, eps=1e-5):
    """Central differences of ``loss_of`` along each direction (a tuple shaped like inputs)."""
    out = []
    for direction in directions:
        values = [float(loss_of(*[v.detach() + sign * eps * d for v, d in zip(inputs, direction)]))
                  for sign in (1, -1)]
        out.append((values[0] - values[1]) / (2 * eps))
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize("adjoint", ["backprop", "backsolve", BacksolveAdjoint(seminorm=False),
                                     InterpolatingAdjoint(seminorm=False), InterpolatingAdjoint(seminorm=True)],
                         ids=str)
@pytest.mark.parametrize("method_cls", [Tsit5, Dopri5, VCAB3])
def test_adaptive_gradients_agree_with_finite_differences(adjoint, method_cls):
    """Directional derivatives along random directions (as gradcheck's fast mode); the
    solution's step-size noise (~1e-11) is far below what eps = 1e-5 can see. Every gradient:
    backprop through the steps, and the continuous adjoints with and without seminorm
    (the paper's baseline is the interpolating one without, on VCAB3)."""
    w, x, z0 = make_problem()
    method = method_cls(rtol=1e-11, atol=1e-11, max_steps=3000)
    target = torch.linspace(-1, 1, 6, dtype=F64).reshape(2, 3)

    def loss_of(w, x, z0):
        traj = integrate(rhs_for(w, x), z0, 2.0, method, adjoint=adjoint, params=[w, x])
        return ((traj.z - target) ** 2).sum()

    analytic = torch.autograd.grad(loss_of(w, x, z0), (w, x, z0))
    gen = torch.Generator().manual_seed(1)
    directions = [tuple(torch.randn(v.shape, generator=gen, dtype=F64) for v in (w, x, z0)) for _ in range(3)]
    with torch.no_grad():
        numeric = directional_differences(loss_of, (w, x, z0), directions)
    predicted = torch.tensor([sum(float((g * d).sum()) for g, d in zip(analytic, direction))
                              for direction in directions], dtype=F64)
    torch.testing.assert_close(predicted, numeric, rtol=1e-6, atol=1e-8)


def test_backsolve_matches_backprop_with_t_eval_and_reports_its_cost():
    w, x, z0 = make_problem(batch=3, dim=4)
    method = Tsit5(rtol=1e-10, atol=1e-10, max_steps=2000)
    weights = torch.linspace(0.5, 1.5, 3, dtype=F64)[:, None, None]
    grads, trajectories = [], []
    for adjoint in ("backprop", "backsolve"):
        traj = integrate(rhs_for(w, x), z0, 2.0, method, t_eval=[0.0, 0.7, 1.2, 2.0],
                         adjoint=adjoint, params=[w, x])
        loss = (weights * traj.ys[1:].sin()).sum() + traj.ys[0].square().sum()
        grads.append(torch.autograd.grad(loss, (w, x, z0)))
        trajectories.append(traj)
    for backprop, backsolve in zip(*grads):
        torch.testing.assert_close(backsolve, backprop, rtol=1e-7, atol=1e-9)
    stats = trajectories[1].adjoint
    assert stats["status"] == Status.CONVERGED and stats["nfe"] > 0 and stats["steps"] > 0


def test_backsolve_feeds_gradients_to_an_upstream_input():
    """The NeuralODE layer's call: params = [*f.parameters(), x] with x computed upstream."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(5, 4).double()
    f = torch.nn.Linear(4, 4).double()
    data = torch.randn(3, 5, dtype=F64)
    grads = []
    for adjoint in ("backprop", "backsolve"):
        x = encoder(data)
        traj = integrate(lambda t, z: torch.tanh(f(z) + x) - z, torch.zeros(3, 4, dtype=F64), 1.0,
                         Tsit5(rtol=1e-10, atol=1e-10), adjoint=adjoint, params=[*f.parameters(), x])
        params = [*encoder.parameters(), *f.parameters()]
        grads.append(torch.autograd.grad(traj.z.square().sum(), params))
    for backprop, backsolve in zip(*grads):
        torch.testing.assert_close(backsolve, backprop, rtol=1e-7, atol=1e-10)


def test_backsolve_with_tuple_state_and_unused_param():
    w, x, _ = make_problem()
    unused = torch.ones(2, dtype=F64, requires_grad=True)
    frozen = torch.ones(3, dtype=F64)  # no requires_grad: gets no gradient, no error
    z0 = (torch.zeros(2, 3, dtype=F64, requires_grad=True), torch.ones(2, 1, dtype=F64, requires_grad=True))

    def rhs(t, z):
        u, s = z
        return torch.tanh(u @ w.T + x * s) * frozen - u, -0.5 * s

    grads = []
    for adjoint in ("backprop", "backsolve"):
        traj = integrate(rhs, z0, 1.0, Tsit5(rtol=1e-10, atol=1e-10), adjoint=adjoint,
                         params=[w, x, unused, frozen])
        u, s = traj.z
        grads.append(torch.autograd.grad(u.sum() + 2 * s.sum(), (w, x, *z0, unused), allow_unused=True))
    for backprop, backsolve in zip(grads[0][:4], grads[1][:4]):
        torch.testing.assert_close(backsolve, backprop, rtol=1e-7, atol=1e-10)
    assert grads[0][4] is None and torch.equal(grads[1][4], torch.zeros(2, dtype=F64))


def test_backprop_graph_only_through_accepted_steps_and_finished_samples_get_no_gradient_noise():
    """A sample's gradient equals its gradient solved alone (other samples' extra steps do
    not leak into it)."""
    w, x, z0 = make_problem(batch=2)
    scale = torch.tensor([[0.2], [3.0]], dtype=F64)  # very different step counts
    method = Tsit5(rtol=1e-8, atol=1e-8)
    traj = integrate(lambda t, z: scale * (torch.tanh(z @ w.T + x) - z), z0, 1.0, method)
    assert int(traj.accepted_steps[0]) != int(traj.accepted_steps[1])
    grad_batch = torch.autograd.grad(traj.z[0].sum(), (w, z0))
    alone = integrate(lambda t, z: scale[:1] * (torch.tanh(z @ w.T + x[:1]) - z), z0[:1], 1.0, method)
    assert int(alone.accepted_steps[0]) == int(traj.accepted_steps[0])
    grad_alone = torch.autograd.grad(alone.z[0].sum(), (w, z0))
    # Not bitwise: z @ w.T on two rows or one may run other kernels, an ulp or so per
    # evaluation (sums of DIM terms); through nfe evaluations of a flow that amplifies
    # perturbations over [0, 1] by at most exp(0.2 (1 + ||W||)) < 2, that stays below
    # 2 nfe DIM eps relative; 10x nfe DIM eps. (A leaked step would move the gradient by
    # ~the tolerance 1e-8.)
    rtol = 10 * alone.nfe * w.shape[1] * torch.finfo(F64).eps
    torch.testing.assert_close(grad_batch[0], grad_alone[0], rtol=rtol, atol=rtol * grad_alone[0].abs().max())
    assert torch.equal(grad_batch[1][1], torch.zeros(3, dtype=F64))
