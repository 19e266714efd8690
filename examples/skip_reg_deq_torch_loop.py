"""A Skip Reg. continuous DEQ trained in a plain PyTorch loop on scikit-learn's digits.

Exits non-zero if the model did not learn.
Run: python examples/skip_reg_deq_torch_loop.py   (about 10 s on 2 CPU cores)
"""

import sys

import torch
from sklearn.datasets import load_digits
from torch import nn

import pycdeq


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


def classify(batch):
    z, output = model["deq"](torch.relu(model["stem"](x[batch])))
    return model["head"](z), output


for epoch in range(1, 6):
    total_loss = correct = 0
    for batch in train[torch.randperm(len(train))].split(32):
        logits, output = classify(batch)
        loss = nn.functional.cross_entropy(logits, y[batch]) + 0.01 * output.skip_loss
        optimizer.zero_grad()
        loss.backward()  # implicit gradient: one adjoint solve, no backprop through the ODE steps
        optimizer.step()
        total_loss += loss.item() * len(batch)
        correct += (logits.argmax(1) == y[batch]).sum().item()
    print(f"epoch {epoch}: loss {total_loss / len(train):.3f}, train accuracy {correct / len(train):.3f}, "
          f"nfe of the last batch {output.nfe}")

with torch.no_grad():
    logits, output = classify(test)
accuracy = (logits.argmax(1) == y[test]).float().mean().item()
print(f"test accuracy {accuracy:.3f}, nfe {output.nfe}, converged {int(output.converged.sum())}/{len(test)}")
if accuracy < 0.8:  # chance is 0.1
    sys.exit(f"the model did not learn: test accuracy {accuracy:.3f} < 0.8")
