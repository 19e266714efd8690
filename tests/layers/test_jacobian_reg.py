"""Jacobian regularization: Hutchinson's estimate of ``mean_b ||J_b||_F^2 / d`` at ``z*``.

Checked against the exact value computed densely (``torch.autograd.functional.jacobian``)
on a tiny model, within a few standard errors measured from independent one-vector
estimates; its gradient reaches the parameters of ``f`` and agrees with the gradient of the
exact penalty (``z*`` held constant, as in Bai et al.).
"""

from __future__ import annotations

import pytest
import torch

from pycdeq.layers import DEQ, JacobianRegularization

DIM, IN_DIM, BATCH = 5, 3, 4


def _layer(build, num_vectors=1, **kwargs):
    f = build.TanhDense(DIM, IN_DIM, contraction=0.8).double()
    return DEQ(f, build.tight_anderson(abstol=1e-10), state_shape=(DIM,),
               jacobian_reg=JacobianRegularization(num_vectors=num_vectors), **kwargs)


def exact_penalty(f, z, x):
    """``mean_b ||df/dz (z_b, x_b)||_F^2 / d`` from dense per-sample Jacobians (differentiable
    w.r.t. the parameters of ``f``; ``z`` is a constant)."""
    total = 0
    z = z.detach()
    for b in range(z.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda zb: f(zb[None], x[b:b + 1])[0], z[b], create_graph=True)
        total = total + jac.pow(2).sum() / z.shape[1]
    return total / z.shape[0]


def _one_vector_samples(f, z, x, count):
    reg = JacobianRegularization(num_vectors=1)
    return torch.stack([reg(lambda u: f(u, x), z).detach() for _ in range(count)])


def test_estimate_is_unbiased_within_hutchinsons_error(build):
    layer = _layer(build)
    x = torch.randn(BATCH, IN_DIM, dtype=torch.float64)
    z, solution = layer(x)
    exact = exact_penalty(layer.f, z, x).item()
    samples = _one_vector_samples(layer.f, z, x, 1500)
    standard_error = samples.std().item() / len(samples) ** 0.5
    assert samples.std() > 0.05 * exact  # a random estimate, not the exact value in disguise
    assert abs(samples.mean().item() - exact) < 4 * standard_error, (samples.mean().item(), exact, standard_error)
    # One call of the layer's estimate is a sample of the same distribution.
    assert abs(solution.jacobian_loss.item() - exact) < 4 * samples.std().item()


def test_many_vectors_in_one_call_average_out(build):
    layer = _layer(build, num_vectors=1500)
    x = torch.randn(BATCH, IN_DIM, dtype=torch.float64)
    z, solution = layer(x)
    exact = exact_penalty(layer.f, z, x).item()
    spread = _one_vector_samples(layer.f, z, x, 200).std().item()
    standard_error = spread / 1500 ** 0.5
    assert abs(solution.jacobian_loss.item() - exact) < 4 * standard_error, (solution.jacobian_loss.item(), exact)
    assert standard_error < 0.03 * exact  # the bound above is a real constraint


def test_gradient_flows_to_f_and_matches_the_exact_penalty(build):
    layer = _layer(build, num_vectors=1500)
    x = torch.randn(BATCH, IN_DIM, dtype=torch.float64)
    z, solution = layer(x)
    params = list(layer.f.parameters())
    estimated = torch.autograd.grad(solution.jacobian_loss, params)
    exact = torch.autograd.grad(exact_penalty(layer.f, z, x), params)
    for name, a, b in zip([n for n, _ in layer.f.named_parameters()], estimated, exact):
        assert a.abs().max() > 0, name
        relative = ((a - b).norm() / b.norm()).item()
        assert relative < 0.15, (name, relative)


def test_gradient_steps_on_the_penalty_make_f_more_contractive(build):
    layer = _layer(build, num_vectors=8)
    x = torch.randn(BATCH, IN_DIM, dtype=torch.float64)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    z, _ = layer(x)
    before = exact_penalty(layer.f, z, x).item()
    for _ in range(5):
        optimizer.zero_grad()
        z, solution = layer(x)
        solution.jacobian_loss.backward()
        optimizer.step()
    z, _ = layer(x)
    after = exact_penalty(layer.f, z, x).item()
    assert after < 0.8 * before, (before, after)


def test_penalty_is_zero_when_off_or_without_autograd(build):
    layer = _layer(build)
    x = torch.randn(BATCH, IN_DIM, dtype=torch.float64)
    with torch.no_grad():
        _, solution = layer(x)
    assert solution.jacobian_loss.item() == 0.0
    layer.jacobian_reg = None
    _, solution = layer(x)
    assert solution.jacobian_loss.shape == () and solution.jacobian_loss.item() == 0.0


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)])
def test_num_vectors_is_validated(bad, error):
    with pytest.raises(error, match="num_vectors"):
        JacobianRegularization(num_vectors=bad)
