"""The paper's headline under its own protocol: continuous DEQ vs Neural ODE, trained regime.

Run (its own command; not part of ``python -m benchmarks``)::

    python -m benchmarks.bench_paper --quick             # a tiny MDEQ, a few steps: checks the pipeline
    python -m benchmarks.bench_paper                      # CPU mode (<= ~40 min on 2 quiet cores)
    python -m benchmarks.bench_paper --device cuda        # GPU mode, batch 128 (<= ~6 min of an H100/H200)
    python -m benchmarks.bench_paper --weights DIR        # continue every competitor from DIR, save back there

Claim under test (Pal, Edelman & Rackauckas, thesis version, CIFAR-10 small MDEQ): the
continuous DEQ trains 2.14x faster per batch than the Neural ODE (0.753 vs 1.608 s/batch),
all of it in the backward pass, at 80.8% vs 83.5% test accuracy. Protocol (both sides:
:mod:`pycdeq.models.paper_protocol`; competitors: :mod:`benchmarks._paper_models`): the
first ``pretrain`` steps unrolled at depth 5 for every model type, then training with each
competitor's own solve and gradient; AdamW, cosine schedule and skip-loss weight of
``pycdeq run cifar10-small-paper``.

The competitors train **in one process, interleaved** (each step: every competitor on the
same batch), so machine load hits them alike. Each step is timed in three parts (forward,
backward, optimiser; synchronised on CUDA) with its forward nfe, GMRES iterations (DEQs) or
backward nfe (Neural ODEs). Reported per competitor: s/batch averaged over the **trained part**
(by default the last half of this run's solved steps; ``--measure-from``), split, nfe, GMRES
iterations, final test accuracy, and a paper-style whole-run estimate (pretraining share of
the paper's run, 3,000 of 20,000 steps, at the measured pretraining cost, the rest at the
trained cost). ``paper_protocol.{json,md}`` are rewritten every ``--write-every`` seconds
(partial results survive an interruption), ``paper_protocol_steps.json`` holds every step,
``paper_protocol_cost.png`` plots per-step cost against the step.

Data: CIFAR-10 when ``--data-dir`` holds its python batches; else Fashion-MNIST as
``fashion-mnist-32`` (IDX files in ``--data-dir`` or Debian's folder); else synthetic
CIFAR-shaped images (timing only: the accuracies then mean nothing, and the table says so).

Reaching the trained regime: ``--weights DIR`` loads every competitor's model, optimiser,
step and schedule from DIR when they are there (same data, model sizes and seed; the batch
may differ) and saves them back at the end, so a long training run (the GPU mode, or the
paper's 3,000 + 17,000 steps) is done once and a later run, on any device, continues it and
measures the trained regime. Without saved weights a run starts from the common
initialisation and its per-step curve shows the regime change.

Sizes (``MODES``; every one overridable). ``--quick``: a 2-scale MDEQ with 8 channels, batch
8, 2 + 4 steps (~30 s). CPU: the paper's small MDEQ at batch 16, 100 unrolled + 40 solved
steps, 500 test images, one thread: from initialisation a round of the eight competitors
took ~50 s at batch 32 on a loaded 2-core machine (an f evaluation of the small MDEQ is
~0.2 s there, and at initialisation every solve runs to its cap), so about 40 minutes; it
reaches the trained regime only from saved weights. CUDA: batch 128, 1,000 unrolled + 200
solved steps, 2,000 test images, for ~6 minutes of an H100/H200 (``benchmarks/gpu.sh``).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from pycdeq.cli.experiments import EXPERIMENTS
from pycdeq.data import DatasetNotFoundError, load_dataset
from pycdeq.data.cifar10 import find_folder as find_cifar10
from pycdeq.layers import DEQOutput, EquilibriumLayer, NeuralODEOutput, NonConvergenceWarning

from . import _harness
from ._paper_models import (COMPETITORS, DEFAULT_COMPETITORS, TorchdiffeqNODE, TorchdiffeqOutput, build_competitor,
                           torchdiffeq_available)
from ._paper_report import PAPER_PRETRAIN, PAPER_STEPS, plot, replot, result_name, summarise, write_all

#: The training settings per model: the paper's CIFAR setup; for the dense model, pycdeq's
#: MNIST-dense setup (Adam, constant rate, no pretraining in the MNIST experiments).
SETUPS = {"cifar10-small": EXPERIMENTS["cifar10-small-paper"], "mnist-dense": EXPERIMENTS["mnist-dense"]}
assert (PAPER_STEPS, PAPER_PRETRAIN) == (SETUPS["cifar10-small"].steps, SETUPS["cifar10-small"].pretrain_steps)
QUICK_SIZES = {"channels": (8, 8), "head_channels": (4, 4), "final_channels": 32, "expansion": 2}
# (model, mode) -> (batch, pretrain steps, solved steps, test samples, model options)
MODES = {
    ("cifar10-small", "quick"): (8, 2, 4, 32, QUICK_SIZES),
    ("cifar10-small", "cpu"): (16, 100, 40, 500, {}),
    ("cifar10-small", "cuda"): (128, 1000, 200, 2000, {}),
    ("mnist-dense", "quick"): (8, 2, 4, 32, {}),
    ("mnist-dense", "cpu"): (32, 0, 1500, 2000, {}),
    ("mnist-dense", "cuda"): (32, 0, 1500, 2000, {}),
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny MDEQ and a few steps (pipeline check)")
    parser.add_argument("--model", default="cifar10-small", choices=tuple(SETUPS),
                        help="the paper's claim is on cifar10-small; mnist-dense reaches its trained regime on a CPU")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--data-dir", type=Path, default=None, help="CIFAR-10 batches or Fashion-MNIST IDX files")
    parser.add_argument("--batch", type=int, help="batch size (mode default: quick 8, cpu 32, cuda 128)")
    parser.add_argument("--pretrain-steps", type=int, help="unrolled depth-5 steps at the start of a run")
    parser.add_argument("--train-steps", type=int, help="solved steps after pretraining (in this invocation)")
    parser.add_argument("--measure-from", type=int, help="first step of the trained part (default: the last "
                        "half of this invocation's solved steps)")
    parser.add_argument("--schedule-steps", type=int, help="length of the cosine schedule (default: pretrain + "
                        "train steps of a run from scratch)")
    parser.add_argument("--test-samples", type=int, help="test samples for the final accuracy")
    parser.add_argument("--competitors", default=",".join(DEFAULT_COMPETITORS),
                        help=f"comma-separated subset of {','.join(COMPETITORS)} (default: the first "
                             f"{len(DEFAULT_COMPETITORS)}; the others are ways to make the DEQ cheaper)")
    parser.add_argument("--weights", type=Path, default=None, help="load / save every competitor's training state")
    parser.add_argument("--write-every", type=float, default=30.0, help="seconds between partial result files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget", type=float, default=None, metavar="S",
                        help="stop training after the round that passes S seconds, then evaluate and save "
                             "as a complete run (the GPU script's guard against its time limit)")
    parser.add_argument("--replot", type=Path, default=None, metavar="STEPS_JSON",
                        help="only redraw the cost plot from a *_steps.json file (next to it)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 1 on CPU: with shared cores OpenMP's spinning made "
                             "steps 10-100x slower, measured; a quiet machine may pass its core count)")
    return parser


# --- data ------------------------------------------------------------------------------------

def load_data(model: str, data_dir: Optional[Path], test_samples: int, seed: int):
    """``(splits, description, real)``: CIFAR-10, else fashion-mnist-32, else synthetic (timing only);
    the dense model: Fashion-MNIST, else synthetic MNIST-shaped images."""
    if model == "mnist-dense":
        try:
            return load_dataset("fashion-mnist", data_dir=data_dir, limit_test=test_samples, seed=seed), \
                "Fashion-MNIST", True
        except DatasetNotFoundError:
            data = load_dataset("synthetic", shape="mnist", n_train=4096, n_test=test_samples, seed=seed)
            return data, "synthetic MNIST-shaped images (timing only: accuracies are meaningless)", False
    if data_dir is not None and find_cifar10(Path(data_dir)) is not None:
        data = load_dataset("cifar10", data_dir=data_dir, limit_test=test_samples, seed=seed)
        return data, "CIFAR-10", True
    try:
        data = load_dataset("fashion-mnist-32", data_dir=data_dir, limit_test=test_samples, seed=seed)
        return data, "Fashion-MNIST padded to 3x32x32 (fashion-mnist-32)", True
    except DatasetNotFoundError:
        data = load_dataset("synthetic", shape="cifar10", n_train=4096, n_test=test_samples, seed=seed)
        return data, "synthetic CIFAR-shaped images (timing only: accuracies are meaningless)", False


class Batches:
    """Step ``k``'s batch: a seeded permutation per epoch, the same for every competitor."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int, device):
        self.x, self.y, self.batch, self.seed, self.device = x, y, batch, seed, device
        self.per_epoch = max(1, len(y) // batch)
        self._epoch, self._order = None, None

    def __call__(self, step: int):
        epoch, index = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.y), generator=generator)
        rows = self._order[index * self.batch:(index + 1) * self.batch]
        return self.x[rows].to(self.device), self.y[rows].to(self.device)


