"""Training and evaluation of any pycdeq model ``model(x) -> (logits, solution)``.

No global state: everything a run needs is on the ``Trainer``, the shuffling has its own
seeded ``torch.Generator``, and only ``rank == 0`` prints or writes checkpoints. With a
:class:`~pycdeq.training.distributed.DistributedContext` of several processes (``torchrun``)
the model is wrapped in DistributedDataParallel, each rank takes its ``DistributedSampler``
share of every epoch's permutation (``batch_size`` is per process), and the reported metrics
are global (see ``docs/distributed.md``).
"""

from __future__ import annotations

import math
import random
import warnings
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..layers import EquilibriumLayer, NonConvergenceWarning
from ..solvers.solution import Status
from .checkpoint import check_identity, load_checkpoint, run_identity, save_checkpoint
from .config import TrainConfig, check_device
from .distributed import (
    DistributedContext,
    all_gather_object,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    decided_by_main,
    rank_seed,
    shard_indices,
    shard_size,
    unwrap,
    wrap_model,
)
from .metrics import EpochMetrics, EvalMetrics, RunResult, synchronized_clock

Data = Union[Tuple[torch.Tensor, torch.Tensor], object]


def _tensors(data: Data, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Accept ``(x, y)`` or anything with ``.x`` and ``.y`` (a ``pycdeq.data`` split)."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    elif hasattr(data, "x") and hasattr(data, "y"):
        x, y = data.x, data.y
    else:
        raise TypeError(f"{name} must be an (x, y) pair of tensors or a dataset split with .x and .y")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name}: x and y must be torch tensors, got {type(x).__name__}, {type(y).__name__}")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"{name}: x has {x.shape[0]} samples and y {y.shape[0]}; they must match and be > 0")
    return x, y


def _nonconverged(solution) -> torch.Tensor:
    return (solution.status != int(Status.CONVERGED)).sum()


