"""Multiscale DEQs over a tuple state: a 2-scale ``MultiScaleFunction`` (2x4x4 and 3x2x2)
with conv branches, a strided-conv down map and a conv + nearest-upsample up map.

The solvers act on the tuple without the user flattening it; the fixed point, ``z0`` per
variant, the skip loss over all scales, gradients (vs unrolled backprop and gradcheck) and
the Jacobian penalty are checked on it.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import pycdeq
from pycdeq.layers import JacobianRegularization
from pycdeq.layers.multiscale import MultiScaleFunction

VARIANTS = ["vanilla", "skip", "skip_reg"]
SOLVERS = ["anderson", "broyden", "fixed_point", "tsit5"]


def _x(build, batch=3):
    scale = torch.logspace(-2, 0.5, batch, dtype=torch.float64)[:, None, None, None]
    return torch.randn(batch, *build.scales[0], dtype=torch.float64) * scale


def _flat(state):
    return torch.cat([part.reshape(part.shape[0], -1) for part in state], dim=1)


def test_function_wiring_is_the_mdeq_fusion(build):
    """``out_j = post_j(b_j + sum_{i != j} M[i][j](b_i))``, ``b_1 = main_1(z_1, x)``, ``b_2 = main_2(z_2)``."""
    main, mapping, post = build.multiscale_parts()
    f = MultiScaleFunction(main, mapping, post).double()
    x = _x(build)
    z = tuple(torch.randn(3, *s, dtype=torch.float64) for s in build.scales)
    b1, b2 = f.main[0](z[0], x), f.main[1](z[1])
    expected = (f.post_fuse[0](b1 + f.mapping[1][0](b2)), f.post_fuse[1](b2 + f.mapping[0][1](b1)))
    out = f(z, x)
    assert isinstance(out, tuple) and len(out) == 2
    for a, b, shape in zip(out, expected, build.scales):
        assert a.shape == (3, *shape)
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # The injection reaches scale 2 only through the down map.
    assert isinstance(f.mapping[0][0], torch.nn.Identity) and isinstance(f.mapping[1][1], torch.nn.Identity)
    assert f.mapping[0][1][0].stride == (2, 2)
    assert isinstance(f.mapping[1][0][-1], torch.nn.Upsample)


def test_function_without_post_fuse_layers_returns_the_fused_sums(build):
    main, mapping, _ = build.multiscale_parts()
    f = MultiScaleFunction(main, mapping, None).double()
    x = _x(build)
    z = tuple(torch.randn(3, *s, dtype=torch.float64) for s in build.scales)
    b1, b2 = f.main[0](z[0], x), f.main[1](z[1])
    out = f(z, x)
    torch.testing.assert_close(out[0], b1 + f.mapping[1][0](b2), atol=0, rtol=0)
    torch.testing.assert_close(out[1], b2 + f.mapping[0][1](b1), atol=0, rtol=0)


@pytest.mark.parametrize("solver_name", SOLVERS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_output_is_a_fixed_point_per_sample(build, variant, solver_name):
    abstol = 1e-8
    layer = build.multiscale_layer(variant, build.solvers(abstol)[solver_name]).double()
    assert layer.variant == variant
    x = _x(build)
    z, solution = layer(x)
    assert isinstance(z, tuple) and [tuple(p.shape) for p in z] == [(3, *s) for s in build.scales]
    assert bool(solution.converged.all()), solution.status_counts()
    residual = build.flat_residual(layer, z, x)
    assert (residual <= abstol * (1 + 1e-9)).all(), residual
    torch.testing.assert_close(solution.residual, residual, atol=1e-14, rtol=1e-9)
    assert residual.shape == (3,)


@pytest.mark.parametrize("variant", VARIANTS)
def test_initial_state_per_variant(build, variant):
    layer = build.multiscale_layer(variant, build.solvers(1e-6)["anderson"]).double()
    x = _x(build)
    _, solution = layer(x)
    zeros = tuple(torch.zeros(3, *s, dtype=torch.float64) for s in build.scales)
    expected = {"vanilla": lambda: zeros, "skip_reg": lambda: layer.f(zeros, x),
                "skip": lambda: tuple(branch(x) for branch in layer.g.branches)}[variant]()
    assert isinstance(solution.z0, tuple) and len(solution.z0) == 2
    for a, b in zip(solution.z0, expected):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    if variant != "vanilla":
        assert all(part.abs().max() > 0 for part in solution.z0)


@pytest.mark.parametrize("variant", ["skip", "skip_reg"])
def test_skip_loss_averages_over_every_element_of_every_scale(build, variant):
    layer = build.multiscale_layer(variant, build.solvers(1e-8)["anderson"]).double()
    z, solution = layer(_x(build))
    expected = (_flat(z) - _flat(solution.z0)).abs().mean()
    torch.testing.assert_close(solution.skip_loss, expected, atol=0, rtol=1e-14)
    # Not the mean of the per-scale means (the scales have 32 and 12 elements).
    per_scale = torch.stack([(a - b).abs().mean() for a, b in zip(z, solution.z0)]).mean()
    assert abs(per_scale - expected) > 1e-6


def _grads(layer, x, head):
    xi = x.clone().requires_grad_(True)
    z, solution = layer(xi)
    loss = (_flat(z) @ head).sin().sum() + 0.7 * solution.skip_loss
    return torch.autograd.grad(loss, [xi, *layer.parameters()])


@pytest.mark.parametrize("variant", VARIANTS)
def test_implicit_gradient_matches_unrolled_backprop(build, variant):
    """All parameters (branches, maps, post-fuse, predictor) and the input, against
    backprop through a long Picard solve, and a continuous (Tsit5) solve's implicit gradient."""
    torch.manual_seed(4)
    reference = build.multiscale_layer(variant, build.tight_anderson(abstol=1e-12),
                                       adjoint=build.tight_gmres()).double()
    unrolled = build.multiscale_layer(variant, pycdeq.FixedPoint(
        max_iter=200, termination=pycdeq.Termination(mode="abs", abstol=1e-13)), adjoint=pycdeq.Unrolled()).double()
    continuous = build.multiscale_layer(variant, build.solvers(1e-8)["tsit5"], adjoint=build.tight_gmres()).double()
    unrolled.load_state_dict(reference.state_dict())
    continuous.load_state_dict(reference.state_dict())
    x = _x(build, batch=2)
    head = torch.randn(44, 2, dtype=torch.float64)
    expected = _grads(reference, x, head)
    assert len(expected) == 1 + len(list(reference.parameters()))
    for a, b in zip(_grads(unrolled, x, head), expected):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    for a, b in zip(_grads(continuous, x, head), expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_input_gradient_matches_gradcheck(build, variant):
    layer = build.multiscale_layer(variant, build.tight_anderson(abstol=1e-11),
                                   adjoint=build.tight_gmres()).double()
    head = torch.randn(44, dtype=torch.float64)

    def loss(x):
        z, solution = layer(x)
        return (_flat(z) @ head).sin().sum() + 0.7 * solution.skip_loss

    x = _x(build, batch=1).requires_grad_(True)
    assert gradcheck(loss, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_jacobian_penalty_on_a_tuple_state_matches_the_dense_value(build):
    layer = build.multiscale_layer("vanilla", build.tight_anderson(abstol=1e-10),
                                   jacobian_reg=JacobianRegularization(num_vectors=1000)).double()
    x = _x(build, batch=2)
    z, solution = layer(x)
    sizes = [torch.Size(s).numel() for s in build.scales]

    def flat_f(flat, b):
        parts = torch.split(flat[None], sizes, dim=1)
        state = tuple(p.reshape(1, *s) for p, s in zip(parts, build.scales))
        return _flat(layer.f(state, x[b:b + 1]))[0]

    z_flat = _flat(z).detach()
    exact = torch.stack([torch.autograd.functional.jacobian(lambda u: flat_f(u, b), z_flat[b]).pow(2).sum() / 44
                         for b in range(2)]).mean()
    reg = JacobianRegularization(num_vectors=1)
    samples = torch.stack([reg(lambda u: _flat(layer.f(tuple(p.reshape(2, *s) for p, s in zip(
        torch.split(u, sizes, dim=1), build.scales)), x)), z_flat).detach() for _ in range(100)])
    standard_error = samples.std() / 1000 ** 0.5
    assert abs(solution.jacobian_loss.detach() - exact) < 4 * standard_error, (solution.jacobian_loss, exact)
    grads = torch.autograd.grad(solution.jacobian_loss, list(layer.f.parameters()))
    assert all(g.abs().max() > 0 for g in grads)
