"""The suite runner: ``python -m benchmarks [names...] [--quick] [--device cpu|cuda] [--out DIR]``.

Runs every benchmark (or the named ones), each in its own subprocess so that one failure, hang
or memory blow-up cannot take the others down, and then regenerates the summary
``BENCHMARKS.md`` from every ``*.md`` table in the results folder. Each benchmark writes
``<name>.json`` and ``<name>.md`` through :mod:`benchmarks._harness`; its console output goes to
``<out>/logs/<benchmark>.log``.

A benchmark module joins the suite by accepting ``--quick``, ``--device`` and ``--out`` (see
``bench_training.make_parser``). For modules without them the runner adapts: the results folder
is passed through the environment (``PYCDEQ_BENCH_RESULTS``, honoured by the harness),
``--quick`` becomes ``--repeats 3`` where the module has ``--repeats``, and a module with no
``--device`` is skipped on CUDA (it would only time the CPU again) with a line in the summary.

``BENCHMARKS.md`` goes to the repository root when the results folder is the default
``benchmarks/results``, otherwise into the results folder itself, so a GPU or scratch run never
overwrites the committed CPU summary. GPU tables copied into ``benchmarks/results/gpu/`` are
included in the repository summary under their own heading.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUT = HERE / "results"

# name -> (module, what it measures). Order = issue 7's items.
BENCHMARKS: Dict[str, tuple] = {
    "training": ("bench_training", "items 1-2: continuous DEQ vs Neural ODE; Skip (Reg.) vs vanilla"),
    "discrete": ("bench_discrete", "items 3, 5: discrete DEQ vs TorchDEQ; solver overhead"),
    "ode": ("bench_ode", "item 4: Neural ODE vs torchdiffeq / torchode; continuous DEQ vs Anderson"),
    "memory": ("bench_memory", "item 6: peak memory of a training step"),
    "compaction": ("bench_compaction", "item 7: removing finished samples from the work"),
    "scaling": ("bench_scaling", "item 8: time per step vs batch and state size"),
}
# Result tables in summary order (others follow alphabetically).
TABLE_ORDER = ["training_deq_vs_node", "training_skip", "discrete_vs_torchdeq", "discrete_overhead",
               "ode_neural_ode", "ode_steady_state", "memory", "compaction", "scaling"]
PLOTS = ["scaling_batch.png", "scaling_state.png"]


def supported_flags(module: str) -> set:
    """The command-line flags a benchmark module accepts, read from its source (no import)."""
    source = (HERE / f"{module}.py").read_text()
    flags = set(re.findall(r"""["'](--[a-z][a-z0-9-]*)["']""", source))
    if "make_parser(" in source:
        flags |= {"--quick", "--device", "--out"}
    return flags


def command_for(module: str, quick: bool, device: str, out: Path) -> Optional[List[str]]:
    """The argv that runs ``module`` with the suite's options; ``None``: cannot honour ``device``."""
    flags = supported_flags(module)
    argv = [sys.executable, "-m", f"benchmarks.{module}"]
    if device != "cpu":
        if "--device" not in flags:
            return None
        argv += ["--device", device]
    if quick:
        if "--quick" in flags:
            argv.append("--quick")
        elif "--repeats" in flags:
            argv += ["--repeats", "3"]
    if "--out" in flags:
        argv += ["--out", str(out)]
    return argv


def run_one(name: str, args, out: Path) -> dict:
    module, _ = BENCHMARKS[name]
    argv = command_for(module, args.quick, args.device, out) if (HERE / f"{module}.py").exists() else []
    if not argv:
        status, detail = (("missing", f"benchmarks/{module}.py not found") if argv == [] else
                          ("skipped", f"{module} has no --device option (CPU only)"))
        print(f"[benchmarks] {name}: {status} ({detail})", flush=True)
        return {"benchmark": name, "status": status, "seconds": 0.0, "detail": detail}
    env = dict(os.environ, PYCDEQ_BENCH_RESULTS=str(out),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[benchmarks] {name}: {' '.join(argv[1:])}  (log: {log})", flush=True)
    start = time.perf_counter()
    with open(log, "w") as handle:
        try:
            proc = subprocess.run(argv, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                  timeout=args.timeout)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {args.timeout:g} s"
    seconds = time.perf_counter() - start
    tail = log.read_text(errors="replace").strip().splitlines()[-15:]
    print(f"[benchmarks] {name}: {status} in {seconds:.0f} s", flush=True)
    if status != "ok":
        print("\n".join("    " + line for line in tail), flush=True)
    return {"benchmark": name, "status": status, "seconds": seconds,
            "detail": "" if status == "ok" else (tail[-1] if tail else "")}


# --- the summary ------------------------------------------------------------------------------

def _tables(folder: Path) -> List[Path]:
    found = {p.stem: p for p in folder.glob("*.md") if p.name != "BENCHMARKS.md"}
    ordered = [found.pop(n) for n in TABLE_ORDER if n in found]
    return ordered + [found[n] for n in sorted(found)]


def _targets(folder: Path) -> List[str]:
    """One line per row that states a target, from the JSON results."""
    lines = []
    for md in _tables(folder):
        path = md.with_suffix(".json")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for row in data.get("rows", []):
            if "target_met" in row:
                what = " / ".join(str(row[k]) for k in ("model", "variant", "method", "solver", "phase", "f")
                                  if k in row)
                lines.append(f"| {data.get('title', data.get('name'))} | {what} | {row.get('target', '')} | "
                             f"{'yes' if row['target_met'] else '**no**'} |")
    return lines


def _machine_line() -> str:
    sys.path.insert(0, str(REPO))
    from benchmarks import _harness

    info = _harness.machine()
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        info["commit"] += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        pass
    return ", ".join(f"{k} {v}" for k, v in info.items())


def _table_text(md: Path, link) -> str:
    """A result table, its bare plot file names pointed at where the plots are."""
    return re.sub(r"\]\(([A-Za-z0-9_.-]+\.png)\)", lambda m: f"]({link(m.group(1))})", md.read_text())


def _linker(folder: Path, summary_dir: Path):
    rel = os.path.relpath(folder, summary_dir)
    return (lambda name: f"{rel}/{name}") if rel != "." else (lambda name: name)


def write_summary(out: Path, runs: List[dict], args) -> Path:
    target = REPO / "BENCHMARKS.md" if out.resolve() == DEFAULT_OUT.resolve() else out / "BENCHMARKS.md"
    link = _linker(out, target.parent)
    parts = ["# pycdeq benchmarks", "",
             f"Generated by `python -m benchmarks` ({'--quick' if args.quick else 'full sizes'}, device "
             f"{args.device}) on {time.strftime('%Y-%m-%d %H:%M %Z')}. Every table states the machine, date and "
             "commit it was measured on (its own line below it); timings on a loaded machine (see loadavg_1m) "
             "are inflated and noisy, ratios less so because competitors run interleaved. How to run and what "
             "each benchmark measures: `benchmarks/README.md`.", "",
             f"Summary written on: {_machine_line()}", ""]
    if runs:
        parts += ["## This run", "", "| benchmark | status | seconds | detail |", "|---|---|---|---|"]
        parts += [f"| {r['benchmark']} | {r['status']} | {r['seconds']:.0f} | {r['detail']} |" for r in runs]
        parts.append("")
    targets = _targets(out)
    if targets:
        parts += ["## Targets (issue 7)", "", "Rows that state a `target_met` flag; the other tables state their "
                  "targets in their notes.", "", "| table | case | target | met |", "|---|---|---|---|", *targets, ""]
    parts += ["## Results", ""] + [_table_text(md, link) for md in _tables(out)]
    shown = "\n".join(parts)
    plots = [name for name in PLOTS if (out / name).exists() and f"]({link(name)})" not in shown]
    if plots:
        parts += ["## Scaling plots", ""] + [f"![{name}]({link(name)})" for name in plots] + [""]
    gpu = out / "gpu"
    parts += ["## GPU", ""]
    if gpu.is_dir() and _tables(gpu):
        parts.append("Tables from `benchmarks/gpu.sh`, copied into `benchmarks/results/gpu/`:\n")
        parts += [_table_text(md, _linker(gpu, target.parent)) for md in _tables(gpu)]
    elif args.device == "cuda":
        parts.append("The tables above were measured on CUDA (see their machine lines).")
    else:
        parts.append("No GPU results are recorded here: no CUDA device was available to the run that produced "
                     "this file. `bash benchmarks/gpu.sh DIR` on a CUDA machine writes them; copy DIR's tables "
                     "into `benchmarks/results/gpu/` and rerun `python -m benchmarks --summary-only`.")
    target.write_text("\n".join(parts).rstrip() + "\n")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (about 3 minutes on 2 cores)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default benchmarks/results)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in the benchmarks (OMP_NUM_THREADS; default: torch's choice)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per benchmark")
    parser.add_argument("--summary-only", action="store_true", help="only regenerate BENCHMARKS.md")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs = [] if args.summary_only else [run_one(name, args, out) for name in (args.names or BENCHMARKS)]
    summary = write_summary(out, runs, args)
    print(f"[benchmarks] summary: {summary}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
