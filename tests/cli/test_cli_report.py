"""The report: per-seed aggregation, the table's layout, atomic result files, the --julia path."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from pycdeq.cli import EXPERIMENTS, main
from pycdeq.cli.report import RunRecord, format_table, summarize, write_plots, write_results


def _epoch(epoch, accuracy, nfe, train_time, backward, predict=0.01, nonconverged=0.0):
    return {"epoch": epoch, "step": 10 * epoch, "lr": 1e-3, "train_loss": 1.0, "train_accuracy": 0.5,
            "train_nfe": nfe, "train_time": train_time, "backward_time": backward, "test_accuracy": accuracy,
            "test_loss": 1.0, "test_nfe": nfe, "test_nonconverged_fraction": nonconverged,
            "test_predict_time": predict, "test_samples": 100}


def _records():
    experiment = EXPERIMENTS["default"]
    return experiment, [
        RunRecord("vanilla", 0, 1000, [_epoch(1, 0.5, 30.0, 2.0, 0.1), _epoch(2, 0.90, 20.0, 4.0, 0.3)]),
        RunRecord("vanilla", 1, 1000, [_epoch(1, 0.6, 30.0, 2.0, 0.1), _epoch(2, 0.94, 24.0, 6.0, 0.1, 0.02, 0.5)]),
        RunRecord("skip_reg", 0, 1000, [_epoch(1, 0.7, 8.0, 1.0, 0.05)]),
        RunRecord("skip", 0, 1200, [_epoch(1, 0.7, 8.0, 1.0, 0.05)], status="interrupted"),
    ]


def test_summary_is_mean_and_sample_std_of_the_final_epochs_over_complete_runs():
    experiment, records = _records()
    rows = summarize(experiment, records)
    assert [r["variant"] for r in rows] == ["vanilla", "skip_reg"]  # the interrupted skip run is left out
    vanilla = rows[0]
    assert vanilla["seeds"] == 2 and vanilla["parameters"] == 1000
    assert vanilla["accuracy_mean"] == pytest.approx(92.0)
    assert vanilla["accuracy_std"] == pytest.approx(math.sqrt(2 * 2.0 ** 2))  # sample std of 90, 94
    assert vanilla["nfe_mean"] == pytest.approx(22.0) and vanilla["nfe_std"] == pytest.approx(math.sqrt(8.0))
    assert vanilla["train_time_mean"] == pytest.approx(5.0)
    assert vanilla["train_s_per_batch_mean"] == pytest.approx((4.0 / 20 + 6.0 / 20) / 2)
    assert vanilla["backward_s_per_batch_mean"] == pytest.approx((0.2 + 0.1) / 2)  # mean over each run's epochs
    assert vanilla["predict_s_per_batch_mean"] == pytest.approx(0.015)
    assert vanilla["nonconverged_percent_mean"] == pytest.approx(25.0)
    assert rows[1]["accuracy_std"] is None and rows[1]["model"] == "Skip Reg. DEQ"


def test_table_has_the_paper_layout_with_plus_minus_and_na_cells():
    experiment, records = _records()
    records.append(RunRecord("node", 0, 1000, [{**_epoch(1, 0.8, 12.0, 3.0, None), "test_nonconverged_fraction": None}],
                             backend="julia"))
    table = format_table(summarize(experiment, records))
    header, rule, vanilla, skip_reg, julia = table.splitlines()
    for column in ("Model", "Cont.", "Jac.", "Params", "Seeds", "Test acc (%)", "Test NFE", "Train (s)",
                   "Backward (s/batch)", "Predict (s/batch)", "Non-conv. (%)"):
        assert column in header
    assert "92.00 ± 2.83" in vanilla and "1,000" in vanilla
    assert "70.00" in skip_reg and "±" not in skip_reg
    assert julia.startswith("Neural ODE (julia)") and "n/a" in julia


def test_results_files_and_plots_are_written(tmp_path):
    experiment, records = _records()
    rows = write_results(tmp_path, experiment, records, interrupted=True)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["interrupted"] is True and payload["complete"] is False
    assert [r["status"] for r in payload["runs"]] == ["complete", "complete", "complete", "interrupted"]
    assert (tmp_path / "results.csv").read_text().splitlines()[0].startswith("model,variant,backend")
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 1 + 6
    for path in write_plots(tmp_path, records, rows):
        assert path.read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary files left


def test_julia_flag_without_julia_exits_1_with_the_backend_status(capsys, tmp_path):
    from pycdeq import julia

    if julia.available():
        pytest.skip("a Julia backend is available here")
    code = main(["run", "--julia", "--limit-train", "40", "--limit-test", "20", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    assert "--julia" in err and julia.status() in err


def test_julia_rows_train_and_evaluate_through_the_bridge(tmp_path):
    """The --julia path against the Julia backend's Python stand-in (no Julia needed)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "julia"))
    fake = pytest.importorskip("_julia_fake_bridge")
    from pycdeq.cli.julia_rows import julia_records
    from pycdeq.cli.runner import ExperimentRunner
    from pycdeq.data import load_dataset

    experiment = EXPERIMENTS["default"].replace(
        name="j", dataset="synthetic", variants=("vanilla", "skip_reg"), epochs=1, seeds=(0,),
        dataset_options={"shape": (1, 4, 4), "n_train": 16, "n_test": 8}, model_options={"width": 8})
    data = load_dataset("synthetic", shape=(1, 4, 4), n_train=16, n_test=8)
    runner = ExperimentRunner(experiment, tmp_path, progress=False)
    said = []
    torch.manual_seed(0)
    records = julia_records(experiment, data, 1, runner._model_kwargs, said.append, bridge=fake.FakeBridge())
    assert [(r.backend, r.variant, r.seed) for r in records] == [("julia", "vanilla", 0), ("julia", "skip_reg", 0)]
    for record in records:
        final = record.final
        assert 0.0 <= final["test_accuracy"] <= 1.0 and final["test_samples"] == 8 and final["train_time"] > 0
    rows = summarize(experiment, records)
    assert [r["model"] for r in rows] == ["Vanilla DEQ (julia)", "Skip Reg. DEQ (julia)"]
    assert rows[0]["backward_s_per_batch_mean"] is None
