"""What distinguishes the variants: the initial guess ``z0``, the skip loss, and who trains ``g``.

* plain DEQ: ``z0 = 0``, no ``g``, ``skip_loss`` is an exact zero;
* Skip Reg. DEQ: ``z0 = f(0, x)`` (no extra parameters);
* Skip DEQ: ``z0 = g(x)``, and ``g`` is trained by the skip loss alone (the solve passes no
  gradient to ``z0``).
"""

from __future__ import annotations

import pytest
import torch

import pycdeq
from pycdeq.layers import DEQ, SkipDEQ, SkipRegDEQ


def _x(batch=4, in_dim=4):
    return torch.randn(batch, in_dim, dtype=torch.float64)


def _picard(abstol=1e-10, max_iter=200):
    return pycdeq.FixedPoint(max_iter=max_iter, termination=pycdeq.Termination(mode="abs", abstol=abstol))


def test_vanilla_starts_from_zero_and_has_no_predictor_nor_skip_loss(build):
    layer = build.dense_layer("vanilla", build.tight_anderson(abstol=1e-10)).double()
    assert layer.variant == "vanilla" and layer.g is None
    z, solution = layer(_x())
    assert torch.equal(solution.z0, torch.zeros(4, 6, dtype=torch.float64))
    assert solution.skip_loss.shape == ()
    assert solution.skip_loss.item() == 0.0
    assert not solution.skip_loss.requires_grad


def test_skip_reg_starts_from_f_of_zero(build):
    layer = build.dense_layer("skip_reg", build.tight_anderson(abstol=1e-10)).double()
    assert layer.variant == "skip_reg" and layer.g is None
    x = _x()
    z, solution = layer(x)
    expected = layer.f(torch.zeros(4, 6, dtype=torch.float64), x)
    torch.testing.assert_close(solution.z0, expected, atol=0, rtol=0)
    assert expected.abs().min() > 0  # not trivially zero
    # z0 is differentiable (through f): the skip loss trains f to land near z*.
    assert solution.z0.requires_grad


def test_skip_starts_from_g_of_x(build):
    layer = build.dense_layer("skip", build.tight_anderson(abstol=1e-10)).double()
    assert layer.variant == "skip" and isinstance(layer.g, build.SkipPredictor)
    x = _x()
    z, solution = layer(x)
    torch.testing.assert_close(solution.z0, layer.g(x), atol=0, rtol=0)


def test_skip_reg_adds_no_parameters_and_skip_adds_those_of_g(build):
    f = build.TanhDense(6, 4)
    g = build.SkipPredictor(4, 6)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(DEQ(f, _picard(), state_shape=(6,))) == count(f)
    assert count(SkipRegDEQ(f, _picard(), state_shape=(6,))) == count(f)
    assert count(SkipDEQ(f, g, _picard(), state_shape=(6,))) == count(f) + count(g)


@pytest.mark.parametrize("variant", ["skip", "skip_reg"])
@pytest.mark.parametrize("output", ["iterate", "f_of_iterate"])
def test_skip_loss_is_the_mean_absolute_distance_from_z0(build, variant, output):
    layer = build.dense_layer(variant, build.tight_anderson(abstol=1e-10), output=output).double()
    x = _x()
    z, solution = layer(x)
    expected = (z - solution.z0).abs().mean()
    torch.testing.assert_close(solution.skip_loss, expected, atol=0, rtol=1e-15)
    assert solution.skip_loss.item() > 1e-3


def test_every_variant_reaches_the_same_fixed_point(build):
    """``z0`` changes the path, never the answer (``f`` is a contraction: one fixed point)."""
    torch.manual_seed(1)
    layers = {v: build.dense_layer(v, build.tight_anderson(abstol=1e-11)).double()
              for v in ("vanilla", "skip", "skip_reg")}
    layers["skip"].f.load_state_dict(layers["vanilla"].f.state_dict())
    layers["skip_reg"].f.load_state_dict(layers["vanilla"].f.state_dict())
    x = _x()
    outputs = {v: layer(x)[0] for v, layer in layers.items()}
    torch.testing.assert_close(outputs["skip"], outputs["vanilla"], atol=1e-10, rtol=0)
    torch.testing.assert_close(outputs["skip_reg"], outputs["vanilla"], atol=1e-10, rtol=0)


def test_skip_reg_picard_solve_is_the_vanilla_solve_one_step_ahead(build):
    """With Picard iteration, starting at ``f(0, x)`` skips exactly the first iterate:
    every sample needs one iteration less and lands on the same point."""
    f = build.TanhDense(6, 4).double()
    vanilla = DEQ(f, _picard(), state_shape=(6,))
    skip_reg = SkipRegDEQ(f, _picard(), state_shape=(6,))
    x = _x(batch=5) * torch.logspace(-3, 1, 5, dtype=torch.float64)[:, None]
    with torch.no_grad():
        z_vanilla, s_vanilla = vanilla(x)
        z_reg, s_reg = skip_reg(x)
    assert bool(s_vanilla.converged.all()) and bool(s_reg.converged.all())
    assert torch.equal(s_reg.iterations, s_vanilla.iterations - 1)
    torch.testing.assert_close(z_reg, z_vanilla, atol=1e-15, rtol=1e-13)


def _grads(module):
    return [p.grad for p in module.parameters()]


def test_g_is_trained_by_the_skip_loss_only(build):
    layer = build.dense_layer("skip", build.tight_anderson(abstol=1e-11), adjoint=build.tight_gmres()).double()
    x = _x()
    head = torch.randn(6, 3, dtype=torch.float64)

    # Task loss alone: g is not even part of the graph.
    z, solution = layer(x)
    (z @ head).square().sum().backward()
    assert all(g is None or bool((g == 0).all()) for g in _grads(layer.g))
    assert all(g is not None and g.abs().max() > 0 for g in _grads(layer.f))

    # Skip loss alone, then task + skip loss: g's gradient is the same both times.
    layer.zero_grad(set_to_none=True)
    z, solution = layer(x)
    solution.skip_loss.backward()
    from_skip = [g.clone() for g in _grads(layer.g)]
    assert all(g.abs().max() > 0 for g in from_skip)

    layer.zero_grad(set_to_none=True)
    z, solution = layer(x)
    ((z @ head).square().sum() + solution.skip_loss).backward()
    for g, expected in zip(_grads(layer.g), from_skip):
        torch.testing.assert_close(g, expected, atol=1e-14, rtol=1e-12)


def test_skip_loss_gradient_reaches_z_star_through_the_implicit_adjoint(build):
    """``d skip_loss / d theta_f`` includes the term through ``z*`` (not only ``z0``): it
    matches unrolled backprop of a long Picard solve."""
    torch.manual_seed(2)
    implicit = build.dense_layer("skip", build.tight_anderson(abstol=1e-12), adjoint=build.tight_gmres()).double()
    unrolled = build.dense_layer("skip", _picard(abstol=1e-14, max_iter=400), adjoint=pycdeq.Unrolled()).double()
    unrolled.load_state_dict(implicit.state_dict())
    x = _x()
    grads = []
    for layer in (implicit, unrolled):
        z, solution = layer(x)
        grads.append(torch.autograd.grad(solution.skip_loss, list(layer.f.parameters())))
    for a, b in zip(*grads):
        assert a.abs().max() > 1e-4
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
