"""Scaling: time per training step vs batch size and vs state size (issue 7 item 8).

Run: ``python -m benchmarks.bench_scaling [--quick] [--device cpu|cuda] [--out DIR]``.
Writes ``scaling.{json,md}`` and the plots ``scaling_batch.png``, ``scaling_state.png``.

The MNIST-dense model (paper solver settings) as a continuous DEQ, a discrete DEQ (L-Broyden)
and a Neural ODE with backprop, all with the same weights at each point. One training step =
forward, backward and an optimizer step; the optimizer is SGD with learning rate 0 so every
repeat does exactly the same work (the weights, hence the nfe, stay put). Points: batch
1..1024 at state 128, and state 32..512 at batch 128; at each point the three methods run
interleaved, medians of the repeats. ``nfe`` is the forward's: with per-sample termination the
batch runs until its slowest sample stops, so a DEQ's nfe grows with the batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from . import _harness
from .bench_training import copy_shared_weights, make_parser, quiet_nonconvergence, resolve_device, seeded_model

METHODS = {  # label -> build_model options
    "continuous DEQ": {"variant": "vanilla", "continuous": True},
    "discrete DEQ (Broyden)": {"variant": "vanilla", "continuous": False},
    "Neural ODE (backprop)": {"variant": "node"},
}
IN_FEATURES = 784


def _models(width: int, device) -> Dict[str, torch.nn.Module]:
    reference = seeded_model("mnist-dense", "vanilla", device, width=width)
    models = {}
    for label, options in METHODS.items():
        model = seeded_model("mnist-dense", device=device, width=width, **options)
        copy_shared_weights(reference, model)
        models[label] = model.train()
    return models


def _step_fn(model, x, y, record: dict):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def step():
        logits, solution = model(x)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(logits, y).backward()
        optimizer.step()
        record["nfe"] = solution.nfe
    return step


def measure_point(batch: int, width: int, repeats: int, device) -> List[dict]:
    gen = torch.Generator().manual_seed(batch * 7919 + width)
    x = torch.rand(batch, IN_FEATURES, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    records = {label: {} for label in METHODS}
    steps = {label: _step_fn(m, x, y, records[label]) for label, m in _models(width, device).items()}
    with quiet_nonconvergence():
        times = _harness.interleaved(steps, repeats=repeats, warmup=1, device=device)
    rows = []
    for label in METHODS:
        t = _harness.median(times[label])
        rows.append({"batch": batch, "state": width, "method": label, "step_ms": t * 1e3,
                     "us_per_sample": t * 1e6 / batch, "nfe": records[label]["nfe"]})
    return rows


def plot(rows: List[dict], axis: str, fixed: dict, path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label in METHODS:
        points = sorted((r[axis], r["step_ms"]) for r in rows if r["method"] == label
                        and all(r[k] == v for k, v in fixed.items()))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size" if axis == "batch" else "state size (width of f)")
    ax.set_ylabel("time per training step (ms)")
    what = ", ".join(f"{k} {v}" for k, v in fixed.items())
    ax.set_title(f"MNIST-dense, {what}, {device}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def run(quick: bool = False, device: str = "cpu", out_dir: Optional[Path] = None, *,
        batches: Optional[Sequence[int]] = None, states: Optional[Sequence[int]] = None,
        repeats: Optional[int] = None, base_batch: int = 128, base_state: int = 128) -> List[str]:
    """Measure and write ``scaling.{json,md}`` and the two plots; the keyword arguments override
    the sizes (the smoke test runs a tiny grid)."""
    dev = resolve_device(device)
    out = Path(out_dir) if out_dir else _harness.RESULTS
    batches = batches or ([1, 16, 256, 1024] if quick else [1, 4, 16, 64, 256, 1024])
    states = states or ([32, 128, 512] if quick else [32, 64, 128, 256, 512])
    repeats = repeats or (2 if quick else 3)
    rows = []
    for batch in batches:
        rows += [dict(r, axis="batch") for r in measure_point(batch, base_state, repeats, dev)]
    for width in states:
        rows += [dict(r, axis="state") for r in measure_point(base_batch, width, repeats, dev)]
    plot([r for r in rows if r["axis"] == "batch"], "batch", {"state": base_state}, out / "scaling_batch.png",
         dev.type)
    plot([r for r in rows if r["axis"] == "state"], "state", {"batch": base_batch}, out / "scaling_state.png",
         dev.type)
    notes = (f"Medians of {repeats} interleaved repeats per point after one warm-up round; SGD with lr 0 so "
             f"every repeat does the same work. Plots: `scaling_batch.png` (state {base_state}), "
             f"`scaling_state.png` (batch {base_batch}).\n\n![time per step vs batch](scaling_batch.png) "
             "![time per step vs state](scaling_state.png)")
    _harness.write_results("scaling", rows, ["axis", "batch", "state", "method", "step_ms", "us_per_sample", "nfe"],
                           title=f"Time per training step vs batch size and state size (issue 7 item 8, {dev.type})",
                           notes=notes, out_dir=out)
    return ["scaling"]


def main(argv=None) -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1..1024)")
    parser.add_argument("--states", type=int, nargs="+", help="state sizes (default 32..512)")
    parser.add_argument("--repeats", type=int, help="timed repeats per point")
    parser.add_argument("--base-batch", type=int, default=128, help="batch of the state-size sweep")
    parser.add_argument("--base-state", type=int, default=128, help="state of the batch-size sweep")
    args = parser.parse_args(argv)
    run(args.quick, args.device, args.out, batches=args.batches, states=args.states, repeats=args.repeats,
        base_batch=args.base_batch, base_state=args.base_state)
    print(((args.out or _harness.RESULTS) / "scaling.md").read_text())


if __name__ == "__main__":
    main()
