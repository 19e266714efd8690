"""The results of an experiment: the paper-layout table, results.json / results.csv, PNG plots.

Every file, plots included, is written atomically
(:func:`pycdeq.training.atomic_write_bytes`), so an interrupted run never leaves half a
results file. Per-run metrics come from the last
completed epoch (the trained model): test accuracy, test nfe (mean over evaluation batches
of the solver's function evaluations), predict s/batch, non-converged fraction; train time
is the total of the training steps, backward s/batch the mean over the run's batches.
Across seeds: mean and sample standard deviation (none for a single seed).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..training import atomic_write_bytes, atomic_write_text
from .experiments import VARIANT_NAMES, Experiment

STATUSES = ("complete", "interrupted", "failed")


@dataclass
class RunRecord:
    """One (backend, variant, seed) run: its per-epoch history (``EpochMetrics.flat()`` dicts)."""

    variant: str
    seed: int
    parameters: int
    history: List[dict] = field(default_factory=list)
    status: str = "complete"  #: "complete" | "interrupted" | "failed"
    backend: str = "pytorch"
    world_size: int = 1  #: processes that trained it (torchrun data parallel)

    @property
    def name(self) -> str:
        prefix = "" if self.backend == "pytorch" else f"{self.backend}-"
        return f"{prefix}{self.variant}-seed{self.seed}"

    @property
    def final(self) -> Optional[dict]:
        return self.history[-1] if self.history else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunRecord":
        """The record :meth:`to_dict` wrote; ``TypeError`` / ``ValueError`` naming what is wrong."""
        if not isinstance(data, dict):
            raise TypeError(f"a run record is a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
            raise ValueError(f"run record keys: missing {missing}, unknown {unknown}")
        record = cls(**data)
        if not (isinstance(record.variant, str) and isinstance(record.backend, str)
                and isinstance(record.seed, int) and isinstance(record.parameters, int)):
            raise TypeError("run record: variant and backend must be strings, seed and parameters ints")
        if record.status not in STATUSES:
            raise ValueError(f"run record: status must be one of {STATUSES}, got {record.status!r}")
        if not isinstance(record.history, list) or not all(isinstance(h, dict) for h in record.history):
            raise TypeError("run record: history must be a list of per-epoch objects")
        return record

    def metrics(self) -> Dict[str, float]:
        """The paper's per-run numbers (see the module docstring)."""
        final = self.final
        if final is None:
            raise ValueError(f"run record {self.variant} seed {self.seed} has no finished epoch")
        backward: List[Optional[float]] = [h["backward_time"] for h in self.history]
        nonconverged = final["test_nonconverged_fraction"]
        return {"accuracy": 100.0 * final["test_accuracy"], "nfe": final["test_nfe"],
                "train_time": final["train_time"], "train_s_per_batch": final["train_time"] / max(final["step"], 1),
                "backward_s_per_batch": _mean_or_none(backward),
                "predict_s_per_batch": final["test_predict_time"],
                "nonconverged_percent": None if nonconverged is None else 100.0 * nonconverged}


METRICS = ("accuracy", "nfe", "train_time", "train_s_per_batch", "backward_s_per_batch", "predict_s_per_batch",
           "nonconverged_percent")


def _mean_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    """The mean, or None when any value is missing (a backend that does not report it)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known and len(known) == len(values) else None


def _mean_std(values: Sequence[Optional[float]]):
    """Mean and sample std; a metric a backend does not report (None) stays None."""
    known = [v for v in values if v is not None]
    if not known:
        return None, None
    mean = sum(known) / len(known)
    if len(known) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in known) / (len(known) - 1))


def summarize(experiment: Experiment, records: Sequence[RunRecord]) -> List[dict]:
    """One row per (backend, variant) over its complete runs, in the experiment's variant order."""
    rows = []
    for backend in dict.fromkeys(r.backend for r in records):
        for variant in experiment.variants:
            done = [r for r in records if r.backend == backend and r.variant == variant
                    and r.status == "complete" and r.final is not None and "test_accuracy" in r.final]
            if not done:
                continue
            label = VARIANT_NAMES[variant] + ("" if backend == "pytorch" else f" ({backend})")
            row = {"model": label, "variant": variant, "backend": backend,
                   "continuous": experiment.continuous or variant == "node",
                   "jacobian_reg": experiment.train.lambda_jac > 0 and variant != "node",
                   "parameters": done[0].parameters, "seeds": len(done)}
            per_run = [r.metrics() for r in done]
            for metric in METRICS:
                row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std([m[metric] for m in per_run])
            rows.append(row)
    return rows


