"""Training options: one frozen, validated dataclass (unknown fields are a TypeError)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .. import _checks


@dataclass(frozen=True)
class TrainConfig:
    """How to train a pycdeq model.

    Loss = cross entropy + ``lambda_skip * skip_loss`` + ``lambda_jac * jacobian_loss``
    (the layer computes the two extra terms; they are zero where the variant has none).
    ``steps`` caps the total number of optimizer steps (``None``: ``epochs`` full epochs).
    ``pretrain_steps`` first steps run the DEQ unrolled at ``pretrain_depth`` (warm-up).
    """

    epochs: int = 5
    steps: Optional[int] = None
    batch_size: int = 32
    eval_batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "constant"
    lr_min: float = 0.0
    step_every: int = 1
    step_gamma: float = 0.1
    lambda_skip: float = 0.01
    lambda_jac: float = 0.0
    pretrain_steps: int = 0
    pretrain_depth: int = 5
    grad_clip: Optional[float] = None
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    progress: bool = True

    def __post_init__(self):
        _checks.positive_int("epochs", self.epochs)
        if self.steps is not None:
            _checks.positive_int("steps", self.steps)
        _checks.positive_int("batch_size", self.batch_size)
        _checks.positive_int("eval_batch_size", self.eval_batch_size)
        _checks.one_of("optimizer", self.optimizer, ("adam", "adamw", "sgd"))
        _checks.positive("lr", self.lr)
        _checks.positive("weight_decay", self.weight_decay, allow_zero=True)
        _checks.in_range("momentum", self.momentum, 0.0, 1.0, high_open=True)
        _checks.one_of("schedule", self.schedule, ("constant", "cosine", "step"))
        _checks.positive("lr_min", self.lr_min, allow_zero=True)
        _checks.positive_int("step_every", self.step_every)
        _checks.in_range("step_gamma", self.step_gamma, 0.0, 1.0, low_open=True)
        _checks.positive("lambda_skip", self.lambda_skip, allow_zero=True)
        _checks.positive("lambda_jac", self.lambda_jac, allow_zero=True)
        _checks.positive_int("pretrain_steps", self.pretrain_steps, allow_zero=True)
        _checks.positive_int("pretrain_depth", self.pretrain_depth)
        if self.grad_clip is not None:
            _checks.positive("grad_clip", self.grad_clip)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {type(self.seed).__name__}")
        if not isinstance(self.device, str) or self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.amp and not self.device.startswith("cuda"):
            raise ValueError("amp=True (mixed precision) needs a CUDA device")
