"""The Neural ODE baseline: the DEQ's ``f`` integrated over ``[0, t1]`` from ``z(0) = 0``.

For a linear ``f(z, x) = A z + x`` the answer is known in closed form,
``dz/dt = (A - I) z + x  =>  z(t) = (A - I)^{-1} (exp((A - I) t) - I) x`` (``rhs="f_minus_z"``)
and ``z(t) = A^{-1} (exp(A t) - I) x`` (``rhs="f"``); being built from ``torch.linalg.matrix_exp``
it is differentiable, which gives exact gradients to compare both gradient paths with.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

import pycdeq
from pycdeq.layers import NeuralODE
from pycdeq.layers.multiscale import MultiScaleNeuralODE

DIM = 4


class LinearF(nn.Module):
    def __init__(self, dim=DIM):
        super().__init__()
        self.A = nn.Linear(dim, dim, bias=False)

    def forward(self, z, x):
        return self.A(z) + x


class TanhF(nn.Module):
    def __init__(self, dim=DIM):
        super().__init__()
        self.W = nn.Linear(dim, dim)

    def forward(self, z, x):
        return torch.tanh(self.W(z) + x)


def _linear_layer(**kwargs):
    torch.manual_seed(0)
    return NeuralODE(LinearF(), pycdeq.Tsit5(rtol=1e-10, atol=1e-10, max_steps=500), **kwargs).double()


def _closed_form(A, x, t1, rhs):
    M = A - torch.eye(A.shape[0], dtype=A.dtype) if rhs == "f_minus_z" else A
    propagator = torch.linalg.matrix_exp(M * t1) - torch.eye(A.shape[0], dtype=A.dtype)
    return torch.linalg.solve(M, propagator @ x.T).T


@pytest.mark.parametrize("t1", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("rhs", ["f_minus_z", "f"])
def test_linear_ode_matches_the_closed_form(rhs, t1):
    layer = _linear_layer(rhs=rhs, t1=t1)
    x = torch.randn(3, DIM, dtype=torch.float64)
    z, solution = layer(x)
    expected = _closed_form(layer.f.A.weight, x, t1, rhs)
    torch.testing.assert_close(z, expected, atol=1e-8, rtol=1e-8)
    assert bool(solution.converged.all())  # every sample reached t1
    torch.testing.assert_close(solution.trajectory.t, torch.full((3,), t1, dtype=torch.float64))


def test_f_of_state_output_applies_f_once_more():
    layer = _linear_layer(rhs="f", output="f_of_state")
    state_layer = _linear_layer(rhs="f")
    x = torch.randn(3, DIM, dtype=torch.float64)
    z, solution = layer(x)
    z_state, state_solution = state_layer(x)
    torch.testing.assert_close(z, layer.f(z_state, x), atol=1e-14, rtol=0)
    assert solution.nfe == state_solution.nfe + 1


def test_nonlinear_ode_matches_scipy():
    scipy_integrate = pytest.importorskip("scipy.integrate")
    torch.manual_seed(1)
    f = TanhF().double()
    layer = NeuralODE(f, pycdeq.Tsit5(rtol=1e-9, atol=1e-9, max_steps=500), t1=2.0)
    x = torch.randn(2, DIM, dtype=torch.float64)
    z, _ = layer(x)
    for b in range(2):
        def field(_t, y):
            with torch.no_grad():
                zt = torch.as_tensor(y)[None]
                return (f(zt, x[b:b + 1]) - zt)[0].numpy()

        reference = scipy_integrate.solve_ivp(field, (0.0, 2.0), np.zeros(DIM), method="DOP853", rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(z[b].detach().numpy(), reference.y[:, -1], atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("adjoint", ["backprop", "backsolve"])
@pytest.mark.parametrize("rhs", ["f_minus_z", "f"])
def test_gradients_match_the_closed_form(adjoint, rhs):
    layer = _linear_layer(rhs=rhs, adjoint=adjoint, t1=1.5)
    x = torch.randn(3, DIM, dtype=torch.float64, requires_grad=True)
    head = torch.randn(DIM, 2, dtype=torch.float64)
    z, _ = layer(x)
    grads = torch.autograd.grad((z @ head).sin().sum(), [x, layer.f.A.weight])
    expected_z = _closed_form(layer.f.A.weight, x, 1.5, rhs)
    expected = torch.autograd.grad((expected_z @ head).sin().sum(), [x, layer.f.A.weight])
    for a, b in zip(grads, expected):
        assert b.abs().max() > 1e-2
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


def test_backprop_gradient_of_a_fixed_step_solve_matches_gradcheck():
    """RK4 with fixed steps is a smooth function of its inputs: its backprop gradient is exact."""
    torch.manual_seed(2)
    layer = NeuralODE(TanhF(3), pycdeq.RK4(dt=0.25), t1=1.0).double()
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]

    def loss(x, *ps):
        z, _ = torch.func.functional_call(layer, dict(zip(names, ps)), (x,))
        return (z ** 2).sum()

    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert gradcheck(loss, (x, *params), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_a_neural_ode_returns_its_trajectory_not_a_deq_record():
    layer = _linear_layer()
    assert layer.variant == "node" and layer.g is None
    z, output = layer(torch.randn(3, DIM, dtype=torch.float64))
    assert isinstance(output, pycdeq.NeuralODEOutput) and isinstance(output.trajectory, pycdeq.Trajectory)
    assert not isinstance(output, pycdeq.DEQOutput) and not hasattr(output, "residual")
    assert output.skip_loss.shape == () and output.skip_loss.item() == 0.0
    assert output.jacobian_loss.shape == () and output.jacobian_loss.item() == 0.0
    assert isinstance(output.nfe, int) and output.nfe == output.trajectory.nfe > 6
    assert (output.trajectory.accepted_steps > 0).all()
    assert output.trajectory.z is z and output.status is output.trajectory.status


def test_no_graph_without_autograd():
    layer = _linear_layer(adjoint="backsolve")
    with torch.no_grad():
        z, _ = layer(torch.randn(3, DIM, dtype=torch.float64))
    assert not z.requires_grad


def test_multiscale_neural_ode_integrates_the_tuple_state(build):
    main, mapping, post = build.multiscale_parts()
    tight = MultiScaleNeuralODE(main, mapping, post, pycdeq.Tsit5(rtol=1e-9, atol=1e-9, max_steps=500),
                                build.scales, t1=1.0).double()
    fine = MultiScaleNeuralODE(*build.multiscale_parts(), pycdeq.RK4(dt=0.01, max_steps=200),
                               build.scales, t1=1.0).double()
    fine.load_state_dict(tight.state_dict())
    assert tight.variant == "node"
    x = torch.randn(2, *build.scales[0], dtype=torch.float64)
    z, solution = tight(x)
    z_fine, _ = fine(x)
    assert isinstance(z, tuple) and [tuple(p.shape) for p in z] == [(2, *s) for s in build.scales]
    assert bool(solution.converged.all())
    for a, b in zip(z, z_fine):
        assert a.abs().max() > 1e-3
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-7)


@pytest.mark.parametrize("adjoint", ["backprop", "backsolve"])
def test_multiscale_neural_ode_gradients_agree_between_paths(build, adjoint):
    torch.manual_seed(3)
    main, mapping, post = build.multiscale_parts()
    reference = MultiScaleNeuralODE(main, mapping, post, pycdeq.RK4(dt=0.05, max_steps=100), build.scales).double()
    layer = MultiScaleNeuralODE(*build.multiscale_parts(), pycdeq.Tsit5(rtol=1e-9, atol=1e-9, max_steps=500),
                                build.scales, adjoint=adjoint).double()
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(2, *build.scales[0], dtype=torch.float64)
    results = []
    for module in (reference, layer):
        xi = x.clone().requires_grad_(True)
        z, _ = module(xi)
        loss = sum((part ** 2).sum() for part in z)
        results.append(torch.autograd.grad(loss, [xi, *module.parameters()]))
    for a, b in zip(*results):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(method=pycdeq.Anderson()), TypeError, "method"),
    (dict(t1=0.0), ValueError, "t1"),
    (dict(t1=-1.0), ValueError, "t1"),
    (dict(rhs="z"), ValueError, "rhs"),
    (dict(adjoint="adjoint"), ValueError, "adjoint"),
    (dict(output="f_of_iterate"), ValueError, "output"),
])
def test_invalid_neural_ode_options_are_rejected(kwargs, error, name):
    options = dict(method=pycdeq.Tsit5())
    options.update(kwargs)
    method = options.pop("method")
    with pytest.raises(error, match=name):
        NeuralODE(LinearF(), method, **options)


def test_neural_ode_bad_input():
    layer = NeuralODE(LinearF(), pycdeq.Tsit5())
    x = torch.randn(3, DIM)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer(x)

    class Wrong(nn.Module):
        def forward(self, z, x):
            return z[:, :2]

    with pytest.raises(ValueError) as info:
        NeuralODE(Wrong(), pycdeq.Tsit5())(torch.randn(3, DIM))
    assert "(3, 2)" in str(info.value) and "(3, 4)" in str(info.value)
