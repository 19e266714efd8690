"""``protocol_options``: the reference's settings per architecture and variant, as model options."""

import pytest

from pycdeq import VCAB3, Broyden, Tsit5
from pycdeq.models import build_model
from pycdeq.models.paper_protocol import protocol_options


def test_pycdeq_protocol_changes_nothing():
    assert protocol_options("pycdeq", "cifar10-small", "vanilla") == {}


def test_paper_deq_runs_the_reference_integrator_tolerances_and_whole_batch_rules():
    options = protocol_options("paper", "cifar10-small", "skip_reg")
    solver = options["solver"]
    assert isinstance(solver, VCAB3) and (solver.rtol, solver.atol, solver.max_steps) == (1e-3, 1e-6, 18)
    assert solver.dt0 is None  # Hairer's selection, as OrdinaryDiffEq
    assert solver.stability_factor is None  # OrdinaryDiffEq caps no step at a stability limit
    term = solver.termination
    assert (term.mode, term.reltol, term.norm, term.scope, term.best) == ("rel", 0.05, "l2", "batch", False)
    assert options["adjoint"].stopping == "batch" and options["adjoint"].max_iter == 20
    assert options["output"] == "f_of_iterate" and options["input_gradient"] == "final_call"


def test_large_model_returns_the_best_iterate_as_rel_deq_best():
    assert protocol_options("paper", "cifar10-large", "vanilla")["solver"].termination.best


def test_mnist_models_use_tsit5_at_their_tolerance():
    options = protocol_options("paper", "mnist-dense", "node")
    assert isinstance(options["solver"], Tsit5) and options["solver"].rtol == 5e-3


def test_discrete_deq_gets_broyden_with_the_batch_rule():
    options = protocol_options("paper", "cifar10-small", "vanilla", continuous=False)
    assert isinstance(options["solver"], Broyden) and options["solver"].termination.scope == "batch"
    build_model("cifar10-small", continuous=False, **options)


@pytest.mark.parametrize("variant", ["vanilla", "skip", "skip_reg", "node"])
def test_every_variant_builds(variant):
    model = build_model("mnist-dense", variant=variant, **protocol_options("paper", "mnist-dense", variant))
    assert model.config.input_gradient == "final_call"


def test_unknown_protocol_and_architecture_are_refused_by_name():
    with pytest.raises(ValueError, match="protocol"):
        protocol_options("reference", "cifar10-small", "vanilla")
    with pytest.raises(ValueError, match="architecture"):
        protocol_options("paper", "cifar100", "vanilla")
