"""Data-parallel training of a Skip Reg. DEQ in your own loop: torchrun, DDP, DistributedSampler.

Run on 2 CPU processes (gloo), or one process per GPU (nccl) with --nproc-per-node = GPUs:

    torchrun --standalone --nproc-per-node 2 examples/distributed_training.py
    python examples/distributed_training.py        # the same loop in a single process

Each process trains on its share of every batch; DDP averages the gradients in backward, so
the parameters stay identical on every rank. Exits non-zero if the model did not learn.
"""

import os
import sys

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from pycdeq.models import build_model
from pycdeq.training.distributed import (all_reduce_sum, init_from_environment, make_sampler, rank_seed, shutdown,
                                         unwrap, wrap_model)

QUICK = os.environ.get("PYCDEQ_EXAMPLE_QUICK") == "1"  # the smoke test sets this
SEED, EPOCHS, BATCH = 0, 2 if QUICK else 6, 32  # BATCH: per process
torch.set_num_threads(1)  # small matrices: more threads per process only add overhead

ctx = init_from_environment()  # the torchrun variables, or a single process without them
say = print if ctx.is_main else (lambda *args, **kwargs: None)  # rank 0 prints

# Same data and the same initial model on every rank (DDP also broadcasts rank 0's weights).
digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16
y = torch.tensor(digits.target)
split = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
train = TensorDataset(x[split[:1400]], y[split[:1400]])
x_test, y_test = x[split[1400:]], y[split[1400:]]
torch.manual_seed(SEED)
model = build_model("mnist-dense", variant="skip_reg", input_shape=(64,), num_classes=10, width=64)
model = wrap_model(model, ctx)  # DDP when there are several processes; on ctx.device
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

# Every rank draws the same permutation from SEED + epoch and takes its part of it.
sampler = make_sampler(train, ctx, seed=SEED)
loader = DataLoader(train, batch_size=BATCH, sampler=sampler)
torch.manual_seed(rank_seed(SEED, ctx.rank))  # each rank its own random stream from the one seed

for epoch in range(EPOCHS):
    sampler.set_epoch(epoch)
    model.train()
    for xb, yb in loader:
        logits, solution = model(xb.to(ctx.device))
        loss = F.cross_entropy(logits, yb.to(ctx.device)) + 5.0 * solution.skip_loss
        optimizer.zero_grad()
        loss.backward()  # implicit gradient per rank; DDP all-reduces once per parameter
        optimizer.step()
    # Evaluation: each rank its slice of the test set with the bare model (no DDP forward, so
    # no collective per batch), then one all-reduce of the counts.
    model.eval()
    with torch.no_grad():
        mine = slice(ctx.rank, None, ctx.world_size)
        logits, solution = unwrap(model)(x_test[mine].to(ctx.device))
        correct = int((logits.argmax(1).cpu() == y_test[mine]).sum())
    correct, seen, nfe = all_reduce_sum([correct, len(y_test[mine]), solution.nfe], ctx)
    accuracy = correct / seen
    say(f"epoch {epoch + 1}: test accuracy {accuracy:.3f} over {int(seen)} samples, "
        f"mean nfe per rank {nfe / ctx.world_size:.1f} ({ctx.world_size} process(es))")

shutdown()
if accuracy < 0.75:
    print(f"rank {ctx.rank}: the model did not learn (test accuracy {accuracy:.3f} < 0.75)", file=sys.stderr)
    sys.exit(1)
