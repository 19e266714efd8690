"""ModelConfig / build_model: defaults follow the paper, bad options fail naming themselves."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import pycdeq
from pycdeq.models import (CIFAR10Large, CIFAR10Small, MDEQSizes, MNISTConv, MNISTDense, ModelConfig,
                           build_model, make_config, model_from_config)
from pycdeq.solvers.ode import VCAB3, Tsit5


def _ode_class(architecture):
    return VCAB3 if architecture.startswith("cifar") else Tsit5  # the paper's methods


@pytest.mark.parametrize("name, tolerance, max_steps, itmax, best", [
    ("mnist-dense", 5e-3, 50, 15, False),
    ("mnist-conv", 5e-3, 50, 15, False),
    ("cifar10-small", 0.05, 18, 20, False),
    ("cifar10-large", 0.05, 18, 20, True),
])
def test_default_solvers_follow_the_paper(name, tolerance, max_steps, itmax, best):
    expected_termination = pycdeq.Termination(mode="rel", reltol=tolerance, best=best)
    continuous = ModelConfig(name, continuous=True)
    assert type(continuous.solver) is _ode_class(name)
    assert continuous.solver.termination == expected_termination
    assert continuous.solver.max_steps == max_steps
    # The integrator runs 5x tighter than the steady-state test (the ODE options' rule).
    assert continuous.solver.rtol == continuous.solver.atol == pytest.approx(tolerance / 5)

    discrete = ModelConfig(name, continuous=False)
    assert discrete.solver == pycdeq.Broyden(max_iter=max_steps, memory=min(max_steps, 27),
                                             termination=expected_termination)
    for config in (continuous, discrete):
        assert config.adjoint == pycdeq.GMRES(rtol=tolerance, max_iter=itmax)

    node = ModelConfig(name, variant="node")
    assert type(node.solver) is _ode_class(name)
    assert (node.solver.rtol, node.solver.atol, node.solver.max_steps) == (tolerance, tolerance, max_steps)
    assert node.adjoint == "backprop"


def test_model_config_is_frozen_and_names_the_solver_used():
    model = build_model("mnist-dense", continuous=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.variant = "skip"
    assert model.deq.solver is model.config.solver
    assert model.deq.adjoint is model.config.adjoint


def test_unknown_model_name_is_rejected_by_name():
    with pytest.raises(ValueError, match="'mnist-dence'"):
        build_model("mnist-dence")


def test_unknown_option_is_rejected_by_name():
    with pytest.raises(TypeError, match="'widht'"):
        build_model("mnist-dense", widht=64)
    with pytest.raises(TypeError, match="'width'"):  # a dense size is no MDEQ option
        build_model("cifar10-small", width=64)


@pytest.mark.parametrize("variant, option", [("vanilla", {"t1": 2.0}), ("skip", {"rhs": "f"}),
                                             ("node", {"jacobian_reg": pycdeq.layers.JacobianRegularization()}),
                                             ("node", {"on_nonconvergence": "raise"})])
def test_options_of_another_variant_are_rejected_not_ignored(variant, option):
    (name,) = option
    with pytest.raises(ValueError, match=name):
        build_model("mnist-dense", variant=variant, **option)


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="variant"):
        ModelConfig("mnist-dense", variant="skipv2")


def test_solver_must_match_continuous():
    with pytest.raises(ValueError, match="continuous=True"):
        build_model("mnist-dense", continuous=True, solver=pycdeq.Broyden())
    with pytest.raises(ValueError, match="continuous=False"):
        build_model("mnist-dense", continuous=False, solver=Tsit5())
    with pytest.raises(ValueError, match="node"):
        build_model("mnist-dense", variant="node", solver=pycdeq.Anderson())
    with pytest.raises(TypeError, match="adjoint"):
        build_model("mnist-dense", variant="node", adjoint=pycdeq.GMRES())
    with pytest.raises(TypeError, match="adjoint"):
        build_model("mnist-dense", adjoint="backprop")


def test_mdeq_input_shape_must_fit_the_scales():
    with pytest.raises(ValueError, match="divisible by 8"):
        ModelConfig("cifar10-large", input_shape=(3, 36, 36))
    with pytest.raises(ValueError, match=r"\(channels, height, width\)"):
        ModelConfig("cifar10-small", input_shape=(3072,))
    assert ModelConfig("cifar10-small", input_shape=(1, 8, 12)).scales == ((24, 8, 12), (24, 4, 6))


def test_size_fields_are_validated():
    with pytest.raises(ValueError, match="head_channels"):
        MDEQSizes(channels=(4, 8), expansion=2, dropout=0.0, weight_norm=False, head_channels=(2,),
                  final_channels=8)
    with pytest.raises(ValueError, match="dropout"):
        build_model("cifar10-small", dropout=1.0)


def test_classes_and_factory_build_the_same_model():
    for cls, name in [(MNISTConv, "mnist-conv"), (CIFAR10Small, "cifar10-small")]:
        a, b = cls(variant="skip"), build_model(name, variant="skip")
        assert type(a) is type(b) and a.config == b.config
        assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    with torch.device("meta"):
        assert type(build_model("cifar10-large")) is CIFAR10Large
    dense = MNISTDense(in_features=64, width=32, variant="skip_reg", continuous=False)
    assert dense.config == build_model("mnist-dense", input_shape=(64,), width=32, variant="skip_reg",
                                       continuous=False).config


def test_model_from_config_round_trips():
    model = build_model("mnist-conv", variant="skip", continuous=False, num_classes=3, channels=(4, 8))
    rebuilt = model_from_config(model.config)
    assert rebuilt.config == model.config
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    with pytest.raises(ValueError, match="cifar10-small"):
        CIFAR10Small.from_config(model.config)



def test_layer_options_reach_the_layer():
    jac = pycdeq.layers.JacobianRegularization(num_vectors=2)
    deq = build_model("mnist-dense", output="f_of_iterate", input_gradient="final_call",
                      on_nonconvergence="raise", jacobian_reg=jac).deq
    assert (deq.output, deq.input_gradient, deq.on_nonconvergence, deq.jacobian_reg) == \
        ("f_of_iterate", "final_call", "raise", jac)
    node = build_model("mnist-dense", variant="node", output="f_of_iterate", t1=2.0, rhs="f",
                       adjoint="backsolve").deq
    assert (node.output, node.t1, node.rhs, node.adjoint) == ("f_of_state", 2.0, "f", "backsolve")


def test_replace_keeps_the_solver_unless_asked():
    config = ModelConfig("mnist-dense")
    with pytest.raises(ValueError, match="continuous=False"):
        config.replace(continuous=False)
    assert config.replace(continuous=False, solver=None, adjoint=None).solver == \
        ModelConfig("mnist-dense", continuous=False).solver


_SMALL_INPUTS = {"mnist-dense": (64,), "mnist-conv": (1, 8, 8), "cifar10-small": (3, 8, 8),
                 "cifar10-large": (3, 16, 16)}


@pytest.mark.parametrize("name", list(_SMALL_INPUTS))
@pytest.mark.parametrize("variant", ["skip_reg", "node"])
def test_every_model_class_takes_build_models_keywords(name, variant):
    """``Class(**kw)`` builds what ``build_model(name, **kw)`` builds, for the keywords they share
    (MNISTDense once passed input_shape to make_config twice)."""
    from pycdeq.models.build import MODEL_CLASSES

    keywords = dict(variant=variant, continuous=False, num_classes=7, input_shape=_SMALL_INPUTS[name],
                    solver=None, adjoint=None)
    model = MODEL_CLASSES[name](**keywords)
    assert model.config == build_model(name, **keywords).config
    assert model.config.input_shape == _SMALL_INPUTS[name] and model.config.num_classes == 7


def test_mnist_dense_takes_input_shape_or_in_features_but_not_contradicting_ones():
    assert MNISTDense(input_shape=(64,), variant="skip_reg", num_classes=10).config.in_features == 64
    assert MNISTDense(in_features=64).config.input_shape == (64,)
    assert MNISTDense(input_shape=(1, 8, 8), in_features=64).config.in_features == 64
    assert MNISTDense().config.in_features == 784
    with pytest.raises(ValueError, match="in_features=100 contradicts"):
        MNISTDense(in_features=100, input_shape=(64,))


@pytest.mark.parametrize("cls, name", [(MNISTDense, "mnist-dense"), (MNISTConv, "mnist-conv")])
def test_a_model_takes_its_config_in_init(cls, name):
    config = make_config(name, variant="skip_reg", continuous=False, num_classes=3)
    model = cls(config)
    assert model.config is config and cls.from_config(config).config is config
    with pytest.raises(TypeError, match="either config or keyword options"):
        cls(config, variant="skip")
    with pytest.raises(ValueError, match="this model class builds"):
        cls(make_config("cifar10-small" if name == "mnist-conv" else "mnist-conv"))
