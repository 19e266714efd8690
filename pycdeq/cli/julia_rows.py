"""``pycdeq run --julia``: the same experiment trained by the Julia backend, as extra rows.

The Julia path exists for the MNIST-dense model (``pycdeq.julia.JuliaModel``): each
(variant, seed) model is built exactly as for the torch runs (same seed, same initial
weights), copied to Julia, trained there by ``JuliaModel.fit`` (Adam, cross entropy +
``lambda_skip`` x skip loss) and evaluated batch by batch here. The rows are the torch runs'
(:class:`~pycdeq.training.metrics.EpochMetrics` ``.flat()``, so the keys are defined in one
place); Julia reports neither the training accuracy and nfe, a per-batch backward time nor
per-sample convergence, so those cells stay empty (``None``). Variants the translation does
not support are skipped with the reason; juliacall is imported only by ``pycdeq.julia``
itself, on first use.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, List, Optional

import torch
import torch.nn.functional as F

from ..julia.errors import JuliaNotAvailableError
from ..models import build_model
from ..training.metrics import EpochMetrics, EvalMetrics
from .experiments import VARIANT_NAMES, Experiment
from .report import RunRecord


def check_available() -> None:
    """Raise :class:`~pycdeq.julia.JuliaNotAvailableError` (message: the backend's status)
    when --julia cannot run here."""
    from .. import julia

    if not julia.available():
        raise JuliaNotAvailableError(julia.status())


def _evaluate(julia_model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> EvalMetrics:
    correct = nfe = batches = 0
    loss_sum = predict_time = 0.0
    for start in range(0, x.shape[0], batch_size):
        began = time.perf_counter()
        out = julia_model.forward(x[start:start + batch_size])
        predict_time += time.perf_counter() - began
        targets = y[start:start + batch_size]
        loss_sum += float(F.cross_entropy(out.logits.float(), targets, reduction="sum"))
        correct += int((out.logits.argmax(dim=1) == targets).sum())
        nfe += out.nfe  # -1 per batch where the solver reports none
        batches += 1
    n = int(x.shape[0])
    return EvalMetrics(accuracy=correct / n, loss=loss_sum / n, nfe=nfe / batches if nfe >= 0 else None,
                       nonconverged_fraction=None, predict_time=predict_time / batches, samples=n)


def julia_records(experiment: Experiment, data, epochs: int, model_kwargs: Callable[[str, Any], dict],
                  say: Callable[[str], None], *, bridge: Optional[Any] = None) -> List[RunRecord]:
    """Train and evaluate every (variant, seed) in Julia; one :class:`RunRecord` each."""
    from ..julia import JuliaModel, TranslationError

    e = experiment
    if e.steps is not None:
        say("julia: --steps is not supported by the Julia trainer; it trains whole epochs")
    if e.pretrain_steps:
        say("julia: pretrain_steps is not supported by the Julia trainer; it solves from the first step")
    records = []
    batches = math.ceil(len(data.train) / e.batch_size)
    for variant in e.variants:
        for seed in e.seeds:
            torch.manual_seed(seed)
            model = build_model(e.model, **model_kwargs(variant, data))
            try:
                julia_model = JuliaModel.from_torch(model, seed=seed, bridge=bridge)
            except TranslationError as error:
                say(f"julia: skipping {VARIANT_NAMES[variant]}: {error}")
                break
            began = time.perf_counter()
            losses = julia_model.fit(data.train.x, data.train.y, epochs=epochs, batch_size=e.batch_size,
                                     learning_rate=e.lr, skip_weight=e.lambda_skip, seed=seed)
            train_time = time.perf_counter() - began
            test = _evaluate(julia_model, data.test.x, data.test.y, e.eval_batch_size or e.batch_size)
            final = EpochMetrics(epoch=epochs, step=epochs * batches, lr=e.lr, train_loss=losses[-1],
                                 train_accuracy=None, train_nfe=None, train_time=train_time,
                                 backward_time=None, test=test).flat()
            records.append(RunRecord(variant, seed, sum(p.numel() for p in model.parameters()), [final],
                                     backend="julia"))
            say(f"julia {VARIANT_NAMES[variant]} seed {seed}: acc {100 * final['test_accuracy']:.2f}%, "
                f"train {train_time:.1f}s")
    return records
