"""Translation of pycdeq models to the Julia spec: variants, solvers, options, parameters."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from pycdeq import GMRES, JFB, Anderson, Broyden, FixedPoint, Termination
from pycdeq.julia import TranslationError
from pycdeq.julia import params as flat_params
from pycdeq.julia import translate as tr
from pycdeq.models import MNISTDense
from pycdeq.solvers.ode import BS3, RK4, Dopri5, Euler, Tsit5

FEATURES, WIDTH, CLASSES = 12, 16, 5


def model(variant="vanilla", continuous=True, **kwargs):
    torch.manual_seed(0)
    return MNISTDense(in_features=FEATURES, width=WIDTH, num_classes=CLASSES, variant=variant,
                      continuous=continuous, **kwargs)


@pytest.mark.parametrize("variant", ["vanilla", "skip", "skip_reg", "node"])
@pytest.mark.parametrize("continuous", [True, False])
def test_every_variant_translates_with_its_parameters(variant, continuous):
    m = model(variant, continuous)
    spec = tr.translate(m)
    assert (spec.variant, spec.in_features, spec.width, spec.num_classes) == (variant, FEATURES, WIDTH, CLASSES)
    assert spec.num_params == sum(p.numel() for p in m.parameters())
    paths = [p.lux_path for p in spec.params]
    assert ("layer_2.init.weight" in paths) == (variant == "skip")
    assert {p.torch_name for p in spec.params} == {n for n, _ in m.named_parameters()}
    expected_kind = "node" if variant == "node" else ("continuous" if continuous else "discrete")
    assert spec.solver.kind == expected_kind
    assert spec.adjoint.name == ("gauss" if variant == "node" else "steady_state")
    assert spec.continuous == (expected_kind != "discrete")


def test_paper_defaults_map_to_tsit5_and_limited_memory_broyden():
    continuous, discrete = tr.translate(model()).solver, tr.translate(model(continuous=False)).solver
    assert continuous.name == "tsit5" and continuous.julia == "DynamicSS(Tsit5())"
    assert (continuous.termination, continuous.reltol, continuous.maxiters) == ("rel", 5e-3, 50)
    assert (continuous.ode_reltol, continuous.ode_abstol) == pytest.approx((1e-3, 1e-3))  # tolerance / 5
    assert discrete.name == "broyden" and discrete.julia == "LimitedMemoryBroyden()"
    assert (discrete.memory, discrete.maxiters, discrete.reltol) == (27, 50, 5e-3)
    adjoint = tr.translate(model()).adjoint
    assert (adjoint.reltol, adjoint.maxiters) == (5e-3, 15)


def test_spec_round_trips_through_json():
    spec = tr.translate(model("skip", False))
    again = tr.ModelSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec


def test_julia_keywords_are_plain_values():
    kwargs = tr.translate(model("skip_reg")).julia_kwargs(seed=3)
    assert kwargs["seed"] == 3 and kwargs["variant"] == "skip_reg"
    assert all(isinstance(v, (str, int, float, bool)) for v in kwargs.values())


ABS = Termination(mode="abs", abstol=1e-6, norm="max")


@pytest.mark.parametrize("solver, expected", [
    (Broyden(memory=7, max_iter=20, termination=ABS), {"name": "broyden", "memory": 7, "maxiters": 20}),
    (Anderson(m=3, beta=0.5, max_iter=30, termination=ABS), {"name": "anderson", "m": 3, "beta": 0.5}),
    (FixedPoint(damping=0.25, max_iter=9, termination=ABS), {"name": "picard", "beta": 0.25, "maxiters": 9}),
])
def test_discrete_solvers_map_to_nonlinearsolve(solver, expected):
    spec = tr.translate(model(continuous=False, solver=solver)).solver
    assert spec.kind == "discrete" and spec.abstol == 1e-6 and spec.termination == "abs"
    for key, value in expected.items():
        assert getattr(spec, key) == value, key


@pytest.mark.parametrize("solver, name, adaptive", [
    (Tsit5(rtol=1e-4, atol=1e-5, max_steps=77), "tsit5", True), (Dopri5(), "dp5", True),
    (BS3(), "bs3", True), (Euler(dt=0.5), "euler", False), (RK4(dt=0.25), "rk4", False)])
def test_ode_methods_map_to_ordinarydiffeq_with_separate_tolerances(solver, name, adaptive):
    spec = tr.translate(model(solver=solver)).solver
    assert spec.kind == "continuous" and spec.name == name and spec.adaptive == adaptive
    if adaptive:
        assert (spec.ode_reltol, spec.ode_abstol) == (solver.rtol, solver.atol)
        assert spec.reltol == solver.termination.reltol  # the steady-state test, not the integrator's
    else:
        assert spec.dt == solver.dt
    assert spec.maxiters == solver.max_steps


@pytest.mark.parametrize("solver, coupled", [
    (Anderson(m=3, termination=ABS), "anderson"), (Broyden(memory=5, termination=ABS), "broyden"),
    (FixedPoint(termination=ABS), None)])
def test_batch_coupled_solvers_say_so_in_the_approximations(solver, coupled):
    notes = tr.translate(model(continuous=False, solver=solver)).approximations
    coupling = [n for n in notes if "batch-coupled" in n]
    if coupled is None:  # damped Picard is elementwise: only the batch-level stop differs
        assert coupling == []
    else:
        assert coupling == [tr.BATCH_COUPLED[coupled]]
        assert "nfe differ" in coupling[0] and "z* agrees" in coupling[0]
    assert any("whole batch at once" in n for n in notes)


def test_spec_json_without_a_restart_reads_with_pycdeqs_default():
    data = json.loads(tr.translate(model("skip", False)).to_json())
    del data["adjoint"]["restart"]
    assert tr.ModelSpec.from_dict(data).adjoint.restart == GMRES().restart


def test_anderson_needs_absolute_termination():
    with pytest.raises(TranslationError, match="mode='abs'"):
        tr.translate(model(continuous=False, solver=Anderson(termination=Termination(mode="rel"))))


def test_anderson_l2_tolerance_is_scaled_so_every_sample_still_passes():
    spec = tr.translate(model(continuous=False, solver=Anderson(
        termination=Termination(mode="abs", abstol=1e-4, norm="l2"))))
    assert math.isclose(spec.solver.abstol, 1e-4 / math.sqrt(WIDTH))
    assert any("sqrt" in note for note in spec.approximations)


def test_termination_modes_record_their_approximations():
    rel = tr.translate(model()).approximations
    assert any("relative termination" in n for n in rel)
    norm = tr.translate(model(continuous=False, solver=Broyden(termination=Termination(mode="norm"))))
    assert any("abs OR rel" in n for n in norm.approximations)
    best = tr.translate(model(continuous=False, solver=Broyden(termination=Termination(mode="rel", best=True))))
    assert best.solver.best and any("safe/best" in n for n in best.approximations)
    with pytest.raises(TranslationError, match="mode='norm'"):
        tr.translate(model(continuous=False, solver=Broyden(termination=Termination(mode="norm", safe=True))))


def test_gmres_adjoint_maps_and_others_are_refused():
    translated = tr.translate(model(adjoint=GMRES(rtol=1e-4, atol=1e-9, max_iter=12, restart=7)))
    spec = translated.adjoint
    assert (spec.name, spec.reltol, spec.abstol, spec.maxiters, spec.restart) == (
        "steady_state", 1e-4, 1e-9, 12, 7)
    assert translated.julia_kwargs()["adjoint_restart"] == 7
    # The linear solver is explicit (KrylovJL_GMRES), whatever the state size: the report says
    # how its stopping rule differs, not that a library default was chosen.
    assert tr.ADJOINT_GMRES_NOTE in translated.approximations
    assert not any("default method" in note for note in translated.approximations)
    with pytest.raises(TranslationError, match="JFB"):
        tr.translate(model(adjoint=JFB()))


def test_neural_ode_adjoints():
    assert tr.translate(model("node", adjoint="backsolve")).adjoint.name == "backsolve"
    spec = tr.translate(model("node"))
    assert spec.adjoint.name == "gauss" and any("GaussAdjoint" in n for n in spec.approximations)
    assert spec.fixed_depth == 0


@pytest.mark.parametrize("variant, options, match", [
    ("vanilla", {"output": "f_of_iterate"}, "f_of_iterate"),
    ("vanilla", {"input_gradient": "final_call"}, "final_call"),
    ("node", {"rhs": "f"}, "rhs"),
    ("node", {"t1": 2.0}, "t1"),
])
def test_options_without_julia_counterpart_are_refused(variant, options, match):
    with pytest.raises(TranslationError, match=match):
        tr.translate(model(variant, **options))


def test_jacobian_regularization_is_refused():
    from pycdeq.layers import JacobianRegularization

    with pytest.raises(TranslationError, match="Jacobian"):
        tr.translate(model(jacobian_reg=JacobianRegularization()))


def test_fixed_depth_is_carried_over():
    m = model("skip_reg")
    m.deq.fixed_depth = 3
    assert tr.translate(m).fixed_depth == 3 and tr.translate(m).julia_kwargs()["fixed_depth"] == 3


def test_float64_models_and_other_architectures_are_refused():
    with pytest.raises(TranslationError, match="Float32"):
        tr.translate(model().double())
    with pytest.raises(TranslationError, match="stem"):
        tr.translate(nn.Linear(3, 3))


def test_an_injection_that_is_not_relu_sum_is_detected():
    m = model()

    class TanhInjection(nn.Module):
        def __init__(self, f):
            super().__init__()
            self.Wz, self.Wx = f.Wz, f.Wx

        def forward(self, z, x):
            return torch.tanh(self.Wz(z)) + torch.relu(self.Wx(x))

    m.deq.f = TanhInjection(m.deq.f)
    with pytest.raises(TranslationError, match="relu"):
        tr.translate(m)


# --- parameters -------------------------------------------------------------------------


def test_parameters_flatten_column_major_and_round_trip_exactly():
    m = model("skip")
    spec = tr.translate(m)
    params = flat_params.model_params(spec, m)
    flat = flat_params.flatten_params(spec, params)
    assert flat.dtype == np.float32 and flat.shape == (spec.num_params,)
    first = spec.params[0]  # layer_1.weight, (width, features) column-major
    assert np.array_equal(flat[:first.size], params[first.torch_name].detach().numpy().T.ravel())
    back = flat_params.unflatten_params(spec, flat)
    for name, value in params.items():
        assert torch.equal(back[name], value.detach()), name


def test_julia_order_is_followed_and_mismatches_are_refused():
    m = model("skip")
    spec = tr.translate(m)
    reordered = list(reversed([(p.lux_path, p.lux_shape) for p in spec.params]))
    order = flat_params.order_from_layout(spec, reordered)
    flat = flat_params.flatten_params(spec, flat_params.model_params(spec, m), order)
    assert np.array_equal(flat[:CLASSES], m.head.bias.detach().numpy())  # layer_3.bias first now
    back = flat_params.unflatten_params(spec, flat, order)
    assert torch.equal(back["deq.g.0.weight"], m.deq.g[0].weight.detach())
    layout = ";".join(f"{path}={'x'.join(map(str, shape))}" for path, shape in reordered)
    assert flat_params.parse_layout(layout) == reordered
    with pytest.raises(TranslationError, match="differ"):
        flat_params.order_from_layout(spec, reordered[1:])
    wrong = [(path, shape[::-1]) if path == "layer_1.weight" else (path, shape) for path, shape in reordered]
    with pytest.raises(TranslationError, match="layer_1.weight"):
        flat_params.order_from_layout(spec, wrong)


def test_load_params_into_writes_the_torch_model():
    source, target = model("vanilla"), model("vanilla")
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    spec = tr.translate(source)
    flat_params.load_params_into(target, spec, flat_params.flatten_params(spec, flat_params.model_params(spec, source)))
    for (name, a), (_, b) in zip(source.named_parameters(), target.named_parameters()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="flat vector"):
        flat_params.unflatten_params(spec, np.zeros(3, np.float32))
