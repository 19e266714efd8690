"""``benchmarks/bench_paper`` end to end at a tiny size (synthetic images, a tiny MDEQ), results
written into tmp_path; then a second run continues from the saved weights. No timing is asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is not part of the installed package
    sys.path.insert(0, str(REPO))

from benchmarks import bench_paper  # noqa: E402


def test_bench_paper_writes_results_steps_plot_and_weights_then_continues(tmp_path):
    args = ["--quick", "--out", str(tmp_path), "--data-dir", str(tmp_path / "no-data"), "--pretrain-steps", "1",
            "--train-steps", "2", "--test-samples", "8", "--competitors", "deq-paper,node-paper,node-backprop",
            "--weights", str(tmp_path / "weights")]
    bench_paper.main(args)
    data = json.loads((tmp_path / "paper_protocol_reduced.json").read_text())
    rows = {row["key"]: row for row in data["rows"]}
    assert set(rows) == {"deq-paper", "node-paper", "node-backprop"}
    for row in rows.values():
        assert row["total_s"] > 0 and row["nfe"] >= 1 and row["steps_measured"] == 1
        assert row["test_accuracy"] is None  # synthetic images: no accuracy is reported
    assert rows["deq-paper"]["gmres"] is not None and rows["node-paper"]["backward_nfe"] > 0
    assert rows["node-paper"]["paper_node_over_this"] == 1.0
    assert "synthetic" in data["notes"] and "Complete run" in data["notes"]
    steps = json.loads((tmp_path / "paper_protocol_reduced_steps.json").read_text())
    assert steps["complete"] and [r["phase"] for r in steps["records"]["deq-paper"]] == ["pretrain", "train", "train"]
    # The paper-protocol DEQ and Neural ODE share their unrolled pretraining step.
    assert steps["records"]["node-paper"][0]["shared_with"] == "deq-paper"
    assert (tmp_path / "paper_protocol_reduced_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == [
        "deq-paper.pt", "node-backprop.pt", "node-paper.pt"]

    bench_paper.main(args[:args.index("--train-steps")] + ["--train-steps", "1", *args[args.index("--test-samples"):]])
    steps = json.loads((tmp_path / "paper_protocol_reduced_steps.json").read_text())
    assert [r["step"] for r in steps["records"]["deq-paper"]] == [3]  # continued after the saved step 2
    assert steps["settings"]["first_step"] == 3


def test_pretraining_copies_are_independent_and_the_time_budget_ends_a_run_cleanly(tmp_path):
    """Competitors that share their pretraining get copies of the leader's optimiser state, not
    the same tensors (torch's load_state_dict keeps matching tensors as they are)."""
    bench_paper.main(["--quick", "--out", str(tmp_path), "--data-dir", str(tmp_path / "no-data"),
                      "--pretrain-steps", "1", "--train-steps", "5", "--test-samples", "8", "--time-budget", "0",
                      "--competitors", "deq-paper,node-paper", "--weights", str(tmp_path / "weights")])
    steps = json.loads((tmp_path / "paper_protocol_reduced_steps.json").read_text())
    assert steps["complete"] and steps["settings"]["stopped_by_time_budget"]
    assert [r["step"] for r in steps["records"]["deq-paper"]] == [0]  # the first round, then the budget

    states = [torch.load(tmp_path / "weights" / f"{key}.pt", weights_only=False)["optimizer"]["state"]
              for key in ("deq-paper", "node-paper")]
    for a, b in zip(states[0].values(), states[1].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])  # the same pretraining step...
    runs = {}
    for key in ("deq-paper", "node-paper"):
        model = bench_paper.build_competitor(key, architecture="cifar10-small", model_options=bench_paper.QUICK_SIZES,
                                             num_classes=10, input_shape=(3, 32, 32), device=torch.device("cpu"))
        runs[key] = bench_paper.Run(key, model, bench_paper.make_optimizer(bench_paper.SETUPS["cifar10-small"], model))
    leader = runs["deq-paper"]
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    bench_paper.train_step(leader, x, y, depth=5, lr=1e-3, lambda_skip=0.0, device=torch.device("cpu"))
    runs["node-paper"].load(leader.state())
    mine = [s["exp_avg"].data_ptr() for s in runs["node-paper"].optimizer.state.values()]
    theirs = [s["exp_avg"].data_ptr() for s in leader.optimizer.state.values()]
    assert not set(mine) & set(theirs)  # ...held in tensors of their own
