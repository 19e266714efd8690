"""Training and evaluation of any pycdeq model ``model(x) -> (logits, solution)``.

No global state: everything a run needs is on the ``Trainer``, the shuffling has its own
seeded ``torch.Generator``, and only ``rank == 0`` prints or writes checkpoints, so running
under ``torchrun`` with DistributedDataParallel needs only a wrapped model and a sharded
batch order (a later step).
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

from ..layers.deq import DEQ, NonConvergenceWarning
from ..layers.neural_ode import NeuralODE
from ..solvers.solution import Status
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
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
    return (solution.status != Status.CONVERGED).sum()


class Trainer:
    """Fits and evaluates a model according to a :class:`TrainConfig`."""

    def __init__(self, model: nn.Module, config: TrainConfig = TrainConfig(), *, rank: int = 0,
                 checkpoint_path: Optional[Union[str, Path]] = None,
                 on_epoch: Optional[Callable[[EpochMetrics], None]] = None):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was requested but CUDA is not available")
        self.model = model.to(self.device)
        self.rank = rank
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.on_epoch = on_epoch
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler("cuda") if config.amp else None
        self.generator = torch.Generator().manual_seed(config.seed)
        self.result = RunResult(parameters=sum(p.numel() for p in model.parameters()))
        self.step = 0
        self.epoch = 0
        self.train_time = 0.0
        # Pretraining unrolls every equilibrium layer, the Neural ODE included (as the reference does).
        self._deq_layers = [m for m in model.modules() if isinstance(m, (DEQ, NeuralODE))]

    # --- configuration -----------------------------------------------------------------
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
        an uninterrupted run's (same batches, same random numbers). Ctrl-C stops after
        marking the result interrupted; the last complete epoch's checkpoint stays on disk.
        """
        c = self.config
        x, y = _tensors(train, "train")
        batches_per_epoch = math.ceil(x.shape[0] / c.batch_size)
        total_steps = c.steps or c.epochs * batches_per_epoch
        if resume and self.checkpoint_path is None:
            raise ValueError("resume=True needs the Trainer's checkpoint_path")
        if resume and self.checkpoint_path.exists():
            self.load(self.checkpoint_path)
        else:
            torch.manual_seed(c.seed)
        bar = tqdm(total=total_steps, initial=self.step, disable=not c.progress or self.rank != 0,
                   desc="train", leave=False, dynamic_ncols=True)
        try:
            with warnings.catch_warnings():
                # Non-convergence is measured and reported per epoch instead.
                warnings.simplefilter("ignore", NonConvergenceWarning)
                while self.epoch < c.epochs and self.step < total_steps:
                    metrics = self._train_epoch(x, y, total_steps, bar)
                    if test is not None:
                        metrics.test = self.evaluate(test)
                        bar.set_postfix(epoch=metrics.epoch, loss=f"{metrics.train_loss:.3f}",
                                        acc=f"{metrics.test.accuracy:.3f}", nfe=f"{metrics.test.nfe:.1f}")
                    self.result.history.append(metrics)
                    if self.checkpoint_path is not None and self.rank == 0:
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
        order = torch.randperm(x.shape[0], generator=self.generator)
        loss_sum = correct = seen = nfe_sum = batches = 0
        backward_time = 0.0
        for start in range(0, x.shape[0], c.batch_size):
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
        return EpochMetrics(epoch=self.epoch, step=self.step, lr=lr, train_loss=loss_sum / max(seen, 1),
                            train_accuracy=correct / max(seen, 1), train_nfe=nfe_sum / max(batches, 1),
                            train_time=self.train_time, backward_time=backward_time / max(batches, 1))

    # --- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, data: Data) -> EvalMetrics:
        x, y = _tensors(data, "data")
        was_training = self.model.training
        self.model.eval()
        loss_sum = 0.0
        correct = nonconverged = nfe_sum = batches = 0
        predict_time = 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonConvergenceWarning)
            for start in range(0, x.shape[0], self.config.eval_batch_size):
                xb = x[start:start + self.config.eval_batch_size].to(self.device)
                yb = y[start:start + self.config.eval_batch_size].to(self.device)
                began = synchronized_clock(self.device)
                with torch.autocast(self.device.type, enabled=self.config.amp):
                    logits, solution = self.model(xb)
                predict_time += synchronized_clock(self.device) - began
                loss_sum += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
                correct += int((logits.argmax(dim=1) == yb).sum())
                nonconverged += int(_nonconverged(solution))
                nfe_sum += solution.nfe
                batches += 1
        self.model.train(was_training)
        n = x.shape[0]
        return EvalMetrics(accuracy=correct / n, loss=loss_sum / n, nfe=nfe_sum / batches,
                           nonconverged_fraction=nonconverged / n, predict_time=predict_time / batches,
                           samples=n)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x``, in evaluation batches, on the trainer's device."""
        was_training = self.model.training
        self.model.eval()
        outputs = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonConvergenceWarning)
            for start in range(0, x.shape[0], self.config.eval_batch_size):
                logits, _ = self.model(x[start:start + self.config.eval_batch_size].to(self.device))
                outputs.append(logits.float())
        self.model.train(was_training)
        return torch.cat(outputs)

    # --- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "schedule": {"step": self.step, "epoch": self.epoch},
            "train_time": self.train_time,
            "history": self.result.history,
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "numpy": np.random.get_state(), "python": random.getstate()},
            "config": self.config,
        }

    def save(self, path) -> None:
        save_checkpoint(path, self.state_dict())

    def load(self, path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["schedule"]["step"], state["schedule"]["epoch"]
        self.train_time = state["train_time"]
        self.result.history = list(state["history"])
        rng = state["rng"]
        # RNG states must be CPU ByteTensors; map_location moved them to the model's device.
        torch.set_rng_state(rng["torch"].cpu())
        self.generator.set_state(rng["generator"].cpu())
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
