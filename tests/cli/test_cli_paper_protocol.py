"""``pycdeq run cifar10-small-paper`` and the ``protocol`` setting of an experiment."""

import json
import types

import pytest

from _cli_helpers import run_cli
from pycdeq import GMRES
from pycdeq.cli.experiments import ConfigError, load_toml, resolve
from pycdeq.cli.runner import ExperimentRunner
from pycdeq.models import build_model
from pycdeq.solvers.ode_adjoint import InterpolatingAdjoint


def test_paper_setup_is_the_small_mdeq_with_the_paper_protocol_and_pretraining():
    experiment = resolve("cifar10-small-paper")
    assert experiment.model == "cifar10-small" and experiment.protocol == "paper"
    assert experiment.dataset == "fashion-mnist-32"
    assert experiment.steps == 20_000 and experiment.pretrain_steps == 3_000 and experiment.pretrain_depth == 5
    assert experiment.batch_size == 128
    assert resolve("cifar10-small").protocol == "pycdeq"


@pytest.mark.parametrize("variant", ["vanilla", "skip", "skip_reg", "node"])
def test_paper_protocol_reaches_every_variant_model(variant, tmp_path):
    runner = ExperimentRunner(resolve("cifar10-small-paper"), tmp_path)
    data = types.SimpleNamespace(num_classes=10, input_shape=(3, 32, 32))
    config = build_model("cifar10-small", **runner._model_kwargs(variant, data)).config
    assert config.input_gradient == "final_call"
    if variant == "node":
        assert config.adjoint == InterpolatingAdjoint(seminorm=False) and config.rhs == "f"
        assert config.solver.rtol == config.solver.atol == 0.05 and config.solver.max_steps == 18
    else:
        assert config.output == "f_of_iterate" and config.solver.termination.scope == "batch"
        assert config.adjoint == GMRES(rtol=0.05, atol=0.05, max_iter=20, restart=20, stopping="batch")


def test_unknown_protocol_in_a_config_file_names_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('base = "cifar10-small"\nprotocol = "julia"\n')
    with pytest.raises(ConfigError, match="protocol"):
        load_toml(path)


def test_paper_protocol_run_end_to_end_with_pretraining(tmp_path):
    """The dense model under the paper protocol, every variant, two unrolled steps then two solved."""
    config = tmp_path / "paper.toml"
    config.write_text('base = "default"\nprotocol = "paper"\ndataset = "synthetic"\nsteps = 4\nepochs = 1\n'
                      'pretrain_steps = 2\nbatch_size = 16\nlimit_train = 64\nlimit_test = 32\nseeds = [0]\n')
    out = tmp_path / "out"
    done = run_cli("run", config, "--no-progress", "--out", out)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["experiment"]["protocol"] == "paper"
    assert [row["variant"] for row in results["summary"]] == ["vanilla", "skip", "skip_reg", "node"]
