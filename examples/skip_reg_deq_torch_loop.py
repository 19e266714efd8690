"""A Skip Reg. continuous DEQ trained in a plain PyTorch loop on scikit-learn's digits.

Run: python examples/skip_reg_deq_torch_loop.py   (about half a minute on 2 CPU cores)
"""

import os

import torch
from sklearn.datasets import load_digits
from torch import nn

import pycdeq

QUICK = os.environ.get("PYCDEQ_EXAMPLE_QUICK") == "1"  # the smoke test sets this


class Injected(nn.Module):
    """f(z, x) = relu(Wz z) + relu(Wx x): the paper's MNIST-dense DEQ function."""

    def __init__(self, width):
        super().__init__()
        self.Wz = nn.Linear(width, width, bias=False)
        self.Wx = nn.Linear(width, width, bias=False)

    def forward(self, z, x):
        return torch.relu(self.Wz(z)) + torch.relu(self.Wx(x))


torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16
y = torch.tensor(digits.target)
train, test = torch.randperm(len(x)).split([1400, len(x) - 1400])

# --- the model: stem -> Skip Reg. continuous DEQ -> head ------------------------------------
deq = pycdeq.SkipRegDEQ(Injected(64), pycdeq.Tsit5(rtol=1e-3, atol=1e-3))
model = nn.ModuleDict({"stem": nn.Linear(64, 64), "deq": deq, "head": nn.Linear(64, 10)})
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

for epoch in range(1 if QUICK else 5):
    for batch in train[torch.randperm(len(train))].split(32):
        z, solution = model["deq"](torch.relu(model["stem"](x[batch])))
        loss = nn.functional.cross_entropy(model["head"](z), y[batch]) + 0.01 * solution.skip_loss
        optimizer.zero_grad()
        loss.backward()  # implicit gradient: one adjoint solve, no backprop through the ODE steps
        optimizer.step()
    with torch.no_grad():
        z, solution = model["deq"](torch.relu(model["stem"](x[test])))
        accuracy = (model["head"](z).argmax(1) == y[test]).float().mean()
    print(f"epoch {epoch + 1}: test accuracy {accuracy:.3f}, nfe {solution.nfe}, "
          f"converged {int(solution.converged.sum())}/{len(test)}")
