"""A model trains: the MNIST-dense architecture on scikit-learn's digits (offline, 8x8 = 64
features scaled to [0, 1], a fixed 80/20 split: 1,437 / 360 images).

``stem = Linear(64, 128) + ReLU``, ``f(z, x) = relu(Wz z) + relu(Wx x)`` (no biases),
``head = Linear(128, 10)``; Skip's predictor ``g = Linear(128, 128) + ReLU``. Every variant,
discrete (Anderson) and continuous (Tsit5), must reach >= 90% test accuracy after 3 epochs
(Adam 4e-3, batch 64, loss = cross-entropy + 0.5 * skip loss), and the continuous Skip Reg.
model must need fewer evaluations of ``f`` at test time than the vanilla one.

Measured when written (one thread; the engine was changing meanwhile, so the last digit
moves): test accuracy vanilla / skip / skip_reg 0.930 / 0.944 / 0.925 (Anderson) and
0.930 / 0.933 / 0.950 (Tsit5); mean test-time nfe per batch of 64: 10.3 / 8.0 / 6.8
(Anderson) and 64 / 53 / 49 (Tsit5); every test sample converged. About 25-30 s of CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pycdeq
from pycdeq.layers import DEQ, SkipDEQ, SkipRegDEQ

sklearn_datasets = pytest.importorskip("sklearn.datasets")

WIDTH, EPOCHS, BATCH, LR, SKIP_WEIGHT = 128, 3, 64, 4e-3, 0.5
VARIANTS = ["vanilla", "skip", "skip_reg"]


@pytest.fixture(scope="module")
def digits():
    data = sklearn_datasets.load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = round(0.2 * len(y))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


class DenseInjection(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.Wz = nn.Linear(width, width, bias=False)
        self.Wx = nn.Linear(width, width, bias=False)

    def forward(self, z, x):
        return torch.relu(self.Wz(z)) + torch.relu(self.Wx(x))


class Classifier(nn.Module):
    def __init__(self, variant, kind):
        super().__init__()
        if kind == "tsit5":  # integrator 1e-3; steady state at ||f(z) - z|| <= 5e-3 ||f(z)||
            solver = pycdeq.Tsit5(rtol=1e-3, atol=1e-3, max_steps=50)
        else:
            solver = pycdeq.Anderson(m=5, max_iter=30, termination=pycdeq.Termination(mode="rel", reltol=5e-3))
        self.stem = nn.Sequential(nn.Linear(64, WIDTH), nn.ReLU())
        f = DenseInjection(WIDTH)
        # The odd training sample may miss the tolerance; test-time convergence is asserted.
        options = dict(on_nonconvergence="ignore")
        if variant == "vanilla":
            self.deq = DEQ(f, solver, **options)
        elif variant == "skip_reg":
            self.deq = SkipRegDEQ(f, solver, **options)
        else:
            self.deq = SkipDEQ(f, nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU()), solver, **options)
        self.head = nn.Linear(WIDTH, 10)

    def forward(self, images):
        z, solution = self.deq(self.stem(images))
        return self.head(z), solution


def _train_and_evaluate(kind, variant, digits):
    """Returns (test accuracy, mean test-time nfe per batch, fraction of test samples converged)."""
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(0)
    model = Classifier(variant, kind)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    shuffle = torch.Generator().manual_seed(1)
    for _ in range(EPOCHS):
        order = torch.randperm(len(y_train), generator=shuffle)
        for start in range(0, len(order), BATCH):
            batch = order[start:start + BATCH]
            logits, solution = model(x_train[batch])
            loss = nn.functional.cross_entropy(logits, y_train[batch]) + SKIP_WEIGHT * solution.skip_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    correct, nfes, converged = 0, [], 0
    with torch.no_grad():
        for start in range(0, len(y_test), BATCH):
            logits, solution = model(x_test[start:start + BATCH])
            assert solution.adjoint is None
            correct += int((logits.argmax(dim=1) == y_test[start:start + BATCH]).sum())
            nfes.append(solution.nfe)
            converged += int(solution.converged.sum())
    return correct / len(y_test), sum(nfes) / len(nfes), converged / len(y_test)


def _train_all_variants(kind, digits):
    results = {variant: _train_and_evaluate(kind, variant, digits) for variant in VARIANTS}
    table = "; ".join(f"{v}: accuracy {a:.3f}, test nfe {n:.1f}, converged {c:.3f}" for v, (a, n, c) in results.items())
    print(f"digits, {kind}: {table}")
    return results, table


# One test per solver kind (three trainings each), so that pytest-xdist's two workers share
# the work evenly and no model is trained twice.
def test_every_discrete_variant_reaches_90_percent_on_digits(digits):
    results, table = _train_all_variants("anderson", digits)
    assert all(accuracy >= 0.90 for accuracy, _, _ in results.values()), table
    assert all(converged >= 0.98 for _, _, converged in results.values()), table


def test_every_continuous_variant_reaches_90_percent_and_skip_reg_needs_fewer_nfe(digits):
    results, table = _train_all_variants("tsit5", digits)
    assert all(accuracy >= 0.90 for accuracy, _, _ in results.values()), table
    assert all(converged >= 0.98 for _, _, converged in results.values()), table
    assert results["skip_reg"][1] < results["vanilla"][1], table
