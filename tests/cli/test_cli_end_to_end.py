"""``pycdeq run`` end to end in a subprocess: exit codes, files, table, resume after Ctrl-C."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _cli_helpers import TINY, run_cli

COLUMNS = ("Model", "Params", "Test acc (%)", "Test NFE", "Train (s)", "Backward (s/batch)",
           "Predict (s/batch)", "Non-conv. (%)")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_run_on_synthetic_writes_table_results_plots_and_checkpoints(tmp_path):
    out = tmp_path / "out"
    done = run_cli("run", "mnist-dense", *TINY, "--epochs", "1", "--out", out)
    assert done.returncode == 0, done.stderr
    for column in COLUMNS:
        assert column in done.stdout
    for label in ("Vanilla DEQ", "Skip DEQ", "Skip Reg. DEQ", "Neural ODE"):
        assert label in done.stdout

    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and not results["interrupted"] and results["error"] is None
    assert [row["variant"] for row in results["summary"]] == ["vanilla", "skip", "skip_reg", "node"]
    # Parameter counts of the contract for 784 inputs.
    assert [row["parameters"] for row in results["summary"]] == [134_538, 151_050, 134_538, 134_538]
    for row in results["summary"]:
        assert 0.0 <= row["accuracy_mean"] <= 100.0 and row["nfe_mean"] > 0 and row["seeds"] == 1
        assert row["accuracy_std"] is None  # one seed: no spread to report
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["model"] for r in rows] == ["Vanilla DEQ", "Skip DEQ", "Skip Reg. DEQ", "Neural ODE"]
    assert {"accuracy_mean", "nfe_mean", "train_time_mean", "backward_s_per_batch_mean",
            "predict_s_per_batch_mean", "nonconverged_percent_mean"} <= set(rows[0])
    for name in ("accuracy.png", "nfe.png", "train_time.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    for variant in ("vanilla", "skip", "skip_reg", "node"):
        assert (out / "checkpoints" / f"{variant}-seed0.pt").is_file()
        assert (out / "runs" / f"{variant}-seed0.json").is_file()


def test_default_run_smoke_with_reduced_budget(tmp_path):
    """The bare ``pycdeq run`` job (mnist-dense on digits, four variants), one short epoch."""
    out = tmp_path / "default"
    done = run_cli("run", "--epochs", "1", "--seeds", "1", "--limit-train", "96", "--limit-test", "50",
                   "--no-progress", "--out", out)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["experiment"]["name"] == "default"
    assert results["experiment"]["model"] == "mnist-dense" and results["experiment"]["dataset"] == "digits"
    assert results["experiment"]["continuous"] is True
    assert [row["model"] for row in results["summary"]] == ["Vanilla DEQ", "Skip DEQ", "Skip Reg. DEQ", "Neural ODE"]
    # digits are 8x8: the dense model's stem adapts (64 inputs instead of 784).
    assert results["summary"][0]["parameters"] == 134_538 - (784 - 64) * 128
    assert "on digits" in done.stdout


def test_failing_run_exits_1_with_the_error_and_a_traceback_only_with_debug(tmp_path, capsys):
    from pycdeq.cli import main

    argv = ["run", "mnist-dense", "--dataset", "mnist", "--data-dir", str(tmp_path / "empty"), "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "pycdeq: error:" in err and "DatasetNotFoundError" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()  # nothing ran, nothing written
    assert main(argv + ["--out", str(tmp_path / "b"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_bad_arguments_exit_2_from_a_subprocess(tmp_path):
    done = run_cli("run", "mnist-dense", "--variants", "vanilla,bogus", "--out", tmp_path / "out")
    assert done.returncode == 2
    assert "usage:" in done.stderr and "bogus" in done.stderr


def _final_numbers(out):
    runs = json.loads((out / "results.json").read_text())["runs"]
    return {r["variant"]: [(h["test_accuracy"], h["train_loss"], h["test_loss"]) for h in r["history"]]
            for r in runs}


TINY_TOML = """base = "mnist-dense"
dataset = "synthetic"
variants = ["vanilla", "skip_reg"]
epochs = 4
batch_size = 16
seeds = 1
[dataset_options]
shape = [1, 8, 8]
n_train = 96
n_test = 32
[model_options]
width = 16
"""


def test_resume_after_ctrl_c_gives_the_uninterrupted_numbers(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    args = ["run", str(config), "--no-progress"]
    reference = run_cli(*args, "--out", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "interrupted"
    ready = tmp_path / "first-checkpoint-written"
    harness = Path(__file__).with_name("_pause_after_first_checkpoint.py")
    process = subprocess.Popen([sys.executable, str(harness), str(ready), *args, "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240  # a bound on a hang, not a timing assumption
    while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not ready.exists():
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"the run never reached its first checkpoint (exit {process.returncode}): {stderr}")
    process.send_signal(signal.SIGINT)  # the run is paused after that checkpoint: it cannot have finished
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    partial = json.loads((out / "results.json").read_text())
    assert partial["interrupted"] is True and partial["complete"] is False
    assert "Traceback" not in stderr

    resumed = run_cli("run", "--out", out, "--resume", "--no-progress")  # the settings stored in --out
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads((out / "results.json").read_text())
    assert final["complete"] and not final["interrupted"]
    assert _final_numbers(out) == _final_numbers(tmp_path / "reference")


def test_help_lists_every_option_and_exits_0(capsys):
    from pycdeq.cli import main

    assert main(["run", "--help"]) == 0
    printed = capsys.readouterr().out
    for option in ("--variants", "--continuous", "--discrete", "--dataset", "--data-dir", "--epochs", "--steps",
                   "--batch-size", "--seeds", "--seed-list", "--device", "--out", "--jacobian-reg", "--resume",
                   "--julia", "--limit-train", "--limit-test", "--no-progress"):
        assert option in printed
