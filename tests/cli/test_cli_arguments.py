"""Argument handling of ``pycdeq`` in-process: every bad request exits 2 naming the problem."""

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

from pycdeq.cli import EXPERIMENTS, ConfigError, Experiment, main
from pycdeq.cli.main import build_parser, configure
from pycdeq.training import TrainConfig


def _exit_code_and_stderr(capsys, *argv):
    code = main(list(map(str, argv)))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, named", [
    (["run", "no-such-setup"], "no-such-setup"),
    (["run", "--variants", "vanilla,bogus"], "bogus"),
    (["run", "--variants", "skip,skip"], "repeat"),
    (["run", "--epochs", "0"], "epochs"),
    (["run", "--batch-size", "many"], "--batch-size"),
    (["run", "--dataset", "imagenet"], "--dataset"),
    (["run", "--seeds", "0"], "--seeds"),
    (["run", "--seeds", "2", "--seed-list", "1,2"], "not allowed with"),
    (["run", "--seed-list", "1,x"], "--seed-list"),
    (["run", "--lr", "-1"], "lr"),
    (["run", "--device", "tpu"], "device"),
    (["run", "--continuous", "--discrete"], "not allowed with"),
    (["run", "mnist-conv", "--jacobian-reg"], "mnist-dense"),
    (["run", "--jacobian-reg", "0"], "--jacobian-reg"),
    (["run", "--resume"], "--out"),
    (["run", "--threads", "0"], "--threads"),
    (["frobnicate"], "frobnicate"),
    ([], "COMMAND"),
])
def test_bad_arguments_exit_2_with_a_message_naming_the_problem(capsys, argv, named):
    code, err = _exit_code_and_stderr(capsys, *argv)
    assert code == 2
    assert "usage:" in err and "error:" in err and named in err


def test_bad_values_found_while_loading_the_data_exit_2(capsys, tmp_path):
    code, err = _exit_code_and_stderr(capsys, "run", "--limit-train", "100000", "--out", tmp_path / "o")
    assert code == 2 and "limit_train" in err
    code, err = _exit_code_and_stderr(capsys, "run", "--data-dir", tmp_path, "--out", tmp_path / "p")
    assert code == 2 and "data_dir" in err


def test_toml_config_with_an_unknown_key_exits_2_naming_the_key(capsys, tmp_path):
    config = tmp_path / "setup.toml"
    config.write_text('base = "mnist-dense"\nepochs = 2\nlearning_rate = 0.1\n')
    code, err = _exit_code_and_stderr(capsys, "run", config)
    assert code == 2 and "'learning_rate'" in err and "unknown key" in err


@pytest.mark.parametrize("text, named", [
    ("epochs = [1, 2\n", "not valid TOML"),
    ('base = "resnet"\n', "base"),
    ("epochs = -3\n", "epochs"),
    ('variants = "vanilla"\n', "variants"),
    ("[dataset_options]\nbogus = 1\n", "bogus"),
])
def test_bad_toml_configs_exit_2(capsys, tmp_path, text, named):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    # (dataset options are checked by the data set's loader: also a usage error)
    code, err = _exit_code_and_stderr(capsys, "run", config, "--out", tmp_path / "o")
    assert code == 2 and named in err


def test_toml_config_sets_fields_and_command_line_overrides_it(tmp_path):
    config = tmp_path / "mine.toml"
    config.write_text('base = "mnist-dense"\ndataset = "synthetic"\nvariants = ["vanilla", "node"]\nseeds = 3\n'
                      'epochs = 4\nlambda_skip = 0.5\n[dataset_options]\nshape = [1, 8, 8]\nn_train = 40\n'
                      '[model_options]\nwidth = 16\n')
    args = build_parser().parse_args(["run", str(config), "--epochs", "2", "--discrete"])
    experiment = configure(args)
    assert experiment.name == "mine" and experiment.model == "mnist-dense" and experiment.dataset == "synthetic"
    assert experiment.variants == ("vanilla", "node") and experiment.seeds == (0, 1, 2)
    assert experiment.epochs == 2 and experiment.continuous is False and experiment.lambda_skip == 0.5
    assert dict(experiment.dataset_options) == {"shape": (1, 8, 8), "n_train": 40}
    assert dict(experiment.model_options) == {"width": 16}


def test_named_setups_carry_the_paper_defaults():
    dense = EXPERIMENTS["mnist-dense"]
    assert (dense.epochs, dense.batch_size, dense.lr, dense.optimizer, dense.schedule) == (25, 32, 1e-3, "adam",
                                                                                           "constant")
    small = EXPERIMENTS["cifar10-small"]
    assert (small.steps, small.batch_size, small.pretrain_steps, small.lambda_skip) == (20_000, 128, 3_000, 0.01)
    assert (small.schedule, small.lr, small.lr_min) == ("cosine", 1e-3, 1e-6)
    assert EXPERIMENTS["cifar10-large"].steps == 90_000
    default = EXPERIMENTS["default"]
    assert (default.model, default.dataset, default.variants, default.continuous, default.seeds) == (
        "mnist-dense", "digits", ("vanilla", "skip", "skip_reg", "node"), True, (0, 1))


