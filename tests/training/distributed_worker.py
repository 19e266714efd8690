"""Worker of tests/training/test_distributed.py, started by ``torchrun`` (2 processes, gloo, CPU).

    python -m torch.distributed.run --standalone --nproc-per-node 2 distributed_worker.py MODE OUT

``reference``: DDP checks of every variant, then the two trainings of the test (``equivalence``:
no randomness, compared with one process; ``resumable``: Jacobian regularization draws
random probes on every rank, with checkpoints); rank 0 writes ``OUT/reference.pt``.
``die``: the resumable training with checkpoints in ``OUT/died``, rank 1 killing itself
(SIGKILL) after the first epoch's checkpoint. ``resume``: resumes it; rank 0 writes
``OUT/resumed.pt``. The shared settings (data, models, configs) are imported by the test too.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from pycdeq import GMRES, Anderson, Termination
from pycdeq.layers import JacobianRegularization
from pycdeq.models import build_model
from pycdeq.training import TrainConfig, Trainer
from pycdeq.training.distributed import all_gather_object, init_from_environment, shutdown, wrap_model

FEATURES, CLASSES, WIDTH = 10, 3, 8
WORLD = 2
PER_RANK_BATCH = 4
# Tight solves: the comparisons are about the exchange of gradients, not the solver.
SOLVER = dict(solver=Anderson(m=4, max_iter=60, termination=Termination(mode="rel", reltol=1e-11)),
              adjoint=GMRES(rtol=1e-11, atol=1e-14, max_iter=40))
EQUIVALENCE = TrainConfig(epochs=3, batch_size=PER_RANK_BATCH, eval_batch_size=4, optimizer="sgd", lr=0.05,
                          momentum=0.9, lambda_skip=0.1, pretrain_steps=2, pretrain_depth=3, seed=3,
                          progress=False)
RESUMABLE = TrainConfig(epochs=3, batch_size=PER_RANK_BATCH, eval_batch_size=4, optimizer="adam", lr=1e-2,
                        lambda_jac=0.1, seed=5, progress=False)


def data(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=generator, dtype=torch.float64)
    y = (x[:, :CLASSES] * torch.tensor([1.0, -0.5, 0.8], dtype=torch.float64)).argmax(dim=1)
    return x, y


TRAIN, TEST = data(16, 0), data(12, 1)


def model(variant: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    options = {**SOLVER, **options} if variant != "node" else options
    return build_model("mnist-dense", variant=variant, continuous=variant == "node", num_classes=CLASSES,
                       input_shape=(FEATURES,), width=WIDTH, **options).double()


def resumable_model() -> torch.nn.Module:
    return model("skip_reg", jacobian_reg=JacobianRegularization())


def flat_parameters(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


# --- reference mode ---------------------------------------------------------------------------

CASES = {  # name -> (variant, layer options, fixed depth)
    "vanilla": ("vanilla", {}, 0),
    "skip": ("skip", {}, 0),
    "skip_reg": ("skip_reg", {}, 0),
    "node": ("node", {}, 0),
    "skip pretraining": ("skip", {}, 3),
    "vanilla final_call": ("vanilla", {"input_gradient": "final_call"}, 0),
}


def _loss(net, x, y):
    logits, solution = net(x)
    return F.cross_entropy(logits, y) + 0.1 * solution.skip_loss, solution


def _gradient(net) -> torch.Tensor:  # a parameter without gradient counts as 0
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in net.parameters()])


def check_case(ctx, variant: str, options: dict, depth: int) -> dict:
    """One DDP step on this rank's half of a batch against the one-process gradient of the
    whole batch; rank 1's samples are scaled so that its solves take other iteration counts."""
    single = model(variant, **options)
    ddp = wrap_model(copy.deepcopy(single), ctx)
    for net in (single, ddp.module):
        for layer in net.modules():
            if hasattr(layer, "fixed_depth"):
                layer.fixed_depth = depth
    reduced = []

    def counting_allreduce(state, bucket):  # the default hook, counting what it reduces
        reduced.append(bucket.buffer().numel())
        return default_hooks.allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting_allreduce)
    x, y = TRAIN[0][:2 * PER_RANK_BATCH].clone(), TRAIN[1][:2 * PER_RANK_BATCH]
    x[PER_RANK_BATCH:] *= 3.0
    mine = slice(ctx.rank * PER_RANK_BATCH, (ctx.rank + 1) * PER_RANK_BATCH)
    loss, solution = _loss(ddp, x[mine], y[mine])
    loss.backward()
    reference, _ = _loss(single, x, y)
    reference.backward()
    ddp_grad, one_grad = _gradient(ddp.module), _gradient(single)
    return {"grad_difference": float((ddp_grad - one_grad).abs().max()), "grad_scale": float(one_grad.abs().max()),
            "reduced_elements": sum(reduced), "parameters": sum(p.numel() for p in single.parameters()),
            "find_unused_parameters": ddp.find_unused_parameters, "nfe": all_gather_object(solution.nfe, ctx)}


def equivalence_training(ctx) -> dict:
    trainer = Trainer(model("skip"), EQUIVALENCE, distributed=ctx)
    spread = []

    def after_step(optimizer, args, kwargs):  # every rank: the largest difference between ranks
        mine = flat_parameters(trainer.model)
        spread.append(max(float((p - mine).abs().max()) for p in all_gather_object(mine, ctx)))

    trainer.optimizer.register_step_post_hook(after_step)
    result = trainer.fit(TRAIN, TEST)
    return {"parameters": flat_parameters(trainer.model), "spread": spread,
            "history": [h.flat() for h in result.history], "world_size": result.world_size}


def resumable_training(ctx, checkpoint: Path, *, resume: bool = False, die_after: int = 0) -> torch.Tensor:
    def on_epoch(metrics):
        if die_after and metrics.epoch == die_after and ctx.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # a real death: no exception, no cleanup

    trainer = Trainer(resumable_model(), RESUMABLE, distributed=ctx, checkpoint_path=checkpoint, on_epoch=on_epoch)
    trainer.fit(TRAIN, TEST, resume=resume)
    return flat_parameters(trainer.model)


def main(mode: str, out: Path) -> None:
    torch.set_num_threads(1)
    ctx = init_from_environment("cpu")
    assert ctx.world_size == WORLD and ctx.backend == "gloo", ctx
    if mode == "reference":
        report = {"cases": {name: check_case(ctx, *case) for name, case in CASES.items()},
                  "equivalence": equivalence_training(ctx),
                  "resumable": resumable_training(ctx, out / "uninterrupted.pt")}
        if ctx.is_main:
            torch.save(report, out / "reference.pt")
    elif mode == "die":
        resumable_training(ctx, out / "died.pt", die_after=1)
    elif mode == "resume":
        parameters = resumable_training(ctx, out / "died.pt", resume=True)
        if ctx.is_main:
            torch.save(parameters, out / "resumed.pt")
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