# --- one competitor's training state ------------------------------------------------------------

def _layers(model) -> list:
    return [m for m in model.modules() if isinstance(m, (EquilibriumLayer, TorchdiffeqNODE))]


def _backward_nfe(output) -> Optional[int]:
    """Calls of f by a continuous adjoint's backward solve (None for other gradients)."""
    if isinstance(output, NeuralODEOutput) and output.trajectory is not None:
        stats = output.trajectory.adjoint
    elif isinstance(output, TorchdiffeqOutput):
        stats = output.adjoint
    else:
        return None
    if not stats:
        return None
    nfe = stats.get("nfe")
    return nfe() if callable(nfe) else nfe


@dataclass
class Run:
    key: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    records: List[dict] = field(default_factory=list)
    test: Optional[dict] = None

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step}

    def load(self, state: dict) -> None:
        """Take ``state`` over as this run's own: the optimiser's moments are copied (its
        ``load_state_dict`` keeps tensors that already match, which would share them)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.step = state["step"]


def learning_rate(setup, step: int, schedule_steps: int) -> float:
    """The setup's rate: constant, or cosine from ``lr`` to ``lr_min`` over ``schedule_steps``."""
    if setup.schedule == "constant":
        return setup.lr
    progress = min(step / schedule_steps, 1.0)
    return setup.lr_min + (setup.lr - setup.lr_min) * (1 + math.cos(math.pi * progress)) / 2


