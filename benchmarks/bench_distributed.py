"""Data-parallel throughput: N processes (DDP) vs 1 on the MNIST-dense training step.

Run: ``python -m benchmarks.bench_distributed [--quick] [--device cpu|cuda] [--procs 1 2 ...] [--out DIR]``.
Writes ``distributed.{json,md}``.

Each configuration is launched with torch's own launcher (``elastic_launch``, what ``torchrun``
runs), gloo with one thread per process on CPU, nccl with one GPU per process on CUDA. Every
process builds the paper's MNIST-dense continuous DEQ (same initial weights), wraps it with
:func:`pycdeq.training.distributed.wrap_model` and times ``steps`` Adam steps (forward, implicit
backward with DDP's all-reduce, optimizer) after ``warmup`` untimed ones, between barriers.
Throughput = samples of all processes / wall time of the slowest. Two scalings:

* **weak**: 128 samples per process (the global batch grows with the processes);
* **strong**: a global batch of 128 split over the processes.

Configurations alternate (1, N, 1, N, ...) over ``repeats`` and the median is reported. Every
process draws its batches from the same Fashion-MNIST subset (synthetic MNIST-shaped data
where the files are missing); the processes see different samples, so their solves take
different numbers of steps and the all-reduce waits for the slowest (``nfe_spread``).
On CPU, N processes need N free cores: the machine line's core count and load average say
whether they had them.
"""

from __future__ import annotations

import statistics
import time
import uuid
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from . import _harness
from .bench_training import _item1_data, make_parser

PER_PROCESS_BATCH = 128  # weak scaling
GLOBAL_BATCH = 128  # strong scaling


