"""The output folder: checked before anything is written, owned by one run, never made worse.

In-process ``main()`` runs of a tiny experiment (8x8 synthetic images, width 8, one epoch).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil

import pytest
import torch

from pycdeq.cli import main
from pycdeq.cli import runner as runner_module
from pycdeq.training import FolderLock
from pycdeq.training import checkpoint as checkpoint_module

TINY_TOML = """base = "mnist-dense"
dataset = "synthetic"
variants = ["vanilla", "skip_reg"]
epochs = 1
batch_size = 16
seeds = 1
[dataset_options]
shape = [1, 8, 8]
n_train = 32
n_test = 16
[model_options]
width = 8
"""


def _run(capsys, *argv):
    code = main(["run", *map(str, argv), "--no-progress"])
    return code, capsys.readouterr().err


@pytest.fixture
def tiny(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    return config


@pytest.fixture
def finished(tmp_path, tiny, capsys):
    """An output folder holding a complete tiny experiment."""
    out = tmp_path / "out"
    code, err = _run(capsys, tiny, "--out", out)
    assert code == 0, err
    return out


# --- arguments checked before anything is written --------------------------------------------
@pytest.mark.parametrize("device", ["cuda", "cuda:99", "cuda:x"])
def test_a_device_this_machine_lacks_exits_2_and_writes_nothing(tmp_path, capsys, device):
    if device != "cuda:x" and torch.cuda.is_available() and (device == "cuda" or torch.cuda.device_count() > 99):
        pytest.skip("this machine has that device")
    out = tmp_path / "out"
    code, err = _run(capsys, "--device", device, "--limit-train", "40", "--limit-test", "20", "--out", out)
    assert code == 2 and repr(device) in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_toml_device_this_machine_lacks_exits_2_and_writes_nothing(tmp_path, capsys):
    config = tmp_path / "on_gpu.toml"
    config.write_text(TINY_TOML.replace("seeds = 1", 'seeds = 1\ndevice = "cuda"'))
    out = tmp_path / "out"
    code, err = _run(capsys, config, "--out", out)
    assert code == 2 and "CUDA is not available" in err
    assert not out.exists()


@pytest.mark.parametrize("experiment", [[], ["default"]])
@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_resume_without_an_experiment_in_out_exits_2(tmp_path, capsys, experiment, folder):
    out = tmp_path / "out"
    if folder == "empty":
        out.mkdir()
    code, err = _run(capsys, *experiment, "--out", out, "--resume")
    assert code == 2 and "holds no experiment to continue" in err
    assert not (out / "results.json").exists() and not (out / "experiment.json").exists()


def test_unknown_key_in_the_stored_settings_names_that_file(finished, capsys):
    stored = finished / "experiment.json"
    stored.write_text(json.dumps({**json.loads(stored.read_text()), "learning_rate": 0.1}))
    code, err = _run(capsys, "--out", finished, "--resume")
    assert code == 2 and str(stored) in err and "'learning_rate'" in err


# --- one run per folder --------------------------------------------------------------------------
def test_a_second_run_on_a_locked_folder_exits_2_naming_the_holder(tmp_path, tiny, capsys):
    out = tmp_path / "out"
    with FolderLock(out):  # as another pycdeq run would hold it
        code, err = _run(capsys, tiny, "--out", out)
        assert code == 2
        assert "in use by another pycdeq run" in err and f"pid {os.getpid()}" in err
        assert sorted(os.listdir(out)) == [".pycdeq.lock"]  # nothing of the refused run
    code, err = _run(capsys, tiny, "--out", out)  # the lock is released with its holder
    assert code == 0, err


def test_the_lock_is_released_after_a_run(finished, capsys):
    with FolderLock(finished):
        pass


# --- resume checks the folder's files ----------------------------------------------------------
def test_swapped_checkpoint_of_another_variant_is_refused_naming_it(finished, capsys):
    checkpoints = finished / "checkpoints"
    shutil.copy(checkpoints / "vanilla-seed0.pt", checkpoints / "skip_reg-seed0.pt")
    (finished / "runs" / "skip_reg-seed0.json").unlink()
    (finished / "results.json").unlink()
    code, err = _run(capsys, "--out", finished, "--resume")
    assert code == 1
    assert str(checkpoints / "skip_reg-seed0.pt") in err and "model.config.variant: 'vanilla' -> 'skip_reg'" in err
    assert not (finished / "results.json").exists()  # no results claiming a complete experiment


def test_swapped_run_record_is_refused_naming_it(finished, capsys):
    runs = finished / "runs"
    shutil.copy(runs / "vanilla-seed0.json", runs / "skip_reg-seed0.json")
    code, err = _run(capsys, "--out", finished, "--resume")
    assert code == 1 and str(runs / "skip_reg-seed0.json") in err and "belongs to another run" in err


@pytest.mark.parametrize("damage", ["truncate", "not_a_record"])
def test_damaged_run_record_on_resume_exits_1_naming_it_and_keeps_results(finished, capsys, damage):
    record = finished / "runs" / "vanilla-seed0.json"
    text = record.read_text()
    record.write_text(text[: len(text) // 2] if damage == "truncate" else '{"variant": "vanilla"}')
    results = (finished / "results.json").read_bytes()
    code, err = _run(capsys, "--out", finished, "--resume")
    assert code == 1 and str(record) in err and "damaged" in err
    assert (finished / "results.json").read_bytes() == results


def test_hostile_checkpoint_on_resume_is_refused_without_running_it(finished, capsys, tmp_path):
    class WritesAMarker:
        def __reduce__(self):
            return open, (str(tmp_path / "marker"), "w")

    payload = io.BytesIO()
    torch.save({"identity": None, "model": WritesAMarker()}, payload)
    payload = payload.getvalue()
    torch.save({"format": checkpoint_module.FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": payload}, finished / "checkpoints" / "vanilla-seed0.pt")
    (finished / "runs" / "vanilla-seed0.json").unlink()
    code, err = _run(capsys, "--out", finished, "--resume")
    assert code == 1 and "vanilla-seed0.pt" in err and "objects other than tensors" in err
    assert not (tmp_path / "marker").exists()


def test_a_failed_attempt_does_not_replace_better_results(finished, capsys, monkeypatch):
    (finished / "runs" / "skip_reg-seed0.json").unlink()  # so that the resume trains it again
    (finished / "checkpoints" / "skip_reg-seed0.pt").unlink()
    results = (finished / "results.json").read_bytes()

    def fail(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(runner_module.Trainer, "fit", fail)
    code, err = _run(capsys, "--out", finished, "--resume")
    assert code == 1 and "simulated failure" in err
    assert (finished / "results.json").read_bytes() == results


def test_run_failing_during_training_exits_1_and_records_the_error(tmp_path, tiny, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(runner_module.Trainer, "fit", fail)
    out = tmp_path / "out"
    code, err = _run(capsys, tiny, "--out", out)
    assert code == 1 and "RuntimeError: simulated failure" in err
    failed = json.loads((out / "results.json").read_text())
    assert failed["error"] == "RuntimeError: simulated failure" and not failed["complete"]
    assert [(r["variant"], r["status"]) for r in failed["runs"]] == [("vanilla", "failed")]
