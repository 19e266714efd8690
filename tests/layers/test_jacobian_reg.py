"""Jacobian regularization: Hutchinson's estimate of ``mean_b ||J_b||_F^2 / d`` at ``z*``.

Checked against the exact value computed densely (``torch.autograd.functional.jacobian``)
on a tiny model: exactly (to rounding) with the probes a scaled basis, for which the
estimate is the exact value by construction; and statistically with Gaussian probes, within
a few standard errors of the estimator's exact spread (for ``v ~ N(0, I)``,
``Var(||v^T J||^2) = 2 ||J J^T||_F^2``). Its gradient reaches the parameters of ``f`` and
agrees with the gradient of the exact penalty (``z*`` held constant, as in Bai et al.).
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


def _jacobians(f, z, x):
    z = z.detach()
    return [torch.autograd.functional.jacobian(lambda zb: f(zb[None], x[b:b + 1])[0], z[b], create_graph=True)
            for b in range(z.shape[0])]


def exact_penalty(f, z, x):
    """``mean_b ||df/dz (z_b, x_b)||_F^2 / d`` from dense per-sample Jacobians (differentiable
    w.r.t. the parameters of ``f``; ``z`` is a constant)."""
    return sum(jac.pow(2).sum() / z.shape[1] for jac in _jacobians(f, z, x)) / z.shape[0]


def one_vector_spread(f, z, x):
    """The exact standard deviation of a one-vector estimate: per sample ``||v^T J_b||^2 / d``
    has variance ``2 ||J_b J_b^T||_F^2 / d^2``; the batch mean divides the sum by ``B^2``."""
    d, batch = z.shape[1], z.shape[0]
    variance = sum(2 * (jac @ jac.T).pow(2).sum() / d ** 2 for jac in _jacobians(f, z, x)) / batch ** 2
    return float(variance.detach()) ** 0.5


def _one_vector_samples(f, z, x, count):
    reg = JacobianRegularization(num_vectors=1)
    return torch.stack([reg(lambda u: f(u, x), z).detach() for _ in range(count)])


def test_estimate_with_basis_probes_is_the_exact_penalty(build, monkeypatch):
    """With the probes ``sqrt(d) e_1 .. sqrt(d) e_d`` (one per call of ``randn_like``), the
    mean of ``||v^T J||^2`` is ``sum_i ||J_i,:||^2 = ||J||_F^2``: the layer's estimate must then
    be the exact value, to rounding (sums of d^2 products: 10 d^2 eps relative)."""
    layer = _layer(build, num_vectors=DIM)
    x = torch.randn(BATCH, IN_DIM, dtype=torch.float64)
    probes = []

    def basis_probe(like):
        probe = torch.zeros_like(like)
        probe[:, len(probes)] = DIM ** 0.5
        probes.append(probe)
        return probe

    monkeypatch.setattr(torch, "randn_like", basis_probe)
    z, solution = layer(x)
    monkeypatch.undo()
    assert len(probes) == DIM
    exact = exact_penalty(layer.f, z, x)
    torch.testing.assert_close(solution.jacobian_loss, exact, rtol=10 * DIM ** 2 * torch.finfo(exact.dtype).eps, atol=0)


def test_estimate_is_unbiased_within_hutchinsons_error(build):
    layer = _layer(build)
    x = torch.randn(BATCH, IN_DIM, dtype=torch.float64)
    z, _ = layer(x)
    exact = exact_penalty(layer.f, z, x).item()
    spread = one_vector_spread(layer.f, z, x)
    assert spread > 0.05 * exact  # a random estimate, not the exact value in disguise
    samples = _one_vector_samples(layer.f, z, x, 1500)
    # The mean of 1500 independent estimates: within 4 standard errors (spread / sqrt(1500),
    # here ~0.6 % of the value) with probability 1 - 6e-5; a factor 1.1 off is 17 of them.
    standard_error = spread / len(samples) ** 0.5
    assert abs(samples.mean().item() - exact) < 4 * standard_error, (samples.mean().item(), exact, standard_error)
    # The sample spread is the estimator's: a weighted sum of squared Gaussians has kurtosis
    # <= 15 (one chi-square degree), so 1500 samples pin the standard deviation to within
    # sqrt(14 / (4 * 1500)) ~ 5 % (one sigma); 40 % is 8 of them.
    assert abs(samples.std().item() - spread) < 0.4 * spread, (samples.std().item(), spread)


def test_many_vectors_in_one_call_average_out(build):
    layer = _layer(build, num_vectors=1500)
    x = torch.randn(BATCH, IN_DIM, dtype=torch.float64)
    z, solution = layer(x)
    exact = exact_penalty(layer.f, z, x).item()
    standard_error = one_vector_spread(layer.f, z, x) / 1500 ** 0.5
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
