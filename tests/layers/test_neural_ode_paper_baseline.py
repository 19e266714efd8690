"""The paper's Neural ODE baseline: ``rhs="f"``, ``output="f_of_state"``, the interpolating
adjoint without seminorm, ``input_gradient="final_call"``; and unrolled pretraining.

Gradients of the layer are checked against backprop through the steps of the same solve
(float64, tight tolerance: both approximate the exact gradient to the tolerance).
"""

from __future__ import annotations

import pytest
import torch

from pycdeq import VCAB3, NeuralODE, Tsit5
from torch import nn

from pycdeq.solvers.ode_adjoint import BacksolveAdjoint, InterpolatingAdjoint

F64 = torch.float64


class TanhDense(nn.Module):
    """``f(z, x) = tanh(W z + V x + b)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.w, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim, bias=False)

    def forward(self, z, x):
        return torch.tanh(self.w(z) + self.v(x))


def _layer(adjoint, method, **options):
    torch.manual_seed(0)
    f = TanhDense(4).double()
    return NeuralODE(f, method, rhs="f", output="f_of_state", adjoint=adjoint, **options)


def _gradients(layer, x):
    z, solution = layer(x)
    loss = (z * torch.linspace(-1, 1, z.numel(), dtype=F64).view_as(z)).sum()
    return torch.autograd.grad(loss, [*layer.f.parameters(), x]), solution


@pytest.mark.parametrize("adjoint", [InterpolatingAdjoint(seminorm=False), InterpolatingAdjoint(),
                                     BacksolveAdjoint(seminorm=False)], ids=str)
@pytest.mark.parametrize("method", [Tsit5(rtol=1e-10, atol=1e-10), VCAB3(rtol=1e-9, atol=1e-9, max_steps=3000)],
                         ids=["tsit5", "vcab3"])
def test_continuous_adjoint_gradients_match_backprop_through_the_steps(adjoint, method):
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    expected, _ = _gradients(_layer("backprop", method), x)
    got, solution = _gradients(_layer(adjoint, method), x)
    # Interpolation (Hermite, O(h^4)) and the backward solve each err by about the
    # tolerance^(4/5) relative to the gradient's scale; 100x that is the bound.
    bound = 100 * method.rtol ** 0.8
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=bound * float(b.abs().max()))


def test_final_call_gives_the_input_gradient_of_the_final_f_call_only():
    method = Tsit5(rtol=1e-10, atol=1e-10)
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    got, _ = _gradients(_layer(InterpolatingAdjoint(seminorm=False), method, input_gradient="final_call"), x)
    expected, _ = _gradients(_layer("backprop", method, input_gradient="final_call"), x)
    exact, _ = _gradients(_layer("backprop", method), x)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * float(b.abs().max()))
    # The parameters' gradients are the full ones; x's differs from its full gradient.
    for a, b in zip(got[:-1], exact[:-1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * float(b.abs().max()))
    assert not torch.allclose(got[-1], exact[-1], rtol=1e-3)


def test_adjoint_reports_its_backward_cost_through_the_layer_state():
    layer = _layer(InterpolatingAdjoint(seminorm=False), VCAB3(rtol=0.05, atol=0.05, max_steps=18))
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    z, output = layer(x)
    assert output.trajectory.adjoint == {}  # filled in by the backward pass
    z.sum().backward()
    stats = output.trajectory.adjoint
    assert stats["method"] == "interpolating" and stats["nfe"] > 0 and 0 < stats["steps"] <= 18


def test_fixed_depth_applies_f_unrolled_then_the_output_option():
    layer = _layer(InterpolatingAdjoint(seminorm=False), VCAB3(rtol=0.05, atol=0.05, max_steps=18), fixed_depth=5)
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    z, solution = layer(x)
    expected = torch.zeros_like(x)
    for _ in range(6):  # five unrolled applications, then the output f(z, x)
        expected = layer.f(expected, x)
    torch.testing.assert_close(z, expected, rtol=0, atol=0)
    assert solution.nfe == 6 and solution.trajectory is None and bool(solution.converged.all())
    z.sum().backward()  # plain backprop through the unrolled calls
    assert all(p.grad is not None for p in layer.f.parameters()) and x.grad is not None
    layer.fixed_depth = 0
    _, solved = layer(x)
    assert solved.trajectory is not None  # integrated again


@pytest.mark.parametrize("depth,error", [(-1, ValueError), (1.5, TypeError)])
def test_fixed_depth_is_validated(depth, error):
    with pytest.raises(error, match="fixed_depth"):
        _layer("backprop", Tsit5(), fixed_depth=depth)


def test_unknown_input_gradient_is_refused():
    with pytest.raises(ValueError, match="input_gradient"):
        _layer("backprop", Tsit5(), input_gradient="none")
