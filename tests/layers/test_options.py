"""The layer's options: fixed-depth (unrolled) mode, ``output`` and ``input_gradient``.

Each is compared with the same computation written out by hand.
"""

from __future__ import annotations

import pytest
import torch

import pycdeq
from pycdeq.layers import DEQ, JacobianRegularization

VARIANTS = ["vanilla", "skip", "skip_reg"]


def _x(batch=4, in_dim=4):
    return torch.randn(batch, in_dim, dtype=torch.float64)


# --- fixed depth ---------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_fixed_depth_applies_f_depth_times_with_plain_backprop(build, variant):
    depth = 4
    layer = build.dense_layer(variant, build.tight_anderson(), fixed_depth=depth).double()
    head = torch.randn(6, 3, dtype=torch.float64)
    x = _x().requires_grad_(True)
    calls_before = layer.f.calls
    z, solution = layer(x)
    assert solution.nfe == depth
    # f calls: depth, plus f(0, x) for Skip Reg.; no implicit-gradient call, no solve.
    assert layer.f.calls - calls_before == depth + (variant == "skip_reg")
    assert solution.adjoint is None
    assert (solution.iterations == depth).all()
    loss = (z @ head).sin().sum() + 0.5 * solution.skip_loss
    params = [x, *layer.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)

    # By hand, from the variant's z0, with ordinary autograd (z0 included: g and f(0, x)
    # get gradient through the unrolled chain, not only through the skip loss).
    x2 = x.detach().clone().requires_grad_(True)
    z0 = layer.initial_state(x2)
    manual = z0
    for _ in range(depth):
        manual = layer.f(manual, x2)
    torch.testing.assert_close(z, manual, atol=0, rtol=0)
    skip = (manual - z0).abs().mean() if variant != "vanilla" else 0.0
    manual_loss = (manual @ head).sin().sum() + 0.5 * skip
    manual_grads = torch.autograd.grad(manual_loss, [x2, *layer.parameters()], allow_unused=True)
    for a, b in zip(grads, manual_grads):
        if b is None:
            assert a is None or bool((a == 0).all())
        else:
            torch.testing.assert_close(a, b, atol=1e-14, rtol=1e-12)
    # The reported residual is the last step's ||f(z_{d-1}) - z_{d-1}||, per sample.
    previous = layer.initial_state(x2)
    for _ in range(depth - 1):
        previous = layer.f(previous, x2)
    torch.testing.assert_close(solution.residual, (manual - previous).norm(dim=1).detach())


def test_fixed_depth_fills_in_the_jacobian_loss(build):
    """The reference computed no Jacobian penalty in its fixed-depth (pretraining) mode."""
    layer = build.dense_layer("skip_reg", build.tight_anderson(), fixed_depth=3,
                              jacobian_reg=JacobianRegularization(num_vectors=2)).double()
    x = _x()
    torch.manual_seed(5)
    z, solution = layer(x)
    assert solution.jacobian_loss.item() > 0
    assert solution.jacobian_loss.requires_grad
    # The same random vectors at the unrolled output give the same number.
    torch.manual_seed(5)
    expected = JacobianRegularization(num_vectors=2)(lambda u: layer.f(u, x), z.detach())
    torch.testing.assert_close(solution.jacobian_loss, expected, atol=0, rtol=1e-14)
    grads = torch.autograd.grad(solution.jacobian_loss, list(layer.f.parameters()))
    assert all(g.abs().max() > 0 for g in grads)


def test_fixed_depth_can_be_switched_off_on_a_built_layer(build):
    layer = build.dense_layer("vanilla", build.tight_anderson(abstol=1e-10), fixed_depth=2).double()
    x = _x()
    _, unrolled = layer(x)
    assert unrolled.nfe == 2 and not bool(unrolled.converged.all())
    layer.fixed_depth = 0
    z, solved = layer(x)
    assert bool(solved.converged.all())
    assert solved.adjoint is not None  # the implicit gradient is attached again
    assert (build.flat_residual(layer, z, x) <= 1e-10).all()


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (2.0, TypeError), (True, TypeError), ("3", TypeError)])
def test_fixed_depth_is_validated(build, bad, error):
    with pytest.raises(error, match="fixed_depth"):
        build.dense_layer("vanilla", build.tight_anderson(), fixed_depth=bad)
    layer = build.dense_layer("vanilla", build.tight_anderson())
    with pytest.raises(error, match="fixed_depth"):
        layer.fixed_depth = bad
    assert layer.fixed_depth == 0


