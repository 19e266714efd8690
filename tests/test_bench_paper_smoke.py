"""``benchmarks/bench_paper`` end to end at a tiny size (synthetic images, a tiny MDEQ), results
written into tmp_path; then a second run continues from the saved weights. No timing is asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is not part of the installed package
    sys.path.insert(0, str(REPO))

from benchmarks import bench_paper  # noqa: E402


def test_bench_paper_writes_results_steps_plot_and_weights_then_continues(tmp_path):
    args = ["--quick", "--out", str(tmp_path), "--data-dir", str(tmp_path / "no-data"), "--pretrain-steps", "1",
            "--train-steps", "2", "--test-samples", "8", "--competitors", "deq-paper,node-paper,node-backprop",
            "--weights", str(tmp_path / "weights")]
    bench_paper.main(args)
    data = json.loads((tmp_path / "paper_protocol.json").read_text())
    rows = {row["key"]: row for row in data["rows"]}
    assert set(rows) == {"deq-paper", "node-paper", "node-backprop"}
    for row in rows.values():
        assert row["total_s"] > 0 and row["nfe"] >= 1 and row["steps_measured"] == 1
        assert row["test_accuracy"] is None  # synthetic images: no accuracy is reported
    assert rows["deq-paper"]["gmres"] is not None and rows["node-paper"]["backward_nfe"] > 0
    assert rows["node-paper"]["paper_node_over_this"] == 1.0
    assert "synthetic" in data["notes"] and "Complete run" in data["notes"]
    steps = json.loads((tmp_path / "paper_protocol_steps.json").read_text())
    assert steps["complete"] and [r["phase"] for r in steps["records"]["deq-paper"]] == ["pretrain", "train", "train"]
    # The paper-protocol DEQ and Neural ODE share their unrolled pretraining step.
    assert steps["records"]["node-paper"][0]["shared_with"] == "deq-paper"
    assert (tmp_path / "paper_protocol_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == [
        "deq-paper.pt", "node-backprop.pt", "node-paper.pt"]

    bench_paper.main(args[:args.index("--train-steps")] + ["--train-steps", "1", *args[args.index("--test-samples"):]])
    steps = json.loads((tmp_path / "paper_protocol_steps.json").read_text())
    assert [r["step"] for r in steps["records"]["deq-paper"]] == [3]  # continued after the saved step 2
    assert steps["settings"]["first_step"] == 3
