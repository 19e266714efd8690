"""The single-scale DEQ layer: its output is a fixed point, its gradients are exact.

Every variant (vanilla, Skip, Skip Reg.) with every discrete solver and with Tsit5 (a
continuous DEQ), on a small dense ``f``
whose state (6) differs in size from its input (4). Gradients of a loss that includes the
skip loss are checked against ``torch.autograd.gradcheck`` in float64 (tight solve, tight
GMRES), with respect to every parameter (of ``f`` and of ``g``) and the input ``x``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.autograd import gradcheck

import pycdeq

VARIANTS = ["vanilla", "skip", "skip_reg"]
SOLVERS = ["anderson", "broyden", "fixed_point", "tsit5"]


def _inputs(batch=5, in_dim=4, dtype=torch.float64):
    # Samples of very different size, so that they converge at different iterations.
    scale = torch.logspace(-2, 1, batch, dtype=dtype)[:, None]
    return torch.randn(batch, in_dim, dtype=dtype) * scale


def _picard_reference(layer, x, iterations=400):
    """The fixed point by plain iteration from zero, independent of the layer's solve."""
    with torch.no_grad():
        z = torch.zeros(x.shape[0], *layer.state_shape, dtype=x.dtype)
        for _ in range(iterations):
            z = layer.f(z, x)
    return z