def make_optimizer(setup, model) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if setup.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=setup.lr, weight_decay=setup.weight_decay)


def train_step(run: Run, x, y, *, depth: int, lr: float, lambda_skip: float, device) -> dict:
    """One timed step: forward (loss included), backward, optimiser."""
    for layer in _layers(run.model):
        layer.fixed_depth = depth
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.model.train()
    _harness.synchronize(device)
    began = time.perf_counter()
    logits, solution = run.model(x)
    loss = F.cross_entropy(logits, y) + lambda_skip * solution.skip_loss
    _harness.synchronize(device)
    forward_done = time.perf_counter()
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _harness.synchronize(device)
    backward_done = time.perf_counter()
    run.optimizer.step()
    _harness.synchronize(device)
    done = time.perf_counter()
    adjoint = solution.adjoint if isinstance(solution, DEQOutput) else None
    record = {"step": run.step, "phase": "pretrain" if depth else "train", "forward": forward_done - began,
              "backward": backward_done - forward_done, "optimizer": done - backward_done, "total": done - began,
              "nfe": solution.nfe, "gmres": adjoint.vjps if adjoint is not None else None,
              "backward_nfe": _backward_nfe(solution), "loss": float(loss.detach()),
              "nonconverged": int((solution.status != 0).sum())}
    for layer in _layers(run.model):
        layer.fixed_depth = 0
    run.step += 1
    run.records.append(record)
    return record


