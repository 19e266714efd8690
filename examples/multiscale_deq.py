"""A two-scale DEQ (MDEQ wiring) on synthetic MNIST-shaped images, built from pycdeq's layers.

Scale 1 is 8x28x28 and receives the injection, scale 2 is 16x14x14; the branches are fused
with a strided conv (down) and a conv + nearest upsample (up). The solver works on the tuple
state directly. Run: python examples/multiscale_deq.py
"""

import os

import torch
from torch import nn

import pycdeq
from pycdeq.data import load_dataset

QUICK = os.environ.get("PYCDEQ_EXAMPLE_QUICK") == "1"
torch.manual_seed(0)


class Branch(nn.Module):
    """Two convs plus the injection ``x`` (first branch only), then ReLU. No batch norm:
    samples stay independent, so per-sample convergence means what it says."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, z, x=None):
        h = self.conv2(torch.relu(self.conv1(z)))
        return torch.relu(h + (0 if x is None else x))


down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
up = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2))
deq = pycdeq.MultiScaleSkipRegDEQ(
    main_layers=[Branch(8), Branch(16)],
    mapping_layers=[[None, down], [up, None]],   # mapping_layers[i][j]: scale i -> scale j
    post_fuse_layers=None,
    solver=pycdeq.Anderson(m=5, max_iter=30, termination=pycdeq.Termination(mode="rel", reltol=1e-2)),
    scales=[(8, 28, 28), (16, 14, 14)],
)
stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
params = [*stem.parameters(), *deq.parameters(), *head.parameters()]
optimizer = torch.optim.Adam(params, lr=3e-3)

data = load_dataset("synthetic", shape="mnist", n_train=64 if QUICK else 1024, n_test=64 if QUICK else 256)
for step, index in enumerate(torch.randperm(len(data.train)).split(32)):
    (z1, z2), solution = deq(stem(data.train.x[index]))
    loss = nn.functional.cross_entropy(head(z2), data.train.y[index]) + 0.01 * solution.skip_loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 16 == 0:
        print(f"step {step}: loss {loss.item():.3f}, nfe {solution.nfe}, "
              f"converged {int(solution.converged.sum())}/{len(index)}")

with torch.no_grad():
    (_, z2), solution = deq(stem(data.test.x))
    accuracy = (head(z2).argmax(1) == data.test.y).float().mean()
print(f"test accuracy {accuracy:.3f}, nfe {solution.nfe}")
