"""Smoke test of the benchmark suite: the cheapest benchmark runs end to end at a tiny size and
writes well-formed results (into tmp_path, never into benchmarks/results). No timing is asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is not part of the installed package
    sys.path.insert(0, str(REPO))

from benchmarks import __main__ as suite  # noqa: E402
from benchmarks import bench_scaling  # noqa: E402


def test_scaling_benchmark_writes_wellformed_results_and_plots(tmp_path):
    bench_scaling.main(["--out", str(tmp_path), "--batches", "1", "3", "--states", "4",
                        "--repeats", "1", "--base-batch", "2", "--base-state", "8"])
    data = json.loads((tmp_path / "scaling.json").read_text())
    assert data["name"] == "scaling"
    assert {"commit", "date", "torch", "loadavg_1m"} <= set(data["machine"])
    methods = set(bench_scaling.METHODS)
    # 2 batch points + 1 state point, each with every method.
    assert len(data["rows"]) == 3 * len(methods)
    assert {r["method"] for r in data["rows"]} == methods
    for row in data["rows"]:
        assert row["step_ms"] > 0 and row["nfe"] >= 1
        assert row["us_per_sample"] == pytest.approx(row["step_ms"] * 1e3 / row["batch"])
    assert sorted((r["axis"], r["batch"], r["state"]) for r in data["rows"][::len(methods)]) == [
        ("batch", 1, 8), ("batch", 3, 8), ("state", 2, 4)]
    md = (tmp_path / "scaling.md").read_text()
    assert md.startswith("### ") and "| axis | batch | state | method |" in md
    for plot in ("scaling_batch.png", "scaling_state.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_suite_summary_collects_tables_targets_and_plots(tmp_path):
    bench_scaling.main(["--out", str(tmp_path), "--batches", "2", "--states", "4", "--repeats", "1",
                        "--base-batch", "2", "--base-state", "4"])
    table = {"name": "memory", "title": "Peak memory", "machine": {}, "notes": "",
             "rows": [{"model": "m", "method": "continuous DEQ", "target": "<= 0.5x", "target_met": False}]}
    (tmp_path / "memory.json").write_text(json.dumps(table))
    (tmp_path / "memory.md").write_text("### Peak memory\n\n| a |\n|---|\n| 1 |\n")
    assert suite.main(["--summary-only", "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "BENCHMARKS.md").read_text()
    # Tables in issue order (memory before scaling), the missed target listed, plots linked.
    assert summary.index("### Peak memory") < summary.index("### Time per training step")
    assert "| Peak memory | m / continuous DEQ | <= 0.5x | **no** |" in summary
    assert "](scaling_batch.png)" in summary and "](scaling_state.png)" in summary
    assert "No GPU results are recorded here" in summary
