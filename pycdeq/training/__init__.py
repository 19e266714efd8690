"""Training, evaluation, checkpoints, and the scikit-learn estimator."""

from .checkpoint import RESUMABLE_CHANGES, CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig, check_device
from .distributed import DistributedContext, init_from_environment, make_sampler, shutdown, wrap_model
from .files import FolderLock, FolderLockedError, atomic_write_bytes, atomic_write_text
from .metrics import EpochMetrics, EvalMetrics, RunResult
from .trainer import Trainer

__all__ = ["Trainer", "TrainConfig", "check_device", "EpochMetrics", "EvalMetrics", "RunResult",
           "save_checkpoint", "load_checkpoint", "CheckpointError", "RESUMABLE_CHANGES", "atomic_write_bytes",
           "atomic_write_text", "FolderLock", "FolderLockedError", "DEQClassifier", "DistributedContext",
           "init_from_environment", "wrap_model", "make_sampler", "shutdown"]


def __getattr__(name):
    # The estimator pulls in scikit-learn (about a second of start-up): load it on first use,
    # so that `pycdeq --help` and the training loop do not pay for it.
    if name == "DEQClassifier":
        from .estimator import DEQClassifier

        return DEQClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
