"""What a training run measures, in the layout of the paper's tables.

``backward_time`` is the mean wall time of ``loss.backward()`` per batch (for a DEQ it
includes the adjoint solve); ``predict_time`` the mean wall time of an evaluation forward
per batch; ``train_time`` the total time of the training steps (forward, backward,
optimizer; evaluation excluded). Every clock read is preceded by a CUDA synchronisation when
the model is on a GPU, otherwise asynchronous kernels would be timed as free.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional

import torch


def synchronized_clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class EvalMetrics:
    accuracy: float
    loss: float
    nfe: Optional[float]  #: mean forward nfe per batch (None: a backend that does not report it)
    nonconverged_fraction: Optional[float]  #: samples whose solve did not converge / samples (None: not reported)
    predict_time: float  #: mean seconds per batch
    samples: int


@dataclass
class EpochMetrics:
    epoch: int
    step: int
    lr: float
    train_loss: float
    train_accuracy: Optional[float]  #: None where a backend does not report it (the Julia rows)
    train_nfe: Optional[float]
    train_time: float  #: cumulative seconds of training steps up to this epoch
    backward_time: Optional[float]  #: mean seconds of backward per batch in this epoch
    test: Optional[EvalMetrics] = None

    def to_dict(self) -> dict:
        """Plain nested dict (``test`` a dict or None); :meth:`from_dict` rebuilds the metrics."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EpochMetrics":
        test = data.get("test")
        return cls(**{**data, "test": None if test is None else EvalMetrics(**test)})

    def flat(self) -> dict:
        row = {k: v for k, v in asdict(self).items() if k != "test"}
        if self.test is not None:
            row.update({f"test_{k}": v for k, v in asdict(self.test).items()})
        return row


@dataclass
class RunResult:
    history: List[EpochMetrics] = field(default_factory=list)
    parameters: int = 0
    interrupted: bool = False
    world_size: int = 1  #: processes that trained it (data-parallel)

    @property
    def final(self) -> Optional[EpochMetrics]:
        return self.history[-1] if self.history else None

    def to_dict(self) -> dict:
        return {"parameters": self.parameters, "interrupted": self.interrupted, "world_size": self.world_size,
                "history": [epoch.flat() for epoch in self.history]}