# --- the terminal table ------------------------------------------------------------------------
_COLUMNS = (  # header, metric, digits
    ("Test acc (%)", "accuracy", 2), ("Test NFE", "nfe", 1), ("Train (s)", "train_time", 1),
    ("Backward (s/batch)", "backward_s_per_batch", 4), ("Predict (s/batch)", "predict_s_per_batch", 4),
    ("Non-conv. (%)", "nonconverged_percent", 1),
)


def _pm(row: dict, metric: str, digits: int) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(rows: Sequence[dict], title: str = "") -> str:
    """The paper's layout: model, continuous, Jacobian reg., params, then mean ± std per metric."""
    header = ["Model", "Cont.", "Jac.", "Params", "Seeds"] + [c[0] for c in _COLUMNS]
    body = [[row["model"], "yes" if row["continuous"] else "no", "yes" if row["jacobian_reg"] else "no",
             f"{row['parameters']:,}", str(row["seeds"])] + [_pm(row, m, d) for _, m, d in _COLUMNS]
            for row in rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]

    def fmt(line):
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))

    lines = ([title] if title else []) + [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(b) for b in body]
    if not rows:
        lines.append("(no completed runs)")
    return "\n".join(lines)


# --- files ---------------------------------------------------------------------------------------
def _csv_text(rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def write_results(out: Path, experiment: Experiment, records: Sequence[RunRecord], *, interrupted: bool = False,
                  error: Optional[str] = None) -> List[dict]:
    """results.json (settings, every run's history, the summary), results.csv (the summary),
    history.csv (one line per run and epoch), table.txt. Returns the summary rows."""
    rows = summarize(experiment, records)
    payload = {"experiment": experiment.to_dict(), "interrupted": interrupted, "error": error,
               "complete": not interrupted and error is None and all(r.status == "complete" for r in records),
               "summary": rows, "runs": [r.to_dict() for r in records]}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(out / "results.csv", _csv_text(rows))
    history = [{"backend": r.backend, "variant": r.variant, "seed": r.seed, **h} for r in records for h in r.history]
    atomic_write_text(out / "history.csv", _csv_text(history))
    atomic_write_text(out / "table.txt", format_table(rows) + "\n")
    return rows


def read_results(path: Path) -> Optional[dict]:
    """A results.json's content; None when it is missing or unreadable (nothing to protect)."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def completed_runs(results: dict) -> int:
    """How many complete runs a results.json's content holds."""
    runs = results.get("runs")
    return sum(isinstance(r, dict) and r.get("status") == "complete" for r in runs) if isinstance(runs, list) else 0


def _save_figure(figure, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)  # the Agg canvas: no display, no global pyplot state
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, png.getvalue())


def _curves(records: Sequence[RunRecord], key: str, scale: float, ylabel: str, path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    groups: Dict[str, List[RunRecord]] = {}
    for r in records:
        if r.history and all(h.get(f"test_{key}") is not None for h in r.history):
            groups.setdefault(VARIANT_NAMES[r.variant] + ("" if r.backend == "pytorch" else f" ({r.backend})"),
                              []).append(r)
    for index, (label, runs) in enumerate(groups.items()):
        color = f"C{index}"
        for r in runs:  # each seed faintly, the mean over seeds boldly
            axes.plot([h["epoch"] for h in r.history], [scale * h[f"test_{key}"] for h in r.history],
                      color=color, alpha=0.3, linewidth=1)
        length = min(len(r.history) for r in runs)
        mean = [scale * sum(r.history[e][f"test_{key}"] for r in runs) / len(runs) for e in range(length)]
        axes.plot(range(1, length + 1), mean, color=color, marker="o", label=label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    if groups:
        axes.legend()
    _save_figure(figure, path)


def write_plots(out: Path, records: Sequence[RunRecord], rows: Sequence[dict]) -> List[Path]:
    """accuracy.png and nfe.png (test, per epoch per variant), train_time.png (per variant)."""
    from matplotlib.figure import Figure

    paths = [out / "accuracy.png", out / "nfe.png", out / "train_time.png"]
    _curves(records, "accuracy", 100.0, "test accuracy (%)", paths[0])
    _curves(records, "nfe", 1.0, "test NFE (per batch)", paths[1])
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    labels = [row["model"] for row in rows]
    axes.bar(range(len(rows)), [row["train_time_mean"] or 0.0 for row in rows],
             yerr=[row["train_time_std"] or 0.0 for row in rows], color=[f"C{i}" for i in range(len(rows))],
             capsize=4)
    axes.set_xticks(range(len(rows)), labels, rotation=15)
    axes.set_ylabel("train time (s)")
    axes.grid(alpha=0.3, axis="y")
    _save_figure(figure, paths[2])
    return paths
