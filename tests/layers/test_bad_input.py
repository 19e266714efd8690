"""Bad input to the layers fails early and says what was wrong; non-convergence follows the
``on_nonconvergence`` policy (warn once per call with the count, raise, or stay silent)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import pycdeq
from pycdeq.layers import DEQ, JacobianRegularization, NonConvergenceError, NonConvergenceWarning, SkipDEQ
from pycdeq.layers import multiscale


class CountingF(nn.Module):
    """Wraps a function of ``(z, x)`` and counts its calls."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.calls = 0

    def forward(self, z, x):
        self.calls += 1
        return self.fn(z, x)


def _anderson():
    return pycdeq.Anderson(max_iter=20)


# --- what f and g return --------------------------------------------------------------------

@pytest.mark.parametrize("solver", [pycdeq.Anderson(), pycdeq.Broyden(), pycdeq.FixedPoint(), pycdeq.Tsit5()],
                         ids=["anderson", "broyden", "fixed_point", "tsit5"])
def test_f_of_the_wrong_shape_fails_on_its_first_call_naming_both_shapes(solver):
    f = CountingF(lambda z, x: torch.cat([z, x[:, :1]], dim=1))  # (3, 7) for a (3, 6) state
    layer = DEQ(f, solver, state_shape=(6,))
    with pytest.raises(ValueError, match=re.escape("(3, 7)")) as info:
        layer(torch.randn(3, 4))
    assert "(3, 6)" in str(info.value)
    assert f.calls == 1


def test_f_of_the_wrong_dtype_fails_naming_both_dtypes():
    f = CountingF(lambda z, x: z.double() * 0.5)
    layer = DEQ(f, _anderson())
    with pytest.raises(ValueError) as info:
        layer(torch.randn(3, 6))
    assert "torch.float64" in str(info.value) and "torch.float32" in str(info.value)
    assert f.calls == 1


def test_skip_reg_checks_f_of_zero_before_solving():
    f = CountingF(lambda z, x: z[:, :5] + 1)
    layer = pycdeq.layers.SkipRegDEQ(f, _anderson(), state_shape=(6,))
    with pytest.raises(ValueError, match=re.escape("f(0, x)")) as info:
        layer(torch.randn(3, 4))
    assert "(3, 5)" in str(info.value) and "(3, 6)" in str(info.value)
    assert f.calls == 1


def test_f_returning_a_non_tensor_is_rejected():
    layer = DEQ(CountingF(lambda z, x: [z]), _anderson())
    with pytest.raises((ValueError, TypeError), match="returned"):
        layer(torch.randn(3, 6))


def test_g_of_the_wrong_shape_is_rejected_naming_both_shapes():
    f = CountingF(lambda z, x: 0.5 * z)
    layer = SkipDEQ(f, nn.Linear(4, 5), _anderson(), state_shape=(6,))
    with pytest.raises(ValueError, match=re.escape("g(x)")) as info:
        layer(torch.randn(3, 4))
    assert "(3, 5)" in str(info.value) and "(3, 6)" in str(info.value)
    assert f.calls == 0  # nothing was solved


# --- the input x ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("variant", ["vanilla", "skip", "skip_reg"])
def test_non_finite_input_is_a_value_error(build, variant, bad):
    layer = build.dense_layer(variant, _anderson())
    x = torch.randn(3, 4)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer(x)


def test_non_float_or_non_tensor_input_is_a_type_error(build):
    layer = build.dense_layer("vanilla", _anderson())
    with pytest.raises(TypeError, match="floating point"):
        layer(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer([[0.0] * 4] * 3)


# --- multiscale structure -------------------------------------------------------------------

def test_mapping_matrix_must_be_square_in_the_number_of_scales(build):
    main, mapping, post = build.multiscale_parts()
    with pytest.raises(ValueError, match="mapping_layers") as info:
        multiscale.MultiScaleFunction(main, [mapping[0]], post)
    assert "2x2" in str(info.value)
    with pytest.raises(ValueError, match="mapping_layers"):
        multiscale.MultiScaleFunction(main, [mapping[0], mapping[1][:1]], post)


def test_post_fuse_layers_must_match_the_number_of_scales(build):
    main, mapping, post = build.multiscale_parts()
    with pytest.raises(ValueError, match="post_fuse_layers has 1 entries for 2 scales"):
        multiscale.MultiScaleFunction(main, mapping, post[:1])


def test_scales_must_match_the_number_of_branches(build):
    main, mapping, post = build.multiscale_parts()
    with pytest.raises(ValueError, match="scales") as info:
        multiscale.MultiScaleDEQ(main, mapping, post, _anderson(), build.scales[:1])
    assert "main_layers" in str(info.value)
    with pytest.raises(ValueError, match="init_layers"):
        multiscale.MultiScaleSkipDEQ(main, mapping, post, build.multiscale_init_layers()[:1], _anderson(),
                                     build.scales)
    with pytest.raises(ValueError, match="main_layers"):
        multiscale.MultiScaleNeuralODE(main, mapping, post, pycdeq.Tsit5(), build.scales + ((1, 1, 1),))


def test_a_scale_of_the_wrong_shape_from_f_is_named(build):
    main, mapping, post = build.multiscale_parts()
    post[1] = nn.Conv2d(3, 4, 1)  # f's second scale comes out 4x2x2, the state's is 3x2x2
    layer = multiscale.MultiScaleDEQ(main, mapping, post, _anderson(), build.scales)
    with pytest.raises(ValueError) as info:
        layer(torch.randn(2, *build.scales[0]))
    assert "(2, 4, 2, 2)" in str(info.value) and "(2, 3, 2, 2)" in str(info.value)


def test_multiscale_state_of_the_wrong_length_is_named(build):
    main, mapping, post = build.multiscale_parts()
    f = multiscale.MultiScaleFunction(main, mapping, post)
    x = torch.randn(2, *build.scales[0])
    with pytest.raises(ValueError, match="tuple of 2 tensors, got 1"):
        f((torch.zeros(2, *build.scales[0]),), x)
    with pytest.raises(ValueError, match="tuple of 2 tensors, got a single tensor"):
        f(torch.zeros(2, *build.scales[0]), x)


def test_multiscale_skip_predictor_of_the_wrong_shape_is_named(build):
    main, mapping, post = build.multiscale_parts()
    init = build.multiscale_init_layers()
    init[1] = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh())  # 3x4x4 instead of 3x2x2
    layer = multiscale.MultiScaleSkipDEQ(main, mapping, post, init, _anderson(), build.scales)
    with pytest.raises(ValueError, match=re.escape("g(x)")) as info:
        layer(torch.randn(2, *build.scales[0]))
    assert "(2, 3, 4, 4)" in str(info.value) and "(2, 3, 2, 2)" in str(info.value)


