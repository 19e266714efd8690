"""Training, evaluation, checkpoints, and the scikit-learn estimator."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .estimator import DEQClassifier
from .metrics import EpochMetrics, EvalMetrics, RunResult
from .trainer import Trainer

__all__ = ["Trainer", "TrainConfig", "EpochMetrics", "EvalMetrics", "RunResult", "save_checkpoint",
           "load_checkpoint", "CheckpointError", "DEQClassifier"]