@torch.no_grad()
def evaluate(model, data, batch: int, device) -> dict:
    model.eval()
    correct, nfe = 0, []
    for start in range(0, len(data.test), batch):
        x = data.test.x[start:start + batch].to(device)
        logits, solution = model(x)
        correct += int((logits.argmax(dim=1).cpu() == data.test.y[start:start + batch]).sum())
        nfe.append(solution.nfe)
    return {"accuracy": 100.0 * correct / len(data.test), "test_nfe": statistics.fmean(nfe)}


# --- the run -------------------------------------------------------------------------------------

def _weights_path(folder: Path, key: str) -> Path:
    return folder / f"{key}.pt"


#: What saved weights must share with the run that loads them (the batch size may differ:
#: the trained regime is a property of the weights; the schedule is the saved one).
_FINGERPRINT = ("model", "data", "model_options", "seed")


def _load_weights(runs: Dict[str, Run], folder: Path, settings: dict) -> Optional[dict]:
    """Load every competitor saved in ``folder``; returns the saved run's schedule, or None."""
    schedule = None
    for key, run in runs.items():
        path = _weights_path(folder, key)
        if not path.is_file():
            continue
        state = torch.load(path, map_location=settings["device"], weights_only=False)
        mine = {k: settings[k] for k in _FINGERPRINT}
        if state["fingerprint"] != mine:
            raise SystemExit(f"{path} was trained with other settings: {state['fingerprint']} vs {mine}")
        run.load(state)
        schedule = state["schedule"]
    return schedule