# --- output ---------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_f_of_iterate_returns_f_applied_to_the_solvers_iterate(build, variant):
    iterate_layer = build.dense_layer(variant, build.tight_anderson(abstol=1e-6)).double()
    f_layer = build.dense_layer(variant, build.tight_anderson(abstol=1e-6), output="f_of_iterate").double()
    f_layer.load_state_dict(iterate_layer.state_dict())
    x = _x()
    u_star, s_iterate = iterate_layer(x)
    z_star, s_f = f_layer(x)
    torch.testing.assert_close(z_star, iterate_layer.f(u_star, x), atol=1e-15, rtol=0)
    assert not torch.equal(z_star, u_star)  # a loose tolerance: the extra call moves the point
    assert s_f.nfe == s_iterate.nfe + 1
    if variant != "vanilla":
        torch.testing.assert_close(s_f.skip_loss, (z_star - s_f.z0).abs().mean(), atol=0, rtol=1e-15)


# --- input gradient -------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["vanilla", "skip_reg"])
def test_final_call_input_gradient_is_the_gradient_of_the_last_call_only(build, variant):
    """Paper-era behaviour: the stem sees ``x`` only through ``f(u*, x)`` (and ``z0``)."""
    final = build.dense_layer(variant, build.tight_anderson(), adjoint=build.tight_gmres(),
                              output="f_of_iterate", input_gradient="final_call").double()
    exact = build.dense_layer(variant, build.tight_anderson(), adjoint=build.tight_gmres(),
                              output="f_of_iterate").double()
    exact.load_state_dict(final.state_dict())
    head = torch.randn(6, 3, dtype=torch.float64)

    x_data = _x()

    def input_and_parameter_grads(layer):
        x = x_data.clone().requires_grad_(True)
        z, solution = layer(x)
        loss = (z @ head).sin().sum() + 0.5 * solution.skip_loss
        return torch.autograd.grad(loss, [x, *layer.parameters()])

    final_grads = input_and_parameter_grads(final)
    exact_grads = input_and_parameter_grads(exact)

    # By hand: u* is a constant; x enters f(u*, x) and, for Skip Reg., z0 = f(0, x).
    x = x_data.clone().requires_grad_(True)
    with torch.no_grad():
        u_star, _ = DEQ(final.f, build.tight_anderson(), state_shape=(6,))(x)
    z = final.f(u_star, x)
    z0 = final.initial_state(x)
    skip = (z - z0).abs().mean() if variant != "vanilla" else 0.0
    (manual,) = torch.autograd.grad((z @ head).sin().sum() + 0.5 * skip, [x])
    torch.testing.assert_close(final_grads[0], manual, atol=1e-10, rtol=1e-8)
    # The exact (implicit) input gradient is a different number...
    assert (exact_grads[0] - manual).abs().max() > 1e-3
    # ... while the parameters of f get the full implicit gradient either way.
    for a, b in zip(final_grads[1:], exact_grads[1:]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_default_input_gradient_is_exact(build):
    """Implicit input gradient by default: matches a finite difference of the solve."""
    layer = build.dense_layer("vanilla", build.tight_anderson(abstol=1e-13), adjoint=build.tight_gmres()).double()
    x = _x().requires_grad_(True)
    direction = torch.randn_like(x)
    z, _ = layer(x)
    (grad,) = torch.autograd.grad(z.sum(), x)
    eps = 1e-6
    with torch.no_grad():
        plus = layer(x + eps * direction)[0].sum()
        minus = layer(x - eps * direction)[0].sum()
    torch.testing.assert_close((grad * direction).sum(), (plus - minus) / (2 * eps), atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("option, value", [("output", "f"), ("input_gradient", "explicit"),
                                           ("on_nonconvergence", "error"), ("init", "ones")])
def test_unknown_option_values_are_rejected_naming_the_option(build, option, value):
    f = build.TanhDense(6, 4)
    with pytest.raises(ValueError, match=option):
        DEQ(f, pycdeq.Anderson(), state_shape=(6,), **{option: value})
