"""Shared timing and reporting for the benchmarks.

Every benchmark times its competitors in one process, interleaved (A, B, C, A, B, C, ...),
so that drift in machine load affects all of them alike, and reports medians and ratios
against a baseline measured in the same run. Results go to ``benchmarks/results/<name>.json``
and ``<name>.md``, written atomically.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch

from pycdeq.training.files import atomic_write_text

# PYCDEQ_BENCH_RESULTS redirects every benchmark's files (the suite runner's --out).
RESULTS = Path(os.environ.get("PYCDEQ_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def synchronize(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device=None) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(competitors: Dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 1,
                device=None) -> Dict[str, List[float]]:
    """Time each competitor ``repeats`` times, round-robin, after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in competitors.values():
            fn()
    times: Dict[str, List[float]] = {name: [] for name in competitors}
    for _ in range(repeats):
        for name, fn in competitors.items():
            times[name].append(time_call(fn, device))
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if hasattr(os, "getloadavg"):
        # Timings on a busy machine are inflated and noisy: keep the 1-minute load with them.
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = "unknown"
    return info


def markdown_table(rows: List[dict], columns: Sequence[str]) -> str:
    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, rows: List[dict], columns: Sequence[str], *, title: str,
                  notes: str = "", out_dir: Path | None = None) -> str:
    """Write ``<name>.json`` and ``<name>.md``; return the Markdown."""
    out_dir = Path(out_dir) if out_dir else RESULTS
    meta = machine()
    atomic_write_text(out_dir / f"{name}.json", json.dumps({"name": name, "title": title, "machine": meta, "rows": rows,
                                                            "notes": notes}, indent=2))
    where = ", ".join(f"{k} {v}" for k, v in meta.items())
    md = f"### {title}\n\n{markdown_table(rows, columns)}\n\n{notes}\n\n_Machine: {where}_\n"
    atomic_write_text(out_dir / f"{name}.md", md)
    return md