def _save_weights(runs: Dict[str, Run], folder: Path, settings: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    schedule = {k: settings[k] for k in ("pretrain_steps", "schedule_steps")}
    for key, run in runs.items():
        torch.save({**run.state(), "fingerprint": {k: settings[k] for k in _FINGERPRINT}, "schedule": schedule},
                   _weights_path(folder, key))


def _pretrain_groups(runs: Dict[str, Run]) -> Dict[str, List[str]]:
    groups: Dict[str, List[str]] = {}
    for key in runs:
        groups.setdefault(COMPETITORS[key].pretrain_group, []).append(key)
    return groups


def run(args) -> List[dict]:
    mode = "quick" if args.quick else args.device
    setup = SETUPS[args.model]
    batch, pretrain_steps, train_steps, test_samples, model_options = MODES[args.model, mode]
    batch = args.batch or batch
    pretrain_steps = pretrain_steps if args.pretrain_steps is None else args.pretrain_steps
    train_steps = train_steps if args.train_steps is None else args.train_steps
    test_samples = args.test_samples or test_samples
    device = torch.device(args.device)
    if args.threads is not None or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but CUDA is not available")
    keys = [k.strip() for k in args.competitors.split(",") if k.strip()]
    unknown = [k for k in keys if k not in COMPETITORS]
    if unknown:
        raise SystemExit(f"unknown competitor(s) {unknown}; choose from {', '.join(COMPETITORS)}")
    skipped = []
    if not torchdiffeq_available():
        skipped = [k for k in keys if COMPETITORS[k].torchdiffeq]
        keys = [k for k in keys if not COMPETITORS[k].torchdiffeq]
    out_dir = Path(args.out) if args.out else _harness.RESULTS
    data, data_name, real = load_data(args.model, args.data_dir, test_samples, args.seed)
    runs = {}
    for key in keys:
        model = build_competitor(key, architecture=args.model, model_options=model_options,
                                 num_classes=data.num_classes, input_shape=data.input_shape, device=device,
                                 seed=args.seed)
        runs[key] = Run(key, model, make_optimizer(setup, model))
    settings = {"model": args.model, "data": data_name, "real_data": real, "batch": batch, "device": str(device), "mode": mode,
                "threads": torch.get_num_threads(),
                "pretrain_steps": pretrain_steps, "model_options": {k: list(v) if isinstance(v, tuple) else v
                                                                    for k, v in model_options.items()},
                "schedule_steps": args.schedule_steps or pretrain_steps + train_steps, "seed": args.seed,
                "skipped": skipped}
    saved = _load_weights(runs, args.weights, settings) if args.weights is not None else None
    if saved is not None:  # continue the saved run's schedule unless told otherwise
        pretrain_steps = saved["pretrain_steps"] if args.pretrain_steps is None else pretrain_steps
        settings["pretrain_steps"] = pretrain_steps
        settings["schedule_steps"] = args.schedule_steps or saved["schedule_steps"]
    first = min(run.step for run in runs.values())
    if any(run.step != first for run in runs.values()):
        raise SystemExit("the saved competitors are at different steps; train them together")
    last = max(first, pretrain_steps) + train_steps
    solved_from = max(first, pretrain_steps)
    settings.update(first_step=first, last_step=last - 1,
                    measure_from=args.measure_from if args.measure_from is not None
                    else solved_from + (last - solved_from) // 2)
    batches = Batches(data.train.x, data.train.y, batch, args.seed, device)
    print(f"[bench_paper] {mode}: {', '.join(keys)} on {data_name}, batch {batch}, steps {first}..{last - 1} "
          f"(pretraining < {pretrain_steps}){'; skipped (no torchdiffeq): ' + ', '.join(skipped) if skipped else ''}",
          flush=True)
    last_write = began = time.perf_counter()
    complete = False
    try:
        with warnings.catch_warnings():
            # Non-convergence and early-stopping adjoints are counted per step, not warned about.
            warnings.simplefilter("ignore", NonConvergenceWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            for step in range(first, last):
                x, y = batches(step)
                lr = learning_rate(setup, step, settings["schedule_steps"])
                if step < pretrain_steps:
                    # Members of a group compute the same unrolled function: train the first, copy.
                    for members in _pretrain_groups(runs).values():
                        leader = runs[members[0]]
                        record = train_step(leader, x, y, depth=setup.pretrain_depth, lr=lr,
                                            lambda_skip=setup.lambda_skip, device=device)
                        for key in members[1:]:
                            runs[key].load(leader.state())
                            runs[key].records.append({**record, "shared_with": leader.key})
                else:
                    for run_ in runs.values():
                        train_step(run_, x, y, depth=0, lr=lr, lambda_skip=setup.lambda_skip, device=device)
                if args.time_budget is not None and time.perf_counter() - began > args.time_budget:
                    settings["stopped_by_time_budget"] = True
                    settings["last_step"] = step
                    if args.measure_from is None:
                        settings["measure_from"] = solved_from + max(0, step + 1 - solved_from) // 2
                    print(f"[bench_paper] time budget of {args.time_budget:g} s reached after step {step}", flush=True)
                    break
                if time.perf_counter() - last_write > args.write_every:
                    write_all(runs, settings, out_dir, complete=False)
                    if args.weights is not None:  # every competitor has finished the same step
                        _save_weights(runs, args.weights, settings)
                    last_write = time.perf_counter()
                    print(f"[bench_paper] step {step}: partial results written", flush=True)
            for run_ in runs.values():
                run_.test = evaluate(run_.model, data, batch, device)
        complete = True
    finally:
        write_all(runs, settings, out_dir, complete=complete)
        if complete:
            plot({key: run_.records for key, run_ in runs.items()}, settings, out_dir)
            if args.weights is not None:
                _save_weights(runs, args.weights, settings)
    rows = summarise(runs, settings["measure_from"], real)
    print((out_dir / f"{result_name(settings)}.md").read_text(), flush=True)
    return rows


def main(argv=None) -> None:
    args = make_parser().parse_args(argv)
    if args.replot is not None:
        replot(args.replot)
        return
    threads = torch.get_num_threads()
    try:
        run(args)
    finally:  # main() may be called in-process (tests): leave torch as found
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
