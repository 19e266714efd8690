"""Compare pycdeq's torch engine with DeepEquilibriumNetworks.jl on the same weights.

Needs Julia >= 1.10.3 and `pip install "pycdeq[julia]"` (see docs/julia.md); the first run
precompiles the Julia packages for several minutes. Without Julia it says why and exits 0.
Run: python examples/julia_comparison.py
"""

import torch

from pycdeq import julia
from pycdeq.models import MNISTDense

print(julia.status())
if not julia.available():
    raise SystemExit(0)

torch.manual_seed(0)
images = torch.rand(16, 1, 28, 28)
for variant in ("vanilla", "skip_reg", "skip"):
    model = MNISTDense(variant=variant, continuous=True)
    report = julia.compare(model, images)  # same weights, same inputs, both engines
    print(f"--- {variant}\n{report.summary()}")