def _step_worker(device: str, batch: int, steps: int, warmup: int, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One process of a configuration (the launcher's entry point; runs under torchrun's variables)."""
    from pycdeq.layers import NonConvergenceWarning
    from pycdeq.models import build_model
    from pycdeq.training.distributed import barrier, init_from_environment, shutdown, wrap_model

    torch.set_num_threads(1)
    warnings.simplefilter("ignore", NonConvergenceWarning)
    ctx = init_from_environment(device)
    torch.manual_seed(0)
    model = wrap_model(build_model("mnist-dense", variant="vanilla", continuous=True), ctx)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    # Batch k of this rank: rank-th block of the k-th global batch (cycled over the data).
    total = batch * ctx.world_size
    start = [(k * total + ctx.rank * batch) % (len(y) - batch + 1) for k in range(warmup + steps)]
    batches = [(x[s:s + batch].to(ctx.device), y[s:s + batch].to(ctx.device)) for s in start]
    nfe = []

    def step(xb, yb):
        logits, solution = model(xb)
        loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        nfe.append(solution.nfe)

    for xb, yb in batches[:warmup]:
        step(xb, yb)
    barrier(ctx)
    _harness.synchronize(ctx.device)
    began, cpu_began = time.perf_counter(), time.process_time()
    for xb, yb in batches[warmup:]:
        step(xb, yb)
    _harness.synchronize(ctx.device)
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    barrier(ctx)
    shutdown()
    return {"elapsed": elapsed, "cpu": cpu, "samples": batch * steps, "nfe": statistics.fmean(nfe[warmup:])}


def _launch(procs: int, device: str, batch: int, steps: int, warmup: int, x, y) -> dict:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=procs, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn")
    per_rank = elastic_launch(config, _step_worker)(device, batch, steps, warmup, x, y)
    ranks = [per_rank[r] for r in sorted(per_rank)]
    wall = max(r["elapsed"] for r in ranks)
    return {"samples_per_s": sum(r["samples"] for r in ranks) / wall, "step_ms": 1e3 * wall / steps,
            "cpu_ms": 1e3 * max(r["cpu"] for r in ranks) / steps,
            "nfe": statistics.fmean(r["nfe"] for r in ranks),
            "nfe_spread": max(r["nfe"] for r in ranks) - min(r["nfe"] for r in ranks)}


def run(quick: bool = False, device: str = "cpu", procs: Optional[List[int]] = None,
        out_dir: Optional[Path] = None) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch.cuda.is_available() is False")
    if procs is None:
        most = torch.cuda.device_count() if device == "cuda" else 2
        procs = sorted({1, *(2 ** k for k in range(1, most.bit_length()) if 2 ** k <= most), most})
    if device == "cpu":  # the machine line states the threads of the timed processes
        torch.set_num_threads(1)
    steps, warmup, repeats = (4, 1, 1) if quick else (12, 2, 3)
    largest = max(PER_PROCESS_BATCH * max(procs), GLOBAL_BATCH)
    data, source = _item1_data("mnist-dense", largest, steps + warmup)
    x, y = data.train.x.reshape(len(data.train.y), -1), data.train.y
    measured: Dict[tuple, List[dict]] = {}
    for _ in range(repeats):  # alternate the configurations: load drift hits all of them
        for scaling in ("weak", "strong"):
            for n in procs:
                if scaling == "strong" and GLOBAL_BATCH % n:
                    continue
                batch = PER_PROCESS_BATCH if scaling == "weak" else GLOBAL_BATCH // n
                measured.setdefault((scaling, n, batch), []).append(_launch(n, device, batch, steps, warmup, x, y))
    rows = []
    for (scaling, n, batch), runs in measured.items():
        one = (scaling, 1, PER_PROCESS_BATCH if scaling == "weak" else GLOBAL_BATCH)
        base = statistics.median(r["samples_per_s"] for r in measured[one])
        throughput = statistics.median(r["samples_per_s"] for r in runs)
        rows.append({"scaling": scaling, "processes": n, "batch_per_process": batch, "global_batch": batch * n,
                     "steps": steps, "samples_per_s": throughput, "speedup_vs_1": throughput / base,
                     "efficiency": throughput / base / n,
                     "step_ms": statistics.median(r["step_ms"] for r in runs),
                     "cpu_ms": statistics.median(r["cpu_ms"] for r in runs),
                     "nfe": statistics.fmean(r["nfe"] for r in runs),
                     "nfe_spread": statistics.fmean(r["nfe_spread"] for r in runs)})
    backend = "nccl, one GPU per process" if device == "cuda" else "gloo, one thread per process"
    notes = (f"MNIST-dense continuous DEQ (paper settings: Tsit5 to steady state, GMRES adjoint), Adam, {source}; "
             f"DDP over {backend}; {steps} timed steps after {warmup} untimed, median of {repeats} alternated "
             "launches. speedup_vs_1 = throughput / the 1-process throughput of the same scaling; efficiency = "
             "speedup / processes. step_ms: wall time per step; cpu_ms: CPU time per step of the "
             "busiest process (on CPU with one thread per process: the step's cost without the time spent waiting "
             "for a core or for the other process; on an oversubscribed machine, see loadavg_1m, wall times "
             "measure the load and cpu_ms the work). nfe: mean forward f evaluations per process batch; "
             "nfe_spread: mean over the launches of (largest - smallest) per-process mean nfe, the imbalance the "
             "all-reduce waits for.")
    return _harness.write_results(
        "distributed", rows,
        ["scaling", "processes", "batch_per_process", "global_batch", "steps", "samples_per_s", "speedup_vs_1",
         "efficiency", "step_ms", "cpu_ms", "nfe", "nfe_spread"],
        title=f"Data-parallel throughput: DDP processes vs 1 (MNIST-dense training step, {device})",
        notes=notes, out_dir=out_dir)


def main(argv=None) -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=None,
                        help="process counts (default: 1 2 on CPU; 1, 2, 4, ... up to the GPUs on CUDA)")
    args = parser.parse_args(argv)
    print(run(args.quick, args.device, args.procs, args.out))


if __name__ == "__main__":
    main()
