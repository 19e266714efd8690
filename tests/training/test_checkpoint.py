"""Checkpoints: resume equals an uninterrupted run; files are atomic and checksummed."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from pycdeq import Anderson, Termination
from pycdeq.layers import SkipRegDEQ
from pycdeq.models import DenseInjection
from pycdeq.training import CheckpointError, Trainer, TrainConfig, load_checkpoint, save_checkpoint
from pycdeq.training import files as files_module

FEATURES, WIDTH, CLASSES = 12, 8, 3
# Every field of an epoch's metrics except wall-clock times, which no two runs share.
TIMINGS = {"train_time", "backward_time", "test_predict_time"}



class DropoutDEQ(nn.Module):
    """A tiny Skip Reg. DEQ classifier with dropout, so that training draws from torch's global
    RNG and a resume that failed to restore it could not reproduce the uninterrupted run."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(FEATURES, WIDTH), nn.ReLU(), nn.Dropout(0.25))
        solver = Anderson(m=4, max_iter=30, termination=Termination(mode="rel", reltol=1e-4))
        self.deq = SkipRegDEQ(DenseInjection(WIDTH), solver)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, x):
        z, solution = self.deq(self.stem(x))
        return self.head(z), solution


def _data(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=generator)
    y = (x[:, :CLASSES] * torch.tensor([1.0, 0.5, -0.7])).argmax(dim=1)
    return x, y


TRAIN, TEST = _data(40, 1), _data(16, 2)


def _model(init_seed: int) -> DropoutDEQ:
    torch.manual_seed(init_seed)
    return DropoutDEQ()


def _comparable(history) -> list:
    return [{k: v for k, v in epoch.flat().items() if k not in TIMINGS} for epoch in history]


def _assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), f"parameter {name} differs after resume"


@pytest.mark.parametrize("schedule", ["constant", "step"])
def test_resume_from_epoch_checkpoint_equals_uninterrupted_run(tmp_path, schedule):
    config = dict(batch_size=16, lr=1e-2, seed=3, progress=False, schedule=schedule, step_every=1,
                  step_gamma=0.5, lambda_skip=0.1)
    whole = Trainer(_model(0), TrainConfig(epochs=2, **config))
    whole.fit(TRAIN, TEST)

    path = tmp_path / "run.ckpt"
    first = Trainer(_model(0), TrainConfig(epochs=1, **config), checkpoint_path=path)
    first.fit(TRAIN, TEST)
    # A new process: a freshly built model with other initial weights, a new Trainer.
    torch.manual_seed(12345)
    resumed = Trainer(_model(99), TrainConfig(epochs=2, **config), checkpoint_path=path)
    result = resumed.fit(TRAIN, TEST, resume=True)

    _assert_same_parameters(whole.model, resumed.model)
    assert _comparable(result.history) == _comparable(whole.result.history)
    assert [e.epoch for e in result.history] == [1, 2]
    assert resumed.step == whole.step and resumed.epoch == whole.epoch == 2


def test_resume_after_interrupt_equals_uninterrupted_run_with_cosine_schedule(tmp_path):
    """Ctrl-C after epoch 1 (same config, cosine over the whole run) then ``resume``."""
    config = TrainConfig(epochs=3, batch_size=16, lr=1e-2, schedule="cosine", lr_min=1e-4, seed=5,
                         optimizer="sgd", progress=False)
    whole = Trainer(_model(0), config)
    whole.fit(TRAIN, TEST)

    def interrupt(metrics):
        if metrics.epoch == 1:
            raise KeyboardInterrupt

    path = tmp_path / "run.ckpt"
    stopped = Trainer(_model(0), config, checkpoint_path=path, on_epoch=interrupt)
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(TRAIN, TEST)
    assert stopped.result.interrupted
    assert load_checkpoint(path)["schedule"]["epoch"] == 1

    resumed = Trainer(_model(7), config, checkpoint_path=path)
    result = resumed.fit(TRAIN, TEST, resume=True)
    _assert_same_parameters(whole.model, resumed.model)
    assert _comparable(result.history) == _comparable(whole.result.history)


