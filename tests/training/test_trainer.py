"""The Trainer: options, schedules, pretraining, clipping, optimizers, metrics; TrainConfig checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from pycdeq import Anderson, Termination
from pycdeq.layers import DEQ
from pycdeq.models import build_model
from pycdeq.training import EpochMetrics, EvalMetrics, Trainer, TrainConfig, check_device

FEATURES, CLASSES = 10, 3



def _data(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=generator)
    y = (x[:, :CLASSES] * torch.tensor([1.0, -0.5, 0.8])).argmax(dim=1)
    return x, y


TRAIN, TEST = _data(48, 0), _data(20, 1)


def _model(variant: str = "skip_reg", seed: int = 0) -> nn.Module:
    """The MNIST-dense architecture shrunk to 8 features, solved with Anderson (fast)."""
    torch.manual_seed(seed)
    solver = Anderson(m=4, max_iter=30, termination=Termination(mode="rel", reltol=1e-3))
    return build_model("mnist-dense", variant=variant, continuous=False, num_classes=CLASSES,
                       input_shape=(FEATURES,), solver=solver, width=8)


def _config(**changes) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 16, "progress": False, **changes})


# --- TrainConfig ---------------------------------------------------------------------------

def test_config_unknown_field_is_type_error():
    with pytest.raises(TypeError, match="learning_rate"):
        TrainConfig(learning_rate=0.1)


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("steps", 0), ("batch_size", -1), ("eval_batch_size", 0), ("optimizer", "rmsprop"),
    ("lr", 0.0), ("lr", float("nan")), ("weight_decay", -1e-3), ("momentum", 1.0), ("schedule", "linear"),
    ("lr_min", -1.0), ("step_every", 0), ("step_gamma", 0.0), ("step_gamma", 1.5), ("lambda_skip", -0.1),
    ("lambda_jac", float("inf")), ("pretrain_steps", -1), ("pretrain_depth", 0), ("grad_clip", 0.0),
    ("device", "tpu"), ("device", "cuda:x"), ("device", "cuda:"), ("device", " cpu"), ("device", "cuda:-1"),
])
def test_config_bad_value_is_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("epochs", 2.0), ("batch_size", True), ("seed", "0"), ("lr", "1e-3")])
def test_config_wrong_type_is_type_error_naming_the_field(field, value):
    with pytest.raises(TypeError, match=field):
        TrainConfig(**{field: value})


def test_config_mixed_precision_needs_cuda():
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp=True, device="cpu")


def test_config_needs_epochs_or_steps():
    with pytest.raises(ValueError, match="epochs or steps"):
        TrainConfig(epochs=None)


@pytest.mark.parametrize("device", ["cuda:x", "gpu", "cuda:99"])
def test_a_device_that_does_not_exist_here_is_refused_before_training(device):
    with pytest.raises(ValueError, match=repr(device)):
        check_device(device)
    config = dataclasses.replace(_config(), device=device) if device == "cuda:99" else None
    if config is not None:  # well-formed, so the config accepts it; the trainer checks the machine
        with pytest.raises(ValueError, match="cuda:99"):
            Trainer(_model(), config)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_value_error_naming_the_device():
    with pytest.raises(ValueError, match="CUDA is not available"):
        check_device("cuda")
    with pytest.raises(ValueError, match="'cuda'"):
        Trainer(_model(), _config(device="cuda"))


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0


# --- learning-rate schedules ---------------------------------------------------------------

def test_cosine_schedule_endpoints_and_midpoint():
    trainer = Trainer(_model(), _config(schedule="cosine", lr=0.1, lr_min=0.01))
    assert trainer.learning_rate(0, 0, 100) == pytest.approx(0.1, rel=1e-12)
    assert trainer.learning_rate(50, 0, 100) == pytest.approx(0.055, rel=1e-12)
    assert trainer.learning_rate(100, 3, 100) == pytest.approx(0.01, rel=1e-12)
    assert trainer.learning_rate(25, 0, 100) == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi / 4)) / 2)
    # Decreasing over the run, never below lr_min past the end.
    rates = [trainer.learning_rate(s, 0, 100) for s in range(0, 121)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert min(rates) == pytest.approx(0.01, rel=1e-12)


def test_step_schedule_decays_every_step_every_epochs():
    trainer = Trainer(_model(), _config(schedule="step", lr=0.2, step_every=2, step_gamma=0.5))
    assert [trainer.learning_rate(0, epoch, 10) for epoch in range(6)] == pytest.approx(
        [0.2, 0.2, 0.1, 0.1, 0.05, 0.05], rel=1e-12)


def test_constant_schedule_is_constant():
    trainer = Trainer(_model(), _config(lr=3e-3))
    assert {trainer.learning_rate(s, e, 10) for s, e in [(0, 0), (9, 3), (20, 9)]} == {3e-3}


def test_schedule_sets_optimizer_learning_rate_during_fit():
    config = _config(epochs=3, schedule="step", lr=0.1, step_every=1, step_gamma=0.1)
    trainer = Trainer(_model(), config)
    seen = []
    original = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return original(*args, **kwargs)

    trainer.optimizer.step = recording_step
    result = trainer.fit(TRAIN)
    assert seen == pytest.approx([0.1] * 3 + [0.01] * 3 + [0.001] * 3, rel=1e-12)
    assert [epoch.lr for epoch in result.history] == pytest.approx([0.1, 0.01, 0.001], rel=1e-12)


# --- pretraining -----------------------------------------------------------------------------

def _record_depths(model: nn.Module) -> list:
    depths = []
    for layer in model.modules():
        if isinstance(layer, DEQ):
            layer.register_forward_pre_hook(lambda module, args: depths.append(module.fixed_depth))
    return depths


def test_pretraining_steps_run_unrolled_then_reset_fixed_depth():
    model = _model()
    depths = _record_depths(model)
    trainer = Trainer(model, _config(epochs=2, pretrain_steps=4, pretrain_depth=3))
    result = trainer.fit(TRAIN, TEST)
    # 3 batches per epoch: the first 4 training steps unrolled, the rest (and evaluation) solved.
    train_depths = depths[:3] + depths[4:7]  # depths[3] and depths[7] are the evaluations
    assert train_depths == [3, 3, 3, 3, 0, 0]
    assert depths[3] == 0 and depths[7] == 0
    assert model.deq.fixed_depth == 0
    assert result.history[0].train_nfe == pytest.approx(3.0)  # unrolled: nfe == depth


def test_fixed_depth_is_reset_when_training_is_interrupted():
    model = _model()
    calls = []

    def interrupt_on_second_batch(module, args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    model.head.register_forward_pre_hook(interrupt_on_second_batch)
    trainer = Trainer(model, _config(pretrain_steps=10, pretrain_depth=4))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(TRAIN)
    assert trainer.result.interrupted
    assert model.deq.fixed_depth == 0, "an interrupted pretraining run must not leave the layer unrolled"


# --- gradient clipping and optimizers ------------------------------------------------------

def _gradient_norms(trainer: Trainer) -> list:
    norms = []
    original = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return original(*args, **kwargs)

    trainer.optimizer.step = recording_step
    return norms


def test_grad_clip_bounds_the_total_gradient_norm():
    clip = 1e-3
    unclipped = Trainer(_model(), _config())
    free_norms = _gradient_norms(unclipped)
    unclipped.fit(TRAIN)
    assert min(free_norms) > 10 * clip  # the bound below is not met by accident

    clipped = Trainer(_model(), _config(grad_clip=clip))
    norms = _gradient_norms(clipped)
    clipped.fit(TRAIN)
    assert len(norms) == 3
    assert max(norms) <= clip * (1 + 1e-5)
    assert norms[0] == pytest.approx(clip, rel=1e-5)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_optimizer_choice_and_its_options(name, cls):
    trainer = Trainer(_model(), _config(optimizer=name, lr=0.05, weight_decay=1e-4, momentum=0.8))
    assert type(trainer.optimizer) is cls
    group = trainer.optimizer.param_groups[0]
    assert group["lr"] == 0.05 and group["weight_decay"] == 1e-4
    if name == "sgd":
        assert group["momentum"] == 0.8 and group["nesterov"] is True
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.fit(TRAIN)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert math.isfinite(result.history[0].train_loss)


def test_training_reduces_the_loss():
    trainer = Trainer(_model(), _config(epochs=6, lr=2e-2))
    result = trainer.fit(TRAIN, TEST)
    assert result.history[-1].train_loss < 0.8 * result.history[0].train_loss


# --- metrics, reproducibility, data handling -----------------------------------------------

def test_metrics_fields_are_populated():
    trainer = Trainer(_model(), _config(epochs=2))
    result = trainer.fit(TRAIN, TEST)
    assert len(result.history) == 2 and result.final is result.history[-1]
    assert result.parameters == sum(p.numel() for p in trainer.model.parameters())
    previous_time = 0.0
    for index, epoch in enumerate(result.history, start=1):
        assert isinstance(epoch, EpochMetrics) and isinstance(epoch.test, EvalMetrics)
        assert epoch.epoch == index and epoch.step == 3 * index
        assert epoch.backward_time > 0 and epoch.train_time > previous_time
        assert epoch.train_nfe > 0 and 0.0 <= epoch.train_accuracy <= 1.0
        assert epoch.test.predict_time > 0 and epoch.test.nfe > 0
        assert epoch.test.samples == 20 and 0.0 <= epoch.test.accuracy <= 1.0
        assert 0.0 <= epoch.test.nonconverged_fraction <= 1.0
        previous_time = epoch.train_time
    row = result.to_dict()["history"][0]
    assert {"test_accuracy", "test_nfe", "test_predict_time", "backward_time"} <= set(row)


def test_evaluate_matches_predict_and_reports_nonconvergence():
    model = _model()
    trainer = Trainer(model, _config(eval_batch_size=7))
    logits = trainer.predict(TEST[0])
    assert logits.shape == (20, CLASSES)
    metrics = trainer.evaluate(TEST)
    assert metrics.accuracy == pytest.approx(float((logits.argmax(1) == TEST[1]).float().mean()))
    assert metrics.loss == pytest.approx(float(nn.functional.cross_entropy(logits, TEST[1])), rel=1e-5)
    model.deq.solver = Anderson(max_iter=1, termination=Termination(mode="abs", abstol=1e-12))
    assert trainer.evaluate(TEST).nonconverged_fraction == 1.0
    assert model.training, "evaluate must restore the training mode"


def test_steps_without_epochs_train_exactly_that_many_steps():
    trainer = Trainer(_model(), _config(epochs=None, steps=7))  # 48 samples / 16 = 3 batches per epoch
    result = trainer.fit(TRAIN)
    assert trainer.step == 7 and [e.step for e in result.history] == [3, 6, 7]


def test_evaluation_batches_follow_the_training_batch_size_when_not_set(monkeypatch):
    trainer = Trainer(_model(), _config(batch_size=6, eval_batch_size=None))
    sizes = []
    forward = trainer.model.forward
    monkeypatch.setattr(trainer.model, "forward", lambda x: sizes.append(x.shape[0]) or forward(x))
    trainer.evaluate(TEST)
    assert sizes == [6, 6, 6, 2]


def test_same_seed_gives_bitwise_identical_runs_on_cpu():
    a = Trainer(_model(), _config(epochs=2, seed=11))
    a.fit(TRAIN)
    torch.manual_seed(1234)  # the caller's RNG state must not matter
    b = Trainer(_model(), _config(epochs=2, seed=11))
    b.fit(TRAIN)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    c = Trainer(_model(), _config(epochs=2, seed=12))  # a different shuffling order
    c.fit(TRAIN)
    assert any(not torch.equal(p, q) for p, q in zip(a.model.parameters(), c.model.parameters()))


def test_steps_caps_the_number_of_optimizer_steps():
    trainer = Trainer(_model(), _config(epochs=5, steps=4))
    result = trainer.fit(TRAIN)
    assert trainer.step == 4 and [e.step for e in result.history] == [3, 4]


def test_fit_accepts_a_dataset_split_and_rejects_bad_data():
    class Split:
        x, y = TRAIN

    Trainer(_model(), _config()).fit(Split())
    with pytest.raises(TypeError, match="train"):
        Trainer(_model(), _config()).fit([TRAIN[0]])
    with pytest.raises(ValueError, match="must match"):
        Trainer(_model(), _config()).fit((TRAIN[0], TRAIN[1][:-1]))
    with pytest.raises(TypeError, match="config"):
        Trainer(_model(), {"epochs": 1})


def test_skip_loss_weight_changes_training_only_for_skip_variants():
    def final_weights(variant, lambda_skip):
        trainer = Trainer(_model(variant), _config(lambda_skip=lambda_skip))
        trainer.fit(TRAIN)
        return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])

    assert not torch.equal(final_weights("skip_reg", 0.0), final_weights("skip_reg", 1.0))
    assert torch.equal(final_weights("vanilla", 0.0), final_weights("vanilla", 1.0))