def test_one_length_option_replaces_the_setups_length():
    parse = build_parser().parse_args
    assert (configure(parse(["run", "cifar10-small", "--epochs", "2"])).steps is None)
    steps_only = configure(parse(["run", "mnist-dense", "--steps", "10"]))
    assert (steps_only.steps, steps_only.epochs) == (10, None)
    both = configure(parse(["run", "mnist-dense", "--steps", "10", "--epochs", "3"]))
    assert (both.steps, both.epochs) == (10, 3)
    assert configure(parse(["run", "--seed-list", "5,7"])).seeds == (5, 7)
    assert configure(parse(["run", "--jacobian-reg"])).lambda_jac == 1.0


def test_resume_with_different_settings_exits_2_naming_them(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stored = EXPERIMENTS["default"].to_dict()
    (out / "experiment.json").write_text(json.dumps(stored))
    code, err = _exit_code_and_stderr(capsys, "run", "--epochs", "7", "--out", out, "--resume")
    assert code == 2 and "epochs: 3 -> 7" in err


def test_existing_output_folder_without_resume_exits_2(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "experiment.json").write_text("{}")
    code, err = _exit_code_and_stderr(capsys, "run", "--out", out)
    assert code == 2 and "--resume" in err


def test_list_names_every_setup(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    for name in EXPERIMENTS:
        assert name in printed


# --- the settings: a TrainConfig nested in the Experiment, flat in files -----------------------
def test_experiment_nests_the_training_options_and_reads_them_through():
    dense = EXPERIMENTS["mnist-dense"]
    assert isinstance(dense.train, TrainConfig)
    assert (dense.train.lr, dense.train.lambda_skip, dense.train.eval_batch_size) == (1e-3, 5.0, None)
    assert dense.lr is dense.train.lr and dense.steps is None
    changed = dense.replace(lr=0.1, momentum=0.5, seeds=2)
    assert changed.train == dataclasses.replace(dense.train, lr=0.1, momentum=0.5) and changed.seeds == (0, 1)
    assert changed.train_config(seed=1, epochs=3) == dataclasses.replace(changed.train, seed=1, epochs=3)
    with pytest.raises(AttributeError, match="bogus"):
        dense.bogus


def test_flat_settings_round_trip_and_name_their_source():
    for experiment in EXPERIMENTS.values():
        assert Experiment.from_dict(json.loads(json.dumps(experiment.to_dict()))) == experiment
    stored = EXPERIMENTS["default"].to_dict()
    with pytest.raises(ConfigError, match=r"out/experiment.json: unknown key\(s\) 'learning_rate'"):
        Experiment.from_dict({**stored, "learning_rate": 0.1}, source="out/experiment.json")
    with pytest.raises(ConfigError, match="out/experiment.json: .*optimizer"):
        Experiment.from_dict({**stored, "optimizer": "rmsprop"}, source="out/experiment.json")
    with pytest.raises(TypeError, match="'learning_rate'"):
        EXPERIMENTS["default"].replace(learning_rate=0.1)


def test_the_seed_of_an_experiment_comes_from_seeds_only(tmp_path, capsys):
    with pytest.raises(ValueError, match="seeds"):
        Experiment(name="x", train=TrainConfig(seed=3))
    config = tmp_path / "seeded.toml"
    config.write_text("seed = 3\n")
    code, err = _exit_code_and_stderr(capsys, "run", config)
    assert code == 2 and str(config) in err and "'seed'" in err


def test_toml_sets_any_training_option(tmp_path):
    config = tmp_path / "sgd.toml"
    config.write_text('optimizer = "sgd"\nmomentum = 0.5\nschedule = "step"\nstep_every = 2\nstep_gamma = 0.5\n')
    experiment = configure(build_parser().parse_args(["run", str(config)]))
    assert (experiment.train.optimizer, experiment.train.momentum, experiment.train.step_every) == ("sgd", 0.5, 2)


def test_declared_python_versions_have_tomllib():
    """The command line reads TOML with the standard library's tomllib (Python 3.11+), and the
    project is tested on 3.11 only: the package must not claim 3.10."""
    specifiers = pytest.importorskip("packaging.specifiers")
    root = Path(__file__).parents[2]
    with open(root / "pyproject.toml", "rb") as handle:
        requires = tomllib.load(handle)["project"]["requires-python"]
    allowed = specifiers.SpecifierSet(requires)
    assert "3.10.12" not in allowed and "3.11.0" in allowed
