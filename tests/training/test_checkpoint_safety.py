"""Checkpoints are loaded without running code, and only into the run they belong to."""

from __future__ import annotations

import hashlib
import io
import random

import numpy as np
import pytest
import torch
from torch import nn

from pycdeq.models import MNISTDense
from pycdeq.training import CheckpointError, Trainer, TrainConfig, load_checkpoint, save_checkpoint
from pycdeq.training import checkpoint as checkpoint_module

FEATURES, CLASSES = 6, 3


class WritesAMarker:
    """Unpickling this calls ``open(marker, "w")``: a harmless stand-in for ``os.system``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _envelope(path, payload_state, fmt=checkpoint_module.FORMAT) -> None:
    """A well-formed envelope (right format name, matching checksum) around ``payload_state``."""
    buffer = io.BytesIO()
    torch.save(payload_state, buffer)
    payload = buffer.getvalue()
    torch.save({"format": fmt, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}, path)


@pytest.mark.parametrize("fmt", [checkpoint_module.FORMAT, "pycdeq-checkpoint-v1"])
def test_payload_that_would_run_code_is_refused_without_running_it(tmp_path, fmt):
    marker = tmp_path / "marker"
    path = tmp_path / "run.ckpt"
    _envelope(path, {"model": WritesAMarker(marker), "schedule": {"step": 0}}, fmt=fmt)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    assert not marker.exists(), "loading a checkpoint ran code from it"


def test_envelope_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "run.ckpt"
    torch.save({"format": checkpoint_module.FORMAT, "payload": WritesAMarker(marker)}, path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    assert not marker.exists()


def test_trainer_resume_refuses_a_hostile_checkpoint_before_touching_the_model(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "run.ckpt"
    _envelope(path, {"identity": None, "model": WritesAMarker(marker)})
    trainer = Trainer(_model(), TrainConfig(epochs=1, batch_size=8, progress=False), checkpoint_path=path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(CheckpointError, match="objects other than tensors"):
        trainer.fit(_data(), resume=True)
    assert not marker.exists()
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[key])


def test_saving_a_state_that_could_not_be_loaded_safely_names_the_entry(tmp_path):
    with pytest.raises(TypeError, match=r"state\['extra'\]\['config'\] is a TrainConfig"):
        save_checkpoint(tmp_path / "run.ckpt", {"w": torch.ones(2), "extra": {"config": TrainConfig()}})
    assert not (tmp_path / "run.ckpt").exists()


def test_trainer_state_holds_only_safely_loadable_values(tmp_path):
    """The whole state round-trips through weights_only loading, NumPy's RNG included."""
    path = tmp_path / "run.ckpt"
    trainer = Trainer(_model(), TrainConfig(epochs=1, batch_size=8, optimizer="sgd", progress=False),
                      checkpoint_path=path)
    trainer.fit(_data(), _data(seed=2))
    np.random.seed(11)
    random.seed(11)
    expected_numpy, expected_python = np.random.random(3), random.random()
    np.random.seed(11)
    random.seed(11)
    trainer.save(path)
    np.random.seed(0)
    random.seed(0)
    Trainer(_model(), trainer.config, checkpoint_path=path).load(path)
    assert np.array_equal(np.random.random(3), expected_numpy) and random.random() == expected_python
    state = load_checkpoint(path)
    assert state["history"][0]["test"]["samples"] == 24


# --- a checkpoint belongs to one run -----------------------------------------------------------
def _data(n: int = 24, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=generator)
    return x, x[:, :CLASSES].argmax(dim=1)


def _model(variant: str = "vanilla", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MNISTDense(in_features=FEATURES, width=8, num_classes=CLASSES, variant=variant, continuous=False)


def _saved_run(tmp_path, **options) -> tuple:
    config = TrainConfig(**{"epochs": 1, "batch_size": 8, "seed": 0, "lr": 1e-3, "progress": False, **options})
    path = tmp_path / "run.ckpt"
    Trainer(_model(), config, checkpoint_path=path).fit(_data())
    return path, config


@pytest.mark.parametrize("changes, named", [
    ({"seed": 5, "lr": 0.5}, ["train.lr: 0.001 -> 0.5", "train.seed: 0 -> 5"]),
    ({"optimizer": "sgd"}, ["train.optimizer: 'adam' -> 'sgd'"]),
    ({"lambda_skip": 1.0}, ["train.lambda_skip"]),
])
def test_resume_with_other_training_options_is_refused_naming_them(tmp_path, changes, named):
    path, config = _saved_run(tmp_path)
    other = TrainConfig(**{**config.__dict__, "epochs": 2, **changes})
    trainer = Trainer(_model(seed=9), other, checkpoint_path=path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(CheckpointError) as raised:
        trainer.fit(_data(), resume=True)
    message = str(raised.value)
    assert str(path) in message and "belongs to another run" in message
    for text in named:
        assert text in message
    assert "epochs" not in message.split("differs in:")[1].split(". Only")[0]  # may change: not reported
    for key, value in trainer.model.state_dict().items():  # nothing was loaded
        assert torch.equal(value, before[key])


def test_resume_of_another_variant_with_the_same_shapes_is_refused(tmp_path):
    path, config = _saved_run(tmp_path)
    trainer = Trainer(_model("skip_reg"), config, checkpoint_path=path)
    with pytest.raises(CheckpointError, match=r"model\.config\.variant: 'vanilla' -> 'skip_reg'"):
        trainer.fit(_data(), resume=True)


def test_resume_may_lengthen_the_run_and_change_evaluation_batches(tmp_path):
    path, config = _saved_run(tmp_path)
    longer = TrainConfig(**{**config.__dict__, "epochs": None, "steps": 6, "eval_batch_size": 5})
    trainer = Trainer(_model(), longer, checkpoint_path=path)
    result = trainer.fit(_data(), _data(seed=2), resume=True)
    assert trainer.step == 6 and [e.epoch for e in result.history] == [1, 2]


def test_checkpoint_without_a_recorded_run_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, {"model": _model().state_dict()})
    trainer = Trainer(_model(), TrainConfig(epochs=1, batch_size=8, progress=False), checkpoint_path=path)
    with pytest.raises(CheckpointError, match="does not record which run"):
        trainer.fit(_data(), resume=True)


def test_identity_of_objects_without_a_repr_does_not_hold_their_address():
    class Opaque:
        pass

    assert checkpoint_module.describe(Opaque()) == checkpoint_module.describe(Opaque())
    assert checkpoint_module.describe({"t": (1, 2.0, None)}) == {"t": [1, 2.0, None]}
