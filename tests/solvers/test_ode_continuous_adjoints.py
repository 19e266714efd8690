"""The continuous adjoints' options: the interpolating adjoint and the seminorm choice.

Gradients are checked in float64 against backprop through the steps (against central
differences: tests/solvers/test_ode_gradients.py); the dense output against a trajectory it
must reproduce exactly.
"""

from __future__ import annotations

import pytest
import torch

from pycdeq import Status, Tsit5, integrate
from pycdeq.solvers.dense_output import DenseOutput
from pycdeq.solvers.ode_adjoint import BacksolveAdjoint, InterpolatingAdjoint, resolve_adjoint

F64 = torch.float64


def test_hermite_dense_output_reproduces_a_cubic_on_each_samples_own_grid():
    # z_b(t) = c_b t^3, recorded on different grids per sample, with repeated points where a
    # sample rejected a step or had stopped (a repeat is a zero-length interval).
    c = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    grids = torch.tensor([[0.0, 0.3, 0.3, 0.7, 1.0, 1.0],
                          [0.0, 0.1, 0.5, 0.5, 0.5, 0.9],
                          [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]], dtype=F64)
    dense = DenseOutput()
    for j in range(grids.shape[1]):
        t = grids[:, j]
        dense.record(t, (c * t ** 3)[:, None], (3 * c * t ** 2)[:, None])
    for tau in (0.0, 0.05, 0.3, 0.42, 0.5, 0.77, 0.9, 1.0):
        expected = c * tau ** 3
        expected[1] = c[1] * min(tau, 0.9) ** 3  # sample 1 stopped at t = 0.9: held there
        torch.testing.assert_close(dense(torch.tensor(tau, dtype=F64))[:, 0], expected, rtol=1e-13, atol=1e-15)


# Gradients of every continuous adjoint against finite differences:
# tests/solvers/test_ode_gradients.py::test_adaptive_gradients_agree_with_finite_differences.


def test_interpolating_adjoint_matches_backprop_with_t_eval_and_an_upstream_input():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(5, 4).double()
    f = torch.nn.Linear(4, 4).double()
    data = torch.randn(3, 5, dtype=F64)
    grads, trajectories = [], []
    tolerance = 1e-10
    for adjoint in ("backprop", "interpolating"):
        x = encoder(data)
        traj = integrate(lambda t, z: torch.tanh(f(z) + x) * (1 + t[:, None]) - z, torch.zeros(3, 4, dtype=F64), 1.5,
                         Tsit5(rtol=tolerance, atol=tolerance), t_eval=[0.5, 1.0, 1.5], adjoint=adjoint,
                         params=[*f.parameters(), x])
        loss = traj.ys[0].sin().sum() + 2 * traj.ys[1].square().sum() + traj.z.sum()
        grads.append(torch.autograd.grad(loss, [*encoder.parameters(), *f.parameters()]))
        trajectories.append(traj)
    # Tsit5's steps are h ~ tolerance^(1/5); the cubic Hermite dense output errs by O(h^4),
    # so the backward pass reads z(t) to ~ tolerance^(4/5), not to the tolerance itself.
    interpolation = tolerance ** 0.8
    for backprop, interpolating in zip(*grads):
        torch.testing.assert_close(interpolating, backprop, rtol=0,
                                   atol=10 * interpolation * float(backprop.abs().max()))
    stats = trajectories[1].adjoint
    assert stats["method"] == "interpolating" and stats["status"] == Status.CONVERGED and stats["nfe"] > 0


def test_without_seminorm_the_parameter_gradient_limits_the_backward_steps():
    """The option is wired: counting ``g`` in the error norm takes more backward steps on a
    problem with many parameters (and the gradients agree to the tolerance either way)."""
    torch.manual_seed(0)
    f = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8)).double()
    x = torch.randn(16, 8, dtype=F64)
    for kind in (InterpolatingAdjoint, BacksolveAdjoint):
        steps, grads = {}, {}
        for seminorm in (True, False):
            traj = integrate(lambda t, z: f(z + x), torch.zeros(16, 8, dtype=F64), 1.0, Tsit5(rtol=1e-3, atol=1e-3),
                             adjoint=kind(seminorm=seminorm), params=list(f.parameters()))
            grads[seminorm] = torch.autograd.grad(10 * traj.z.square().sum(), list(f.parameters()))
            steps[seminorm] = traj.adjoint["steps"]
        assert steps[False] > steps[True], kind
        for a, b in zip(grads[True], grads[False]):
            torch.testing.assert_close(a, b, rtol=0.05, atol=0.05 * float(b.abs().max()))


def test_adjoint_names_and_options_resolve():
    assert resolve_adjoint("backprop") == "backprop"
    assert resolve_adjoint("backsolve") == BacksolveAdjoint(seminorm=True)
    assert resolve_adjoint("interpolating") == InterpolatingAdjoint(seminorm=True)
    option = InterpolatingAdjoint(seminorm=False)
    assert resolve_adjoint(option) is option


@pytest.mark.parametrize("value,error", [("adjoint", ValueError), ("Backsolve", ValueError), (None, TypeError),
                                         (1, TypeError)])
def test_unknown_adjoints_are_refused_naming_the_option(value, error):
    with pytest.raises(error, match="adjoint"):
        integrate(lambda t, z: -z, torch.ones(1, 1), 1.0, Tsit5(), adjoint=value, params=())


def test_seminorm_must_be_a_bool():
    with pytest.raises(TypeError, match="seminorm"):
        InterpolatingAdjoint(seminorm="no")
    with pytest.raises(TypeError, match="seminorm"):
        BacksolveAdjoint(seminorm=0)


def test_continuous_adjoints_need_params():
    with pytest.raises(ValueError, match="params"):
        integrate(lambda t, z: -z, torch.ones(1, 1), 1.0, Tsit5(), adjoint=InterpolatingAdjoint())
