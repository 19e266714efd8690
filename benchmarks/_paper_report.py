"""Reporting of ``bench_paper``: the summary table, the notes, the per-step file and the cost plot."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Dict, List, Optional

from pycdeq.training.files import atomic_write_text

from . import _harness
from ._paper_models import CHEAPER, COMPETITORS, PAPER_DEQ, PAPER_NODE

NAME = "paper_protocol"


def result_name(settings: dict) -> str:
    """``paper_protocol`` for the paper's model at its sizes, ``paper_protocol_<model>`` for
    another model, with ``_reduced`` when the sizes were reduced (``--quick``)."""
    model = settings.get("model", "cifar10-small")
    name = NAME if model == "cifar10-small" else f"{NAME}_{model.replace('-', '_')}"
    return name + ("_reduced" if settings.get("model_options") else "")
#: The paper's run: 20,000 steps of which 3,000 unrolled (the whole-run estimate's weights).
PAPER_STEPS, PAPER_PRETRAIN = 20_000, 3_000


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(statistics.fmean(values)) if values else None


def summarise(runs: Dict[str, object], measure_from: int, real_data: bool) -> List[dict]:
    rows = []
    for key, run in runs.items():
        trained = [r for r in run.records if r["phase"] == "train" and r["step"] >= measure_from]
        pretrain = [r for r in run.records if r["phase"] == "pretrain"]
        row = {"competitor": COMPETITORS[key].label, "key": key, "steps_measured": len(trained)}
        for part in ("total", "forward", "backward", "optimizer"):
            row[f"{part}_s"] = _mean(r[part] for r in trained)
        row.update(nfe=_mean(r["nfe"] for r in trained), gmres=_mean(r["gmres"] for r in trained),
                   backward_nfe=_mean(r["backward_nfe"] for r in trained),
                   nonconverged=_mean(r["nonconverged"] for r in trained),
                   pretrain_s=_mean(r["total"] for r in pretrain))
        if row["total_s"] is not None and row["pretrain_s"] is not None:
            share = PAPER_PRETRAIN / PAPER_STEPS
            row["paper_run_s"] = share * row["pretrain_s"] + (1 - share) * row["total_s"]
        if run.test is not None:
            row["test_accuracy"] = run.test["accuracy"] if real_data else None
            row["test_nfe"] = run.test["test_nfe"]
        rows.append(row)
    by_key = {r["key"]: r for r in rows}
    node = by_key.get(PAPER_NODE, {}).get("total_s")
    for row in rows:
        if node and row["total_s"]:
            row["paper_node_over_this"] = node / row["total_s"]
        if row["key"] == PAPER_DEQ and "paper_node_over_this" in row:
            row["target"] = ">= 2x vs paper Neural ODE"
            row["target_met"] = bool(row["paper_node_over_this"] >= 2.0)
    return rows


COLUMNS = ["competitor", "steps_measured", "total_s", "forward_s", "backward_s", "optimizer_s",
           "paper_node_over_this", "nfe", "gmres", "backward_nfe", "nonconverged", "pretrain_s",
           "paper_run_s", "test_accuracy", "test_nfe"]


def notes_for(rows: List[dict], settings: dict, complete: bool) -> str:
    by_key = {r["key"]: r for r in rows}
    lines = [f"{'Complete run' if complete else '**Partial results** (run interrupted or still going)'}: "
             f"{settings.get('model', 'cifar10-small')}"
             f"{' with reduced sizes ' + str(settings['model_options']) if settings.get('model_options') else ''} on "
             f"{settings['data']}, batch {settings['batch']}, {settings['device']}; steps {settings['first_step']}"
             f"..{settings['last_step']} of a schedule of {settings['schedule_steps']} (pretraining: steps < "
             f"{settings['pretrain_steps']}); trained part: steps >= {settings['measure_from']}. Times are "
             "s/batch (mean over the trained part); `paper_node_over_this` is the paper Neural ODE's "
             "s/batch over this competitor's; `gmres`: GMRES products per step (DEQs); `backward_nfe`: "
             "f evaluations of a continuous adjoint's backward solve; `nonconverged`: samples per batch "
             "that ended a solve without passing its test (or, Neural ODEs, without reaching t = 1); "
             "`paper_run_s`: the paper's whole-run average (3,000 pretraining of 20,000 steps) estimated "
             "from the measured pretraining and trained costs."]
    if settings.get("stopped_by_time_budget"):
        lines.append(f"Training stopped by the time budget after step {settings['last_step']}.")
    deq, node = by_key.get(PAPER_DEQ), by_key.get(PAPER_NODE)
    if deq and deq.get("nonconverged") is not None and deq["nonconverged"] > settings["batch"] / 2:
        lines.append(f"**Not the trained regime**: the paper-protocol DEQ's solves still end without passing "
                     f"the steady-state test ({deq['nonconverged']:.1f} of {settings['batch']} samples per batch "
                     f"in the measured steps), so its cost is that of the step caps. Continue the run "
                     f"(`--weights DIR`) until the cost plot flattens.")
    if deq and node and deq.get("total_s") and node.get("total_s"):
        paper = ("paper: 2.14x" if settings.get("model", "cifar10-small") == "cifar10-small"
                 else "the paper has no Neural ODE row for this model")
        lines.append(
            f"Headline: the continuous DEQ under the paper's protocol takes {deq['total_s']:.3g} s/batch against "
            f"{node['total_s']:.3g} for the paper's Neural ODE ({node['total_s'] / deq['total_s']:.2f}x; {paper}): forward {deq['forward_s']:.3g} vs {node['forward_s']:.3g} s ({deq['nfe']:.1f} vs "
            f"{node['nfe']:.1f} f evaluations), backward {deq['backward_s']:.3g} vs {node['backward_s']:.3g} s "
            f"({deq['gmres'] if deq['gmres'] is not None else float('nan'):.1f} GMRES products vs "
            f"{node['backward_nfe'] if node['backward_nfe'] is not None else float('nan'):.1f} backward f "
            f"evaluations).")
    return "\n\n".join(lines)


def write_all(runs, settings, out_dir: Path, complete: bool) -> None:
    rows = summarise(runs, settings["measure_from"], settings["real_data"])
    model, name = settings.get("model", "cifar10-small"), result_name(settings)
    _harness.write_results(name, rows, COLUMNS, title=f"The paper's headline under its protocol: continuous DEQ "
                           f"vs Neural ODE ({model})", notes=notes_for(rows, settings, complete), out_dir=out_dir)
    steps = {"settings": settings, "complete": complete,
             "records": {key: run.records for key, run in runs.items()}}
    atomic_write_text(out_dir / f"{name}_steps.json", json.dumps(steps))


def _running_median(values: List[float], window: int) -> List[float]:
    return [statistics.median(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]


def plot(records: Dict[str, List[dict]], settings: dict, out_dir: Path) -> None:
    """Three panels over the training steps, per competitor: s per step, speed relative to the
    paper's Neural ODE at the same step (interleaved, so machine load cancels out), and the
    forward nfe. ``records``: competitor key -> its per-step records."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (cost, relative, nfe) = plt.subplots(3, 1, figsize=(9, 11), sharex=True)
    colours = plt.get_cmap("tab20").colors
    length = max((len(r) for r in records.values()), default=1)
    window = max(1, length // 40)
    reference = {r["step"]: r["total"] for r in records.get(PAPER_NODE, [])}
    for index, (key, rows) in enumerate(records.items()):
        style = dict(color=colours[(2 * index) % 20 + (index >= 10)], label=COMPETITORS[key].label,
                     linestyle="--" if key in CHEAPER else "-", linewidth=1.2)
        steps = [r["step"] for r in rows]
        cost.plot(steps, _running_median([r["total"] for r in rows], window), **style)
        paired = [(r["step"], reference[r["step"]] / r["total"]) for r in rows if r["step"] in reference]
        if paired:
            relative.plot([p[0] for p in paired], _running_median([p[1] for p in paired], window), **style)
        nfe.plot(steps, _running_median([r["nfe"] for r in rows], window), **style)
    for axis in (cost, relative, nfe):
        if settings["pretrain_steps"] > 0:
            axis.axvline(settings["pretrain_steps"] - 0.5, color="grey", linestyle=":", linewidth=1)
        axis.grid(alpha=0.3)
    cost.set_yscale("log")
    relative.set_yscale("log")
    cost.set_ylabel("s per training step")
    relative.set_ylabel("speed vs the paper's Neural ODE\n(its s per step / this one's, same step)")
    nfe.set_ylabel("forward f evaluations per step")
    nfe.set_xlabel(f"training step (running medians of {window}"
                   f"{'; dotted: end of the unrolled pretraining' if settings['pretrain_steps'] > 0 else ''})")
    cost.legend(fontsize=7, ncol=2)
    cost.set_title(f"Per-step cost over training: {settings.get('model', 'cifar10-small')} on "
                   f"{settings['data'].split(' (')[0]}, batch {settings['batch']}")
    figure.tight_layout()
    figure.savefig(out_dir / f"{result_name(settings)}_cost.png", dpi=110)
    plt.close(figure)


def replot(steps_file: Path) -> None:
    """Redraw the cost plot from a ``*_steps.json`` file, next to it."""
    data = json.loads(Path(steps_file).read_text())
    plot(data["records"], data["settings"], Path(steps_file).parent)