# --- non-convergence policy -----------------------------------------------------------------

def _slow_layer(policy):
    """``f(z, x) = 0.95 tanh(z) + x``: samples with ``x = 0`` are at their fixed point from
    the start, the others need far more than the 3 Picard steps allowed."""
    f = CountingF(lambda z, x: 0.95 * torch.tanh(z) + x)
    solver = pycdeq.FixedPoint(max_iter=3, termination=pycdeq.Termination(mode="abs", abstol=1e-8))
    return DEQ(f, solver, on_nonconvergence=policy)


def _x_with_zero_rows():
    x = torch.randn(5, 4)
    x[[0, 3]] = 0
    return x  # 3 of 5 samples cannot converge


def test_warn_policy_warns_once_per_call_with_the_count():
    layer = _slow_layer("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        z, solution = layer(_x_with_zero_rows())
        layer(_x_with_zero_rows())
    ours = [w for w in caught if issubclass(w.category, NonConvergenceWarning)]
    assert len(ours) == 2  # one per call, not one per sample or per iteration
    assert "3 of 5 samples did not converge" in str(ours[0].message)
    assert "max_iters" in str(ours[0].message)
    assert solution.converged.tolist() == [True, False, False, True, False]


def test_warn_is_the_default_policy(build):
    layer = DEQ(CountingF(lambda z, x: 0.95 * torch.tanh(z) + x), pycdeq.FixedPoint(max_iter=2))
    assert layer.on_nonconvergence == "warn"
    with pytest.warns(NonConvergenceWarning, match="3 of 5"):
        layer(_x_with_zero_rows())


def test_no_warning_when_every_sample_converges():
    layer = _slow_layer("warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z, solution = layer(torch.zeros(5, 4))
    assert bool(solution.converged.all())


def test_raise_policy_raises_with_the_count():
    with pytest.raises(NonConvergenceError, match="3 of 5 samples did not converge"):
        _slow_layer("raise")(_x_with_zero_rows())


def test_ignore_policy_is_silent():
    layer = _slow_layer("ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z, solution = layer(_x_with_zero_rows())
    assert solution.converged.sum().item() == 2


def test_non_finite_samples_are_reported_not_hidden():
    f = CountingF(lambda z, x: 0.5 * z + torch.log(x))  # log of a negative entry: NaN
    layer = DEQ(f, pycdeq.Anderson(max_iter=30), on_nonconvergence="raise")
    x = torch.rand(4, 3) + 0.5
    x[2, 1] = -1.0
    with pytest.raises(NonConvergenceError, match="1 of 4") as info:
        layer(x)
    assert "non_finite" in str(info.value)


# --- invalid options ------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, name", [
    (dict(init=3), TypeError, "init"),
    (dict(init="g"), ValueError, "init"),
    (dict(jacobian_reg=2), TypeError, "jacobian_reg"),
    (dict(jacobian_reg=JacobianRegularization), TypeError, "jacobian_reg"),
    (dict(on_nonconvergence="warning"), ValueError, "on_nonconvergence"),
    (dict(output="z"), ValueError, "output"),
    (dict(input_gradient=None), ValueError, "input_gradient"),
    (dict(fixed_depth=-2), ValueError, "fixed_depth"),
    (dict(adjoint="gmres"), TypeError, "adjoint"),
    (dict(adjoint=pycdeq.Anderson()), TypeError, "adjoint"),
])
def test_invalid_options_are_rejected_at_construction(kwargs, error, name):
    f = CountingF(lambda z, x: 0.5 * z)
    with pytest.raises(error, match=name):
        DEQ(f, pycdeq.Anderson(), **kwargs)


def test_invalid_solver_f_or_g_is_a_type_error():
    f = CountingF(lambda z, x: 0.5 * z)
    with pytest.raises(TypeError, match="solver"):
        DEQ(f, "anderson")
    with pytest.raises(TypeError, match="solver"):
        DEQ(f, pycdeq.GMRES())
    with pytest.raises(TypeError, match="f must be"):
        DEQ(3, pycdeq.Anderson())
    with pytest.raises(TypeError, match="g must be"):
        SkipDEQ(f, lambda x: x, pycdeq.Anderson())


def test_solver_options_are_validated():
    with pytest.raises(ValueError, match="max_iter"):
        pycdeq.Anderson(max_iter=-1)
    with pytest.raises(TypeError, match="termination"):
        pycdeq.Anderson(termination=1e-3)
    with pytest.raises(ValueError, match="too loose"):
        pycdeq.Tsit5(rtol=1e-2, atol=1e-2, termination=pycdeq.Termination(mode="abs", abstol=1e-3))