def test_checkpoint_holds_optimizer_rng_and_schedule_state(tmp_path):
    path = tmp_path / "run.ckpt"
    trainer = Trainer(_model(0), TrainConfig(epochs=1, batch_size=16, progress=False), checkpoint_path=path)
    trainer.fit(TRAIN)
    state = load_checkpoint(path)
    assert state["schedule"] == {"step": 3, "epoch": 1}
    assert state["optimizer"]["state"], "Adam moments must be saved"
    assert set(state["rng"]) == {"torch", "generator", "cuda", "numpy", "python"}
    assert state["identity"] == trainer.identity()
    assert state["identity"]["train"]["lr"] == trainer.config.lr
    assert len(state["history"]) == 1


def test_save_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "run.ckpt"
    save_checkpoint(path, {"a": torch.arange(3)})
    save_checkpoint(path, {"a": torch.arange(4)})  # overwriting goes through a temp file too
    assert os.listdir(path.parent) == ["run.ckpt"]
    assert torch.equal(load_checkpoint(path)["a"], torch.arange(4))


@pytest.mark.parametrize("crash_in", ["replace", "fsync"])
def test_crash_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch, crash_in):
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, {"version": 1, "w": torch.ones(5)})
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    monkeypatch.setattr(files_module.os, crash_in, crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, {"version": 2, "w": torch.zeros(5)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["version"] == 1
    assert os.listdir(tmp_path) == ["run.ckpt"]


def _pickle_span(path) -> tuple:
    """Byte range of the envelope's pickle (which embeds the payload) inside the zip file."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    data = path.read_bytes()
    name_length, extra_length = (int.from_bytes(data[info.header_offset + k:info.header_offset + k + 2], "little")
                                 for k in (26, 28))
    start = info.header_offset + 30 + name_length + extra_length
    return start, start + info.compress_size


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_flipped_byte_in_payload_raises_checkpoint_error(tmp_path, where):
    path = tmp_path / "run.ckpt"
    state = {"w": torch.linspace(0, 1, 64), "epoch": 4}
    save_checkpoint(path, state)
    start, end = _pickle_span(path)
    data = bytearray(path.read_bytes())
    data[start + int(where * (end - start))] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_checkpoint(path)


def test_checksum_mismatch_is_reported(tmp_path):
    """A payload changed consistently inside a well-formed envelope fails the checksum."""
    import io

    path = tmp_path / "run.ckpt"
    save_checkpoint(path, {"w": torch.ones(3)})
    envelope = torch.load(path, weights_only=True)
    payload = bytearray(envelope["payload"])
    payload[len(payload) // 2] ^= 0x01
    envelope["payload"] = bytes(payload)
    buffer = io.BytesIO()
    torch.save(envelope, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_truncated_foreign_and_missing_files_raise_checkpoint_error(tmp_path):
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, {"w": torch.ones(3)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)
    torch.save({"w": torch.ones(3)}, path)  # a plain torch file, not a pycdeq checkpoint
    with pytest.raises(CheckpointError, match="is not a pycdeq-checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda_matches_uninterrupted_run(tmp_path):
    """On a GPU kernels may not be bitwise reproducible; the resumed run must agree to 1e-6
    and the checkpoint must load onto the trainer's device."""
    config = dict(batch_size=16, lr=1e-2, seed=3, progress=False, device="cuda")
    whole = Trainer(_model(0), TrainConfig(epochs=2, **config))
    whole.fit(TRAIN, TEST)
    path = tmp_path / "run.ckpt"
    Trainer(_model(0), TrainConfig(epochs=1, **config), checkpoint_path=path).fit(TRAIN, TEST)
    resumed = Trainer(_model(99), TrainConfig(epochs=2, **config), checkpoint_path=path)
    resumed.fit(TRAIN, TEST, resume=True)
    for p, q in zip(whole.model.parameters(), resumed.model.parameters()):
        assert p.device.type == "cuda"
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)
    for a, b in zip(_comparable(whole.result.history), _comparable(resumed.result.history)):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
