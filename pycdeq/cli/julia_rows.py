"""``pycdeq run --julia``: the same experiment trained by the Julia backend, as extra rows.

The Julia path exists for the MNIST-dense model (``pycdeq.julia.JuliaModel``): each
(variant, seed) model is built exactly as for the torch runs (same seed, same initial
weights), copied to Julia, trained there by ``JuliaModel.fit`` (Adam, cross entropy +
``lambda_skip`` x skip loss) and evaluated batch by batch here. Julia reports neither a
per-batch backward time nor per-sample convergence, so those cells stay empty (``None``).
Variants the translation does not support are skipped with the reason; juliacall is
imported only by ``pycdeq.julia`` itself, on first use.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, List, Optional

import torch

from ..models import build_model
from .experiments import VARIANT_NAMES, Experiment
from .report import RunRecord


class JuliaUnavailable(RuntimeError):
    """--julia was asked for but the backend cannot run here (message: the backend's status)."""


def check_available() -> None:
    from .. import julia

    if not julia.available():
        raise JuliaUnavailable(julia.status())


def _evaluate(julia_model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict:
    correct = nfe = batches = 0
    predict_time = 0.0
    for start in range(0, x.shape[0], batch_size):
        began = time.perf_counter()
        out = julia_model.forward(x[start:start + batch_size])
        predict_time += time.perf_counter() - began
        correct += int((out.logits.argmax(dim=1) == y[start:start + batch_size]).sum())
        nfe += out.nfe
        batches += 1
    return {"test_accuracy": correct / x.shape[0], "test_nfe": nfe / batches if nfe >= 0 else None,
            "test_nonconverged_fraction": None, "test_predict_time": predict_time / batches,
            "test_samples": int(x.shape[0])}


def julia_records(experiment: Experiment, data, epochs: int, model_kwargs: Callable[[str, Any], dict],
                  say: Callable[[str], None], *, bridge: Optional[Any] = None) -> List[RunRecord]:
    """Train and evaluate every (variant, seed) in Julia; one :class:`RunRecord` each."""
    from ..julia import JuliaModel, TranslationError

    e = experiment
    if e.steps is not None:
        say("julia: --steps is not supported by the Julia trainer; it trains whole epochs")
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
            final = {"epoch": epochs, "step": epochs * batches, "lr": e.lr, "train_loss": losses[-1],
                     "train_accuracy": None, "train_nfe": None, "train_time": train_time, "backward_time": None,
                     **_evaluate(julia_model, data.test.x, data.test.y, e.eval_batch_size or e.batch_size)}
            records.append(RunRecord(variant, seed, sum(p.numel() for p in model.parameters()), [final],
                                     backend="julia"))
            say(f"julia {VARIANT_NAMES[variant]} seed {seed}: acc {100 * final['test_accuracy']:.2f}%, "
                f"train {train_time:.1f}s")
    return records
