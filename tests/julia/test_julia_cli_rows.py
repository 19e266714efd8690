"""``pycdeq run --julia``: rows shaped like the torch runs', and no juliacall on the way."""

import dataclasses
import importlib.abc
import sys

import pytest
import torch

from pycdeq.cli import EXPERIMENTS, main
from pycdeq.julia import JuliaNotAvailableError
from pycdeq.training.metrics import EpochMetrics, EvalMetrics


def _torch_row_keys():
    """The keys of a torch run's history row, from the metrics classes themselves."""
    zeros = {f.name: 0 for f in dataclasses.fields(EpochMetrics) if f.name != "test"}
    test = EvalMetrics(**{f.name: 0 for f in dataclasses.fields(EvalMetrics)})
    return set(EpochMetrics(**zeros, test=test).flat())


def test_julia_rows_have_the_keys_of_the_torch_rows(tmp_path, fake_bridge):
    from pycdeq.cli.julia_rows import julia_records
    from pycdeq.cli.runner import ExperimentRunner
    from pycdeq.data import load_dataset

    experiment = EXPERIMENTS["default"].replace(
        name="j", dataset="synthetic", variants=("skip_reg",), epochs=1, seeds=(0,),
        dataset_options={"shape": (1, 4, 4), "n_train": 16, "n_test": 8}, model_options={"width": 8})
    data = load_dataset("synthetic", shape=(1, 4, 4), n_train=16, n_test=8)
    runner = ExperimentRunner(experiment, tmp_path, progress=False)
    torch.manual_seed(0)
    (record,) = julia_records(experiment, data, 1, runner._model_kwargs, lambda _: None, bridge=fake_bridge)
    final = record.final
    assert set(final) == _torch_row_keys()
    assert final["backward_time"] is None and final["test_nonconverged_fraction"] is None


def test_julia_evaluation_reports_the_torch_metrics():
    from pycdeq.cli.julia_rows import _evaluate
    from pycdeq.julia import JuliaForward

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    y = torch.tensor([0, 0, 0])

    class Stub:
        def forward(self, x):
            rows = logits[x[:, 0].long()]
            return JuliaForward(logits=rows, z_star=rows, z0=rows, nfe=7, residual=rows[:, 0])

    metrics = _evaluate(Stub(), torch.arange(3.0).reshape(3, 1), y, batch_size=2)
    assert metrics.accuracy == pytest.approx(2 / 3) and metrics.samples == 3 and metrics.nfe == 7
    assert metrics.loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)))


def test_unavailable_backend_raises_the_backends_own_error(monkeypatch):
    from pycdeq import julia
    from pycdeq.cli import julia_rows

    monkeypatch.setattr(julia, "available", lambda: False)
    monkeypatch.setattr(julia, "status", lambda: "no Julia here")
    with pytest.raises(JuliaNotAvailableError, match="no Julia here"):
        julia_rows.check_available()
    assert not hasattr(julia_rows, "JuliaUnavailable")  # one error class, not a second


class _RefuseJuliacall(importlib.abc.MetaPathFinder):
    def __init__(self):
        self.asked = []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("juliacall", "juliapkg"):
            self.asked.append(name)
            raise ImportError(f"{name} must not be imported by pycdeq run")
        return None


def test_pycdeq_run_julia_never_imports_juliacall(monkeypatch, capsys, tmp_path):
    """Checked by refusing the import, so the test means something where juliacall exists."""
    from pycdeq import julia

    monkeypatch.setattr(julia, "available", lambda: False)
    monkeypatch.setattr(julia, "status", lambda: "no Julia here")
    finder = _RefuseJuliacall()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    for name in [m for m in sys.modules if m.split(".")[0] in ("juliacall", "juliapkg")]:
        monkeypatch.delitem(sys.modules, name)
    code = main(["run", "--julia", "--limit-train", "40", "--limit-test", "20", "--no-progress",
                 "--out", str(tmp_path / "o")])
    assert code == 1 and "--julia: no Julia here" in capsys.readouterr().err
    assert finder.asked == []
