"""Training options: one frozen, validated dataclass (unknown fields are a TypeError)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch

from .. import _checks

_DEVICE_SYNTAX = re.compile(r"cpu|cuda(:\d+)?")


def check_device(device: str) -> torch.device:
    """``device`` ("cpu", "cuda", "cuda:N") as a ``torch.device`` that exists on this machine.

    ``ValueError`` naming the device otherwise: a malformed name, CUDA asked for where torch
    has none, or an index past the last GPU. Called before anything is written or trained.
    """
    if not isinstance(device, str) or not _DEVICE_SYNTAX.fullmatch(device):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N' (N a GPU index), got {device!r}")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available on this machine "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
    count = torch.cuda.device_count()
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= count:
        raise ValueError(f"device {device!r} does not exist: this machine has {count} CUDA device(s), "
                         f"cuda:0 .. cuda:{count - 1}")
    return torch.device(device)


@dataclass(frozen=True)
class TrainConfig:
    """How to train a pycdeq model.

    Loss = cross entropy + ``lambda_skip * skip_loss`` + ``lambda_jac * jacobian_loss``
    (the layer computes the two extra terms; they are zero where the variant has none).
    ``steps`` caps the total number of optimizer steps (``None``: ``epochs`` full epochs).
    ``epochs=None`` (with ``steps`` set): as many epochs as the steps need.
    ``eval_batch_size=None``: evaluate in batches of ``batch_size``.
    ``pretrain_steps`` first steps run the DEQ unrolled at ``pretrain_depth`` (warm-up).
    ``device`` is checked for syntax here and for existence by the :class:`Trainer`
    (:func:`check_device`), so a config can be written on a machine without the GPU.
    """

    epochs: Optional[int] = 5
    steps: Optional[int] = None
    batch_size: int = 32
    eval_batch_size: Optional[int] = 256
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
        if self.epochs is None and self.steps is None:
            raise ValueError("set epochs or steps (or both)")
        for name in ("epochs", "steps", "eval_batch_size"):
            if getattr(self, name) is not None:
                _checks.positive_int(name, getattr(self, name))
        _checks.positive_int("batch_size", self.batch_size)
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
        if not isinstance(self.device, str) or not _DEVICE_SYNTAX.fullmatch(self.device):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N' (N a GPU index), got {self.device!r}")
        if self.amp and not self.device.startswith("cuda"):
            raise ValueError("amp=True (mixed precision) needs a CUDA device")

    @property
    def evaluation_batch_size(self) -> int:
        """``eval_batch_size``, or ``batch_size`` where it is None."""
        return self.batch_size if self.eval_batch_size is None else self.eval_batch_size