class Trainer:
    """Fits and evaluates a model according to a :class:`TrainConfig`."""

    def __init__(self, model: nn.Module, config: Optional[TrainConfig] = None, *, rank: int = 0,
                 checkpoint_path: Optional[Union[str, Path]] = None,
                 on_epoch: Optional[Callable[[EpochMetrics], None]] = None,
                 distributed: Optional[DistributedContext] = None):
        config = TrainConfig() if config is None else config
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = config
        if distributed is None and isinstance(model, nn.parallel.DistributedDataParallel):
            raise ValueError("the model is DDP-wrapped: pass distributed=init_from_environment() (and the bare "
                             "model, the Trainer wraps it) so that metrics and checkpoints are global")
        self.distributed = self._context(distributed, rank)
        # Under torchrun the context's device was checked when the process joined (cuda:LOCAL_RANK).
        self.device = self.distributed.device if self.distributed.is_distributed else check_device(config.device)
        self.model = wrap_model(model, self.distributed) if self.distributed.is_distributed else model.to(self.device)
        self._module = unwrap(self.model)  # checkpoints and evaluation use the bare model
        self.rank = self.distributed.rank if distributed is not None else rank
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.on_epoch = on_epoch
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler("cuda") if config.amp else None
        self.generator = torch.Generator().manual_seed(config.seed)
        self.result = RunResult(parameters=sum(p.numel() for p in model.parameters()),
                                world_size=self.distributed.world_size)
        self.step = 0
        self.epoch = 0
        self.train_time = 0.0
        # Pretraining unrolls every equilibrium layer, the Neural ODE included (as the reference does).
        self._deq_layers = [m for m in model.modules() if isinstance(m, EquilibriumLayer)]

    # --- configuration -----------------------------------------------------------------
    def _context(self, distributed: Optional[DistributedContext], rank: int) -> DistributedContext:
        if distributed is None:
            return DistributedContext.single(self.config.device)
        if not isinstance(distributed, DistributedContext):
            raise TypeError(f"distributed must be a DistributedContext, got {type(distributed).__name__}")
        if rank not in (0, distributed.rank):
            raise ValueError(f"rank={rank} contradicts the distributed context's rank {distributed.rank}")
        if distributed.is_distributed and distributed.device.type != torch.device(self.config.device).type:
            raise ValueError(f"config.device {self.config.device!r} but the distributed context computes on "
                             f"{distributed.device}")
        return distributed

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c, params = self.config, self.model.parameters()
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=True)

    def learning_rate(self, step: int, epoch: int, total_steps: int) -> float:
        c = self.config
        if c.schedule == "cosine":
            return c.lr_min + (c.lr - c.lr_min) * (1 + math.cos(math.pi * min(step / total_steps, 1.0))) / 2
        if c.schedule == "step":
            return c.lr * c.step_gamma ** (epoch // c.step_every)
        return c.lr

    # --- training ----------------------------------------------------------------------
    def fit(self, train: Data, test: Optional[Data] = None, *, resume: bool = False) -> RunResult:
        """Train for ``epochs`` (or ``steps``); evaluate on ``test`` after each epoch.

        With ``resume=True`` and an existing checkpoint, continue from it: the result equals
        an uninterrupted run's (same batches, same random numbers). A checkpoint of another
        run (other model or training options, apart from ``RESUMABLE_CHANGES``) raises
        ``CheckpointError`` naming the differing fields. Ctrl-C stops after
        marking the result interrupted; the last complete epoch's checkpoint stays on disk.
        """
        c = self.config
        x, y = _tensors(train, "train")
        batches_per_epoch = math.ceil(shard_size(x.shape[0], self.distributed) / c.batch_size)
        # TrainConfig guarantees steps or epochs is set.
        total_steps = c.steps if c.steps is not None else (c.epochs or 0) * batches_per_epoch
        checkpoint = self.checkpoint_path
        if resume and checkpoint is None:
            raise ValueError("resume=True needs the Trainer's checkpoint_path")
        if resume and checkpoint is not None and decided_by_main(checkpoint.exists, self.distributed):
            self.load(checkpoint)
        else:
            torch.manual_seed(rank_seed(c.seed, self.distributed.rank))
        bar = tqdm(total=total_steps, initial=self.step, disable=not c.progress or self.rank != 0,
                   desc="train", leave=False, dynamic_ncols=True)
        try:
            with warnings.catch_warnings():
                # Non-convergence is measured and reported per epoch instead.
                warnings.simplefilter("ignore", NonConvergenceWarning)
                while (c.epochs is None or self.epoch < c.epochs) and self.step < total_steps:
                    metrics = self._train_epoch(x, y, total_steps, bar)
                    if test is not None:
                        metrics.test = self.evaluate(test)
                        bar.set_postfix(epoch=metrics.epoch, loss=f"{metrics.train_loss:.3f}",
                                        acc=f"{metrics.test.accuracy:.3f}", nfe=f"{metrics.test.nfe:.1f}")
                    self.result.history.append(metrics)
                    if self.checkpoint_path is not None and (self.rank == 0 or self.distributed.is_distributed):
                        self.save(self.checkpoint_path)
                    if self.on_epoch is not None:
                        self.on_epoch(metrics)
        except KeyboardInterrupt:
            self.result.interrupted = True
            raise
        finally:
            bar.close()
            # Also after Ctrl-C or an error mid-epoch: a layer left unrolled would stop solving.
            for layer in self._deq_layers:
                layer.fixed_depth = 0
        return self.result

    def _train_epoch(self, x, y, total_steps, bar) -> EpochMetrics:
        c = self.config
        self.model.train()
        order = shard_indices(torch.randperm(x.shape[0], generator=self.generator), self.distributed)
        loss_sum = 0.0
        correct = seen = nfe_sum = batches = 0
        backward_time = 0.0
        for start in range(0, order.shape[0], c.batch_size):
            if self.step >= total_steps:
                break
            index = order[start:start + c.batch_size]
            xb, yb = x[index].to(self.device), y[index].to(self.device)
            lr = self.learning_rate(self.step, self.epoch, total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            depth = c.pretrain_depth if self.step < c.pretrain_steps else 0
            for layer in self._deq_layers:
                layer.fixed_depth = depth
            began = synchronized_clock(self.device)
            with torch.autocast(self.device.type, enabled=c.amp):
                logits, solution = self.model(xb)
                loss = F.cross_entropy(logits.float(), yb)
                total = loss + c.lambda_skip * solution.skip_loss + c.lambda_jac * solution.jacobian_loss
            self.optimizer.zero_grad(set_to_none=True)
            backward_began = synchronized_clock(self.device)
            if self.scaler is not None:
                self.scaler.scale(total).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                total.backward()
            backward_time += synchronized_clock(self.device) - backward_began
            if c.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.train_time += synchronized_clock(self.device) - began
            loss_sum += float(loss.detach()) * len(index)
            correct += int((logits.argmax(dim=1) == yb).sum())
            seen += len(index)
            nfe_sum += solution.nfe
            batches += 1
            self.step += 1
            bar.update(1)
        for layer in self._deq_layers:
            layer.fixed_depth = 0
        self.epoch += 1
        # Global figures: sums over every rank's batches; times of the slowest rank.
        train_time, backward_time = all_reduce_max([self.train_time, backward_time / max(batches, 1)],
                                                   self.distributed)
        total_loss, total_correct, total_seen, total_nfe, total_batches = all_reduce_sum(
            [loss_sum, correct, seen, nfe_sum, batches], self.distributed)
        return EpochMetrics(epoch=self.epoch, step=self.step, lr=lr, train_loss=total_loss / max(total_seen, 1),
                            train_accuracy=total_correct / max(total_seen, 1),
                            train_nfe=total_nfe / max(total_batches, 1), train_time=train_time,
                            backward_time=backward_time)

    # --- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, data: Data) -> EvalMetrics:
        """Metrics on ``data``. Distributed: a collective (call it on every rank); rank ``r``
        evaluates batches ``r, r + world_size, ...`` of the single-process batching, so the
        global metrics are those of one process."""
        x, y = _tensors(data, "data")
        was_training = self.model.training
        self.model.eval()
        loss_sum = 0.0
        correct = nonconverged = nfe_sum = batches = 0
        predict_time = 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonConvergenceWarning)
            size, ranks = self.config.evaluation_batch_size, self.distributed.world_size
            for start in range(self.distributed.rank * size, x.shape[0], size * ranks):
                xb, yb = x[start:start + size].to(self.device), y[start:start + size].to(self.device)
                began = synchronized_clock(self.device)
                with torch.autocast(self.device.type, enabled=self.config.amp):
                    logits, solution = self._module(xb)  # no DDP forward: no collective per batch
                predict_time += synchronized_clock(self.device) - began
                loss_sum += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
                correct += int((logits.argmax(dim=1) == yb).sum())
                nonconverged += int(_nonconverged(solution))
                nfe_sum += solution.nfe
                batches += 1
        self.model.train(was_training)
        n = x.shape[0]
        total_loss, total_correct, total_nonconverged, total_nfe, total_batches, total_predict = all_reduce_sum(
            [loss_sum, correct, nonconverged, nfe_sum, batches, predict_time], self.distributed)
        return EvalMetrics(accuracy=total_correct / n, loss=total_loss / n, nfe=total_nfe / total_batches,
                           nonconverged_fraction=total_nonconverged / n, predict_time=total_predict / total_batches,
                           samples=n)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x``, in evaluation batches, on the trainer's device."""
        was_training = self.model.training
        self.model.eval()
        outputs = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonConvergenceWarning)
            size = self.config.evaluation_batch_size
            for start in range(0, x.shape[0], size):
                logits, _ = self._module(x[start:start + size].to(self.device))
                outputs.append(logits.float())
        self.model.train(was_training)
        return torch.cat(outputs)

    # --- checkpoints -------------------------------------------------------------------
    def identity(self) -> dict:
        """What this run's checkpoints belong to (model configuration, training options, number
        of processes: the batch order depends on it)."""
        return run_identity(self._module, self.config, world_size=self.distributed.world_size)

    def state_dict(self) -> dict:
        """Tensors and plain containers only (checkpoints load with ``weights_only=True``)."""
        return {
            "identity": self.identity(),
            "model": self._module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "schedule": {"step": self.step, "epoch": self.epoch},
            "train_time": self.train_time,
            "history": [epoch.to_dict() for epoch in self.result.history],
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "numpy": _numpy_rng_state(), "python": random.getstate()},
        }

    def save(self, path) -> None:
        """Write a checkpoint. Distributed: a collective (call it on every rank): every rank's
        random state is gathered (a list in rank order), rank 0 writes, and no rank goes on
        before the file is there."""
        state = self.state_dict()
        if self.distributed.is_distributed:
            state["rng"] = all_gather_object(state["rng"], self.distributed)
        if self.distributed.is_main:
            save_checkpoint(path, state)
        barrier(self.distributed)

    def load(self, path) -> None:
        """Restore a checkpoint of this run (``CheckpointError`` if it belongs to another one)."""
        state = load_checkpoint(path, map_location=self.device)
        # Before any state is touched: another run's optimizer state may not even fit this one's,
        # and another number of processes would draw other batches (world_size is in the identity).
        check_identity(path, state.get("identity"), self.identity())
        self._module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["schedule"]["step"], state["schedule"]["epoch"]
        self.train_time = state["train_time"]
        self.result.history = [EpochMetrics.from_dict(epoch) for epoch in state["history"]]
        # One process saves its random state, several a list of them in rank order.
        rng = state["rng"][self.distributed.rank] if isinstance(state["rng"], list) else state["rng"]
        # RNG states must be CPU ByteTensors; map_location moved them to the model's device.
        torch.set_rng_state(rng["torch"].cpu())
        self.generator.set_state(rng["generator"].cpu())
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        _set_numpy_rng_state(rng["numpy"])
        random.setstate(rng["python"])


def _numpy_rng_state() -> dict:
    # NumPy's legacy state is a tuple holding an ndarray, which weights_only loading refuses.
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    return {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "position": int(position),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng_state(state: dict) -> None:
    keys = state["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((state["kind"], keys, state["position"], state["has_gauss"], state["cached_gaussian"]))
