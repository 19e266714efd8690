"""Data-parallel training (torch.distributed, DDP, torchrun): real 2-process gloo runs on CPU.

Three ``torchrun`` launches of ``distributed_worker.py`` (a reference run, a run whose rank 1
is killed, its resume) and one of ``pycdeq run``; each is bounded by a timeout, so a hang
fails the test instead of the suite. A launch that several tests share runs once per session,
also under pytest-xdist (a file lock). The checks without processes come first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock  # a dependency of torch
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from pycdeq.cli import main
from pycdeq.models import build_model
from pycdeq.training import FolderLock, Trainer
from pycdeq.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pycdeq.training.distributed import (DistributedContext, init_from_environment, needs_unused_parameter_search,
                                         rank_seed, shard_indices, sync_batch_norm_targets, wrap_model)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
import distributed_worker as worker  # noqa: E402  (the settings the processes ran with)

LAUNCH_TIMEOUT = 240  # seconds per torchrun launch; a hang must fail, not stall the suite


def _torchrun(*args: str, cwd: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON_JULIAPKG_OFFLINE="yes",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={worker.WORLD}",
               *args]
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as launcher:
        try:
            stdout, stderr = launcher.communicate(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            # torchrun stops its workers (each in its own session) when it gets SIGTERM.
            launcher.send_signal(signal.SIGTERM)
            try:
                launcher.communicate(timeout=60)
            finally:
                launcher.kill()
            pytest.fail(f"torchrun {' '.join(args)} hung: no exit within {LAUNCH_TIMEOUT} s")
    return {"returncode": launcher.returncode, "stdout": stdout, "stderr": stderr}


def _once(tmp_path_factory, name: str, launch) -> Path:
    """``launch(folder)`` once per test session (xdist workers share it); its folder."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    folder = root / f"distributed-{name}"
    with FileLock(f"{folder}.lock"):
        if not (folder / "launch.json").is_file():
            folder.mkdir(exist_ok=True)
            (folder / "launch.json").write_text(json.dumps(launch(folder)))
    return folder


def _worker(mode: str, out: Path) -> dict:
    return _torchrun(str(HERE / "distributed_worker.py"), mode, str(out), cwd=out)


# --- without processes --------------------------------------------------------------------------

