"""A two-scale Skip Reg. DEQ (MDEQ wiring) on scikit-learn's digits, built from pycdeq's layers.

The 8x8 digit images go through a conv stem into a multiscale equilibrium layer: scale 1 is
8x8x8 and receives the injection, scale 2 is 16x4x4; the branches are fused with a strided
conv (down) and a conv + nearest upsample (up). The solver works on the tuple state
directly. Exits non-zero if the model did not learn.
Run: python examples/multiscale_deq.py   (15-30 s on one CPU core)
"""

import sys

import torch
from sklearn.datasets import load_digits
from torch import nn

import pycdeq

torch.manual_seed(0)
torch.set_num_threads(1)


class Branch(nn.Module):
    """Two convs plus the injection ``x`` (first branch only), then ReLU. No batch norm:
    samples stay independent, so per-sample convergence means what it says."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        # Small weights make f contractive at the start, so the solver converges from the
        # first batches on (the paper's blocks use the same N(0, 0.01^2) initialisation).
        for layer in (self.conv1, self.conv2):
            nn.init.normal_(layer.weight, std=0.01)

    def forward(self, z, x=None):
        h = self.conv2(torch.relu(self.conv1(z)))
        return torch.relu(h + (0 if x is None else x))


digits = load_digits()
images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # (1797, 1, 8, 8)
labels = torch.tensor(digits.target)
train, test = torch.randperm(len(images)).split([1400, len(images) - 1400])

# --- the model: stem -> two-scale Skip Reg. DEQ -> linear head on the coarse scale ---------
down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
up = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2))
deq = pycdeq.MultiScaleSkipRegDEQ(
    main_layers=[Branch(8), Branch(16)],
    mapping_layers=[[None, down], [up, None]],   # mapping_layers[i][j]: scale i -> scale j
    post_fuse_layers=None,
    solver=pycdeq.Anderson(m=5, max_iter=30, termination=pycdeq.Termination(mode="rel", reltol=1e-2)),
    scales=[(8, 8, 8), (16, 4, 4)],
)
stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
model = nn.ModuleList([stem, deq, head])
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)


def classify(batch):
    (fine, coarse), output = deq(stem(images[batch]))
    return head(coarse), output


for epoch in range(1, 6):
    total_loss = correct = 0
    for batch in train[torch.randperm(len(train))].split(32):
        logits, output = classify(batch)
        loss = nn.functional.cross_entropy(logits, labels[batch]) + 0.01 * output.skip_loss
        optimizer.zero_grad()
        loss.backward()  # implicit gradient: one adjoint solve per batch
        optimizer.step()
        total_loss += loss.item() * len(batch)
        correct += (logits.argmax(1) == labels[batch]).sum().item()
    print(f"epoch {epoch}: loss {total_loss / len(train):.3f}, train accuracy {correct / len(train):.3f}, "
          f"nfe of the last batch {output.nfe}")

with torch.no_grad():
    logits, output = classify(test)
accuracy = (logits.argmax(1) == labels[test]).float().mean().item()
print(f"test accuracy {accuracy:.3f}, nfe {output.nfe}, converged {int(output.converged.sum())}/{len(test)}")
if accuracy < 0.8:  # chance is 0.1
    sys.exit(f"the model did not learn: test accuracy {accuracy:.3f} < 0.8")
