"""Compare pycdeq's torch engine with DeepEquilibriumNetworks.jl on the same weights.

Needs Julia >= 1.10.3 and `pip install "pycdeq[julia]"` (see docs/julia.md); the first run
precompiles the Julia packages for several minutes. Without Julia it says why and exits with
code 77, the conventional "skipped" status of test harnesses (automake, meson): nothing
failed, but nothing was compared either.
Run: python examples/julia_comparison.py
"""

import sys

import torch

from pycdeq import julia
from pycdeq.models import MNISTDense

SKIPPED = 77

print(julia.status())
if not julia.available():
    print(f"SKIPPED: Julia is not available: {julia.status()}", file=sys.stderr)
    raise SystemExit(SKIPPED)

torch.manual_seed(0)
images = torch.rand(16, 1, 28, 28)
for variant in ("vanilla", "skip_reg", "skip"):
    model = MNISTDense(variant=variant, continuous=True)
    report = julia.compare(model, images)  # same weights, same inputs, both engines
    print(f"--- {variant}\n{report.summary()}")