@pytest.mark.parametrize("solver_name", SOLVERS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_output_is_a_fixed_point_per_sample(build, variant, solver_name):
    abstol = 1e-9
    layer = build.dense_layer(variant, build.solvers(abstol)[solver_name]).double()
    x = _inputs()
    z, solution = layer(x)
    assert layer.variant == variant
    assert z.shape == (5, 6)
    assert bool(solution.converged.all()), solution.status_counts()
    residual = build.flat_residual(layer, z, x)
    assert (residual <= abstol * (1 + 1e-9)).all(), residual
    # The reported residual is the one of the returned point, per sample.
    torch.testing.assert_close(solution.residual, residual, atol=1e-14, rtol=1e-9)
    # ... and the point is the (unique, f is a 0.5-contraction) fixed point.
    error = torch.linalg.vector_norm(z - _picard_reference(layer, x), dim=1)
    assert (error <= 2 * abstol / (1 - 0.5)).all(), error


@pytest.mark.parametrize("solver_name", SOLVERS)
def test_float32_solve_reaches_its_tolerance(build, solver_name):
    abstol = 1e-4
    layer = build.dense_layer("skip_reg", build.solvers(abstol)[solver_name])
    x = _inputs(dtype=torch.float32)
    z, solution = layer(x)
    assert z.dtype == torch.float32
    assert bool(solution.converged.all())
    assert (build.flat_residual(layer, z, x) <= abstol * 1.01).all()


def _loss_function(layer, head):
    """``(x, *params) -> loss`` with the layer's parameters swapped in (for gradcheck)."""
    names = [name for name, _ in layer.named_parameters()]

    def loss(x, *params):
        z, solution = torch.func.functional_call(layer, dict(zip(names, params)), (x,))
        # A nonlinear task loss plus the skip loss (zero for vanilla): what a user trains on.
        return (z @ head).sin().sum() + 0.7 * solution.skip_loss

    params = [p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters()]
    return loss, params


def _gradcheck(build, variant, adjoint, solver=None, raise_exception=True, **kwargs):
    """gradcheck of a loss w.r.t. ``x`` and every parameter, on a 3-state / 2-input model
    (31 checked numbers for Skip: each costs two float64 solves to 1e-11)."""
    solver = build.tight_anderson(abstol=1e-11) if solver is None else solver
    layer = build.dense_layer(variant, solver, dim=3, in_dim=2, adjoint=adjoint, **kwargs).double()
    head = torch.randn(3, 2, dtype=torch.float64)
    loss, params = _loss_function(layer, head)
    x = _inputs(batch=2, in_dim=2).requires_grad_(True)
    return gradcheck(loss, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5, raise_exception=raise_exception)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_match_gradcheck(build, variant):
    assert _gradcheck(build, variant, build.tight_gmres())


@pytest.mark.parametrize("variant", VARIANTS)
def test_continuous_deq_gradients_match_unrolled_and_discrete_ones(build, variant):
    """Continuous DEQ (Tsit5 to steady state): its implicit gradient equals backprop through
    the Tsit5 steps (``Unrolled``) and the gradchecked gradient of a tight Anderson solve.
    (gradcheck itself is too slow here: Tsit5 to 1e-11 takes ~1,800 evaluations per solve.)"""
    x = _inputs(batch=3)
    head = torch.randn(6, 2, dtype=torch.float64)
    state = build.dense_layer(variant, build.tight_anderson()).double().state_dict()
    gradients = {}
    for name, solver, adjoint in [("anderson", build.tight_anderson(), build.tight_gmres()),
                                  ("tsit5", build.solvers(1e-8)["tsit5"], build.tight_gmres()),
                                  ("tsit5_unrolled", build.solvers(1e-8)["tsit5"], pycdeq.Unrolled())]:
        layer = build.dense_layer(variant, solver, adjoint=adjoint).double()
        layer.load_state_dict(state)
        xi = x.clone().requires_grad_(True)
        z, solution = layer(xi)
        assert bool(solution.converged.all())
        loss = (z @ head).sin().sum() + 0.7 * solution.skip_loss
        grads = torch.autograd.grad(loss, [xi, *layer.parameters()])
        gradients[name] = torch.cat([g.flatten() for g in grads])
    assert gradients["anderson"].abs().max() > 0.1
    torch.testing.assert_close(gradients["tsit5"], gradients["anderson"], atol=1e-6, rtol=0)
    torch.testing.assert_close(gradients["tsit5_unrolled"], gradients["anderson"], atol=1e-6, rtol=0)


def test_gradients_match_gradcheck_when_returning_f_of_iterate(build):
    assert _gradcheck(build, "skip", build.tight_gmres(), output="f_of_iterate")


def test_gradcheck_detects_an_inexact_adjoint(build):
    """The check above has teeth: Jacobian-free backprop (an approximation) fails it."""
    assert not _gradcheck(build, "vanilla", pycdeq.JFB(), raise_exception=False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_implicit_gradient_matches_unrolled_backprop(build, variant):
    """Backprop through a long Picard solve converges to the implicit gradient."""
    torch.manual_seed(3)
    implicit = build.dense_layer(variant, build.tight_anderson(), adjoint=build.tight_gmres()).double()
    unrolled = build.dense_layer(variant, pycdeq.FixedPoint(
        max_iter=300, termination=pycdeq.Termination(mode="abs", abstol=1e-14)),
        adjoint=pycdeq.Unrolled()).double()
    unrolled.load_state_dict(implicit.state_dict())
    x = _inputs(batch=4)
    head = torch.randn(6, 2, dtype=torch.float64)
    grads = []
    for layer in (implicit, unrolled):
        xi = x.clone().requires_grad_(True)
        z, solution = layer(xi)
        loss = (z @ head).sin().sum() + 0.7 * solution.skip_loss
        params = [xi, *layer.parameters()]
        grads.append(torch.autograd.grad(loss, params))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_state_shape_defaults_to_the_input_shape(build):
    f = build.TanhDense(5, 5).double()
    layer = pycdeq.layers.DEQ(f, build.tight_anderson())
    x = torch.randn(3, 5, dtype=torch.float64)
    z, solution = layer(x)
    assert z.shape == x.shape
    assert bool(solution.converged.all())
    assert torch.equal(solution.z0, torch.zeros_like(x))


def test_layer_output_fields(build):
    layer = build.dense_layer("vanilla", build.tight_anderson(abstol=1e-8)).double()
    z, solution = layer(_inputs())
    assert isinstance(solution, pycdeq.DEQOutput) and isinstance(solution.solution, pycdeq.Solution)
    assert solution.solution.z is z and solution.status is solution.solution.status
    with pytest.raises(dataclasses.FrozenInstanceError):  # built once, by the layer
        solution.nfe = 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        solution.solution.nfe = 0
    assert solution.residual.shape == solution.status.shape == solution.converged.shape == (5,)
    assert solution.converged.dtype == torch.bool
    assert isinstance(solution.nfe, int) and solution.nfe >= 2
    assert solution.skip_loss.shape == () and solution.jacobian_loss.shape == ()
    assert solution.jacobian_loss.item() == 0.0
    # Samples of different size stop at different iterations (per-sample termination).
    assert solution.iterations.min() < solution.iterations.max()