@pytest.mark.parametrize("world_size, samples", [(2, 16), (3, 16), (4, 5), (5, 3)])
def test_shards_split_an_order_exactly_as_distributed_sampler(world_size, samples):
    seed, epoch = 7, 2
    order = torch.randperm(samples, generator=torch.Generator().manual_seed(seed + epoch))
    for rank in range(world_size):
        ctx = DistributedContext(rank=rank, world_size=world_size, backend="gloo")
        sampler = DistributedSampler(range(samples), num_replicas=world_size, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        assert shard_indices(order, ctx).tolist() == list(sampler)


def test_rank_k_batch_is_part_k_of_the_single_process_global_batch():
    order, per_rank = torch.randperm(16), 4
    parts = [shard_indices(order, DistributedContext(rank=r, world_size=2, backend="gloo")) for r in range(2)]
    for k in range(2):
        union = torch.cat([part[k * per_rank:(k + 1) * per_rank] for part in parts])
        assert sorted(union.tolist()) == sorted(order[k * 8:(k + 1) * 8].tolist())


def test_one_process_keeps_its_order_and_seed():
    order = torch.randperm(10)
    assert shard_indices(order, DistributedContext()) is order
    assert rank_seed(123, 0) == 123


def test_rank_seeds_differ_across_ranks_and_neighbouring_run_seeds():
    seeds = {rank_seed(seed, rank) for seed in range(4) for rank in range(4)}
    assert len(seeds) == 16


@pytest.mark.parametrize("changes, error, match", [
    (dict(rank=2, world_size=2, backend="gloo"), ValueError, "rank must be < world_size"),
    (dict(world_size=2), ValueError, "backend"),
    (dict(backend="mpi"), ValueError, "backend"),
    (dict(rank=-1), ValueError, "rank"),
    (dict(device="cpu"), TypeError, "device"),
])
def test_context_rejects_inconsistent_fields(changes, error, match):
    with pytest.raises(error, match=match):
        DistributedContext(**changes)


def test_without_torchrun_environment_the_context_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_from_environment("cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.device) == (0, 1, None, torch.device("cpu"))
    model = nn.Linear(2, 2)
    assert wrap_model(model, ctx) is model


def test_incomplete_torchrun_environment_is_an_error_naming_the_missing_variable(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_from_environment("cpu")


def test_sync_batch_norm_targets_are_the_batch_norms_outside_f():
    model = build_model("mnist-conv", variant="skip", num_classes=3, input_shape=(1, 8, 8))
    targets = sync_batch_norm_targets(model)
    assert targets and all(not name.startswith("deq.f.") for name in targets)
    assert any(name.startswith("stem.") for name in targets) and any(name.startswith("head.") for name in targets)
    inside_f = [n for n, m in model.deq.f.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert inside_f  # the conv models' f does use BatchNorm: it stays per process


def test_sync_batch_norm_inside_f_is_refused_because_solves_would_wait_on_each_other():
    model = build_model("mnist-conv", variant="vanilla", num_classes=3, input_shape=(1, 8, 8))
    model.deq.f = nn.SyncBatchNorm.convert_sync_batchnorm(model.deq.f)
    with pytest.raises(ValueError, match="deadlock"):
        sync_batch_norm_targets(model)


@pytest.mark.parametrize("variant, options, needed", [
    ("vanilla", {}, False), ("skip", {}, False), ("skip_reg", {"input_gradient": "final_call"}, False),
    ("vanilla", {"input_gradient": "final_call", "output": "f_of_iterate"}, False),
    ("vanilla", {"input_gradient": "final_call"}, True), ("node", {}, False),
])
def test_unused_parameter_search_only_where_a_parameter_can_miss_its_gradient(variant, options, needed):
    model = build_model("mnist-dense", variant=variant, num_classes=3, input_shape=(4,), width=4, **options)
    assert needs_unused_parameter_search(model) is needed


def test_trainer_rejects_a_rank_that_contradicts_its_context():
    ctx = DistributedContext(rank=1, world_size=2, backend="gloo")
    with pytest.raises(ValueError, match="rank=2"):
        Trainer(worker.model("vanilla"), worker.EQUIVALENCE, rank=2, distributed=ctx)


def test_resuming_with_another_number_of_processes_is_refused(tmp_path):
    trainer = Trainer(worker.model("vanilla"), worker.EQUIVALENCE, checkpoint_path=tmp_path / "c.pt")
    trainer.fit(worker.TRAIN)
    state = load_checkpoint(tmp_path / "c.pt")
    # The number of processes is part of the run's identity; one process saves one RNG state.
    assert state["identity"]["world_size"] == 1 and isinstance(state["rng"], dict)
    save_checkpoint(tmp_path / "c.pt", {**state, "identity": {**state["identity"], "world_size": 2}})
    with pytest.raises(CheckpointError, match="world_size: 2 -> 1"):
        Trainer(worker.model("vanilla"), worker.EQUIVALENCE, checkpoint_path=tmp_path / "c.pt").fit(
            worker.TRAIN, resume=True)


# --- two processes ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = _once(tmp_path_factory, "reference", lambda folder: _worker("reference", folder))
    done = json.loads((out / "launch.json").read_text())
    assert done["returncode"] == 0, done["stderr"][-4000:]
    return torch.load(out / "reference.pt", weights_only=False)


@pytest.mark.parametrize("case", list(worker.CASES))
def test_ddp_gradient_is_the_one_process_gradient_of_the_global_batch(reference, case):
    """Every variant, pretraining and the implicit backward: the averaged DDP gradient equals
    the gradient of the whole batch in one process, up to the order of the float64 sums."""
    result = reference["cases"][case]
    # A component is a sum of 8 per-sample terms, added 4 + 4 then halved here and 8 at once
    # there: the two differ by at most 2 * 7 roundings of partial sums bounded by 8 * scale.
    bound = 2 * 7 * torch.finfo(torch.float64).eps * 8 * result["grad_scale"]
    assert result["grad_difference"] <= bound


@pytest.mark.parametrize("case", list(worker.CASES))
def test_every_parameter_is_all_reduced_exactly_once_per_backward(reference, case):
    """The implicit backward's autograd.grad calls trigger no extra DDP hook or all-reduce."""
    result = reference["cases"][case]
    assert result["reduced_elements"] == result["parameters"]
    assert result["find_unused_parameters"] is (case == "vanilla final_call")


def test_ranks_solve_with_different_iteration_counts_without_waiting_for_each_other(reference):
    assert any(len(set(result["nfe"])) > 1 for result in reference["cases"].values())


def test_parameters_are_identical_across_ranks_after_every_step(reference):
    spread = reference["equivalence"]["spread"]
    steps = worker.EQUIVALENCE.epochs * len(worker.TRAIN[0]) // (worker.WORLD * worker.PER_RANK_BATCH)
    assert spread == [0.0] * steps


def test_two_processes_train_as_one_process_with_the_global_batch(reference):
    """Same seed and data, batch 2 x 4 against 8: the same model to float64 rounding."""
    single = Trainer(worker.model("skip"), dataclasses.replace(worker.EQUIVALENCE,
                                                               batch_size=worker.WORLD * worker.PER_RANK_BATCH))
    result = single.fit(worker.TRAIN, worker.TEST)
    distributed = reference["equivalence"]
    difference = float((worker.flat_parameters(single.model) - distributed["parameters"]).abs().max())
    # Per step the gradients differ by rounding (bound of the test above, with the largest
    # gradient scale of the checks, ~3); SGD with momentum 0.9 turns a gradient error into a
    # parameter error of at most lr / (1 - momentum) per step, over 6 steps, amplified by the
    # training dynamics by at most (1 + lr * L)^6 < 2^6 for a loss curvature L < 20. The
    # solves stop at 1e-11 relative, should rounding flip a stopping decision.
    eps, steps, gain = torch.finfo(torch.float64).eps, 6, worker.EQUIVALENCE.lr / (1 - worker.EQUIVALENCE.momentum)
    bound = steps * gain * (2 * 7 * 8 * 3 * eps + 1e-11) * 2 ** 6
    assert difference <= bound
    assert distributed["world_size"] == 2 and result.world_size == 1
    ours, theirs = result.history[-1].flat(), distributed["history"][-1]
    # Evaluation shares the single-process batches out to the ranks: the same global figures.
    for key in ("test_accuracy", "test_nfe", "test_nonconverged_fraction", "test_samples", "train_accuracy"):
        assert theirs[key] == ours[key], key
    # The loss is computed in float32 (logits.float()), so summed per rank it differs there.
    assert theirs["train_loss"] == pytest.approx(ours["train_loss"], rel=8 * torch.finfo(torch.float32).eps)
    assert theirs["test_loss"] == pytest.approx(ours["test_loss"], rel=8 * torch.finfo(torch.float32).eps)


@pytest.fixture(scope="module")
def died(tmp_path_factory):
    out = _once(tmp_path_factory, "died", lambda folder: _worker("die", folder))
    return out, json.loads((out / "launch.json").read_text())


def test_a_rank_that_dies_fails_the_run_cleanly(died):
    out, done = died
    assert done["returncode"] != 0
    # torchrun names the dead rank and its signal.
    assert re.search(r"rank\s*:\s*1\b", done["stderr"]) and "SIGKILL" in done["stderr"]
    assert (out / "died.pt").is_file()  # the last complete epoch's checkpoint survived


def test_resume_after_the_failure_gives_the_uninterrupted_parameters(died, reference, tmp_path):
    """Every rank restores its own random stream (the Jacobian probes) and the batch order."""
    shutil.copy(died[0] / "died.pt", tmp_path / "died.pt")  # resuming rewrites it
    done = _worker("resume", tmp_path)
    assert done["returncode"] == 0, done["stderr"][-4000:]
    assert torch.equal(torch.load(tmp_path / "resumed.pt"), reference["resumable"])


@pytest.fixture(scope="module")
def command_line(tmp_path_factory):
    def launch(folder: Path) -> dict:
        return _torchrun("-m", "pycdeq", "run", "--variants", "skip", "--seed-list", "0", "--steps", "2",
                         "--limit-train", "64", "--limit-test", "32", "--no-progress", "--out", str(folder / "out"),
                         cwd=folder)

    folder = _once(tmp_path_factory, "command-line", launch)
    return folder / "out", json.loads((folder / "launch.json").read_text())


def test_torchrun_runs_the_command_line_and_only_rank_0_writes(command_line):
    out, done = command_line
    assert done["returncode"] == 0, done["stderr"][-4000:]
    assert done["stdout"].count("Test acc (%)") == 1 and done["stdout"].count("output in") == 1
    assert "2 processes, batch 32 each" in done["stdout"]
    results = json.loads((out / "results.json").read_text())
    run = results["runs"][0]
    assert run["world_size"] == 2 and run["history"][-1]["step"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["skip-seed0.pt"]  # no temporary files left


def test_torchrun_resume_is_decided_by_rank_0_and_needs_as_many_processes(command_line, tmp_path, capsys):
    """Rank 0 alone holds the folder's lock and reads it; the other ranks learn its decisions."""
    out = tmp_path / "out"
    shutil.copytree(command_line[0], out)
    (out / "runs" / "skip-seed0.json").unlink()  # unfinished: it resumes from its checkpoint
    # One process cannot resume a two-process checkpoint: refused before training, naming it.
    code = main(["run", "--out", str(out), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and str(out / "checkpoints" / "skip-seed0.pt") in err and "world_size: 2 -> 1" in err
    # Another run holds the folder: rank 0 is refused, every rank exits 2, the message is printed once.
    with FolderLock(out):
        done = _torchrun("-m", "pycdeq", "run", "--out", str(out), "--resume", "--no-progress", cwd=tmp_path)
    assert done["returncode"] != 0 and done["stderr"].count("in use by another pycdeq run") == 1
    assert not (out / "runs" / "skip-seed0.json").exists()
    done = _torchrun("-m", "pycdeq", "run", "--out", str(out), "--resume", "--no-progress", cwd=tmp_path)
    assert done["returncode"] == 0, done["stderr"][-4000:]
    assert done["stdout"].count("Test acc (%)") == 1
    record = json.loads((out / "runs" / "skip-seed0.json").read_text())
    assert record["world_size"] == 2 and record["history"][-1]["step"] == 2
    with FolderLock(out):  # released by rank 0 at the end
        pass
