"""Data-parallel training with ``torch.distributed``: process group, model wrapping, batch order.

Launch with ``torchrun`` (one process per device); everything here is a thin layer over
``torch.distributed`` and :class:`~torch.nn.parallel.DistributedDataParallel` (DDP)::

    ctx = init_from_environment()            # gloo on CPU, nccl on CUDA (cuda:LOCAL_RANK)
    model = wrap_model(model, ctx)           # SyncBatchNorm where safe, then DDP
    sampler = make_sampler(dataset, ctx, seed=0)   # torch's DistributedSampler; set_epoch(e) each epoch
    ...
    shutdown()

Without the ``torchrun`` environment (``RANK``/``WORLD_SIZE`` unset) the context is a single
process: world size 1, nothing initialised, ``wrap_model`` returns the model itself.

What a DEQ needs under DDP (checked by ``tests/training/test_distributed.py``):

* **No collective inside a solve.** Each rank solves its own samples with per-sample
  termination, so ranks make different numbers of ``f`` calls (and adjoint products). DDP
  communicates only from its gradient hooks, which fire when a parameter's gradient is
  accumulated: once per parameter per ``backward()``. The implicit backward calls
  ``torch.autograd.grad`` w.r.t. the fixed point only; that evaluates no parameter's
  accumulation node, so it triggers no hook and no all-reduce.
* **BatchNorm inside ``f`` stays per process.** ``SyncBatchNorm`` all-reduces statistics at
  every call, so inside ``f`` (called a data-dependent number of times per rank, forward and
  adjoint) it would make ranks wait on each other mid-solve and deadlock. ``wrap_model``
  therefore converts only the BatchNorms *outside* the equilibrium functions (stem, head,
  Skip predictor: called once per forward on every rank) and refuses a ``SyncBatchNorm``
  inside ``f``. ``SyncBatchNorm`` runs on CUDA only, so on CPU every BatchNorm stays local.
* **Unused parameters.** Every parameter of every variant gets a gradient in every step
  (the Skip predictor ``g`` through the skip loss, also in fixed-depth pretraining), so DDP
  runs with ``find_unused_parameters=False``. The one exception is a vanilla layer with
  ``input_gradient="final_call"`` and ``output="iterate"``: ``x`` reaches the solve detached
  and nothing else, so the stem gets no gradient; only then is the search switched on.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, TypeVar, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from .. import _checks
from ..layers.deq import DEQ
from ..layers.neural_ode import NeuralODE

T = TypeVar("T")
BACKENDS = ("gloo", "nccl")
#: The variables ``torchrun`` sets for every worker; the first two decide "distributed or not".
_ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a data-parallel run.

    ``rank`` in ``[0, world_size)``; ``local_rank``: the index on this node (its CUDA device);
    ``device``: the device this process computes on; ``backend``: ``"gloo"``/``"nccl"``, or
    ``None`` when no process group is initialised (a single process).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    def __post_init__(self):
        _checks.positive_int("world_size", self.world_size)
        _checks.positive_int("rank", self.rank, allow_zero=True)
        _checks.positive_int("local_rank", self.local_rank, allow_zero=True)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size, got rank {self.rank} of world_size {self.world_size}")
        if not isinstance(self.device, torch.device):
            raise TypeError(f"device must be a torch.device, got {type(self.device).__name__}")
        if self.backend is not None:
            _checks.one_of("backend", self.backend, BACKENDS)
        if self.world_size > 1 and self.backend is None:
            raise ValueError(f"world_size {self.world_size} needs a backend ('gloo' or 'nccl')")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """More than one process: gradients and metrics are exchanged."""
        return self.world_size > 1

    @classmethod
    def single(cls, device: Union[str, torch.device] = "cpu") -> "DistributedContext":
        """One process, nothing initialised."""
        return cls(device=torch.device(device))


# --- setup ---------------------------------------------------------------------------------

def _environment_int(name: str) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} must be an integer (set by torchrun)") from None


def _device_for(device: Union[str, torch.device, None], local_rank: int, distributed: bool) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {str(device)!r}")
    if device.type == "cpu" or not distributed:  # a single process checks its device where it uses it
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but CUDA is not available")
    if device.index is not None:
        raise ValueError(f"device {str(device)!r}: under torchrun each process uses cuda:LOCAL_RANK; pass 'cuda'")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank} has no CUDA device: {torch.cuda.device_count()} visible; "
                         "start at most that many processes per node (--nproc-per-node)")
    return torch.device("cuda", local_rank)


def init_from_environment(device: Union[str, torch.device, None] = None, *, backend: Optional[str] = None,
                          timeout: Optional[datetime.timedelta] = None) -> DistributedContext:
    """The context of this process, initialising the process group from ``torchrun``'s variables.

    ``device``: ``"cpu"``, ``"cuda"`` (each process takes ``cuda:LOCAL_RANK``) or ``None``
    (CUDA when available). ``backend``: default ``"nccl"`` on CUDA, ``"gloo"`` on CPU.
    ``timeout``: how long a collective may wait (``torch.distributed``'s default otherwise).
    Without ``RANK`` and ``WORLD_SIZE`` in the environment: a single process, nothing
    initialised. An already initialised process group is used as it is.
    """
    present = [name for name in _ENVIRONMENT[:2] if name in os.environ]
    if not present and not distributed_initialized():
        return DistributedContext.single(_device_for(device, 0, distributed=False))
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; cannot join the torchrun run")
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    else:
        missing = [name for name in _ENVIRONMENT[:2] if name not in os.environ]
        if missing:
            raise ValueError(f"incomplete torchrun environment: {', '.join(present)} set but {', '.join(missing)} "
                             "missing; launch with torchrun or unset them")
        rank, world_size = _environment_int("RANK"), _environment_int("WORLD_SIZE")
        local_rank = _environment_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    target = _device_for(device, local_rank, distributed=True)
    chosen = "nccl" if target.type == "cuda" else "gloo"
    if backend is not None:
        _checks.one_of("backend", backend, BACKENDS)
        if backend == "nccl" and target.type != "cuda":
            raise ValueError("backend 'nccl' needs device 'cuda'; use 'gloo' on CPU")
        chosen = backend
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if dist.is_initialized():
        chosen = dist.get_backend()
    else:
        dist.init_process_group(chosen, rank=rank, world_size=world_size, timeout=timeout)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=target,
                              backend=chosen)


def distributed_initialized() -> bool:
    """Whether a ``torch.distributed`` process group is up in this process."""
    return dist.is_available() and dist.is_initialized()


def shutdown() -> None:
    """Destroy the process group if one is initialised (call once at the end of a run)."""
    if distributed_initialized():
        dist.destroy_process_group()


# --- the model -----------------------------------------------------------------------------

def _equilibrium_functions(model: nn.Module) -> List[nn.Module]:
    """The ``f`` of every DEQ / Neural ODE layer: the modules called inside a solve."""
    return [layer.f for layer in model.modules() if isinstance(layer, (DEQ, NeuralODE))]


def _inside_solves(model: nn.Module) -> set:
    return {id(m) for f in _equilibrium_functions(model) if isinstance(f, nn.Module) for m in f.modules()}


def sync_batch_norm_targets(model: nn.Module) -> List[str]:
    """Names of the BatchNorms that :func:`wrap_model` converts on CUDA: those outside every ``f``.

    Raises ``ValueError`` for a ``SyncBatchNorm`` inside an ``f`` (it would deadlock the solve).
    """
    inside = _inside_solves(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.SyncBatchNorm) and id(module) in inside:
            raise ValueError(f"{name} is a SyncBatchNorm inside a DEQ's f: it all-reduces at every f call, and ranks "
                             "make different numbers of calls per solve (per-sample termination), so the run would "
                             "deadlock; use a plain BatchNorm there (its statistics are then per process)")
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm)
            and id(module) not in inside]


def _convert_batch_norms(model: nn.Module, names: Sequence[str]) -> nn.Module:
    if "" in names:  # the model is itself a BatchNorm
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        parent.add_module(child, nn.SyncBatchNorm.convert_sync_batchnorm(getattr(parent, child)))
    return model


def needs_unused_parameter_search(model: nn.Module) -> bool:
    """Whether some parameter can get no gradient in a step (see the module docstring)."""
    return any(isinstance(m, DEQ) and m.variant == "vanilla" and getattr(m, "input_gradient", "") == "final_call"
               and getattr(m, "output", "") == "iterate" for m in model.modules())


def wrap_model(model: nn.Module, ctx: DistributedContext, *, sync_batch_norm: bool = True,
               find_unused_parameters: Optional[bool] = None, **ddp_options) -> nn.Module:
    """``model`` on ``ctx.device``, wrapped in DDP when ``ctx`` has more than one process.

    ``sync_batch_norm``: on CUDA, convert the BatchNorms outside the equilibrium functions to
    ``SyncBatchNorm`` (in place; BatchNorm inside ``f`` stays per process, see the module
    docstring). ``find_unused_parameters``: ``None`` decides by
    :func:`needs_unused_parameter_search`. ``ddp_options`` go to ``DistributedDataParallel``.
    A model that is already DDP-wrapped is returned as it is.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(ctx, DistributedContext):
        raise TypeError(f"ctx must be a DistributedContext, got {type(ctx).__name__}")
    if isinstance(model, DistributedDataParallel):
        return model
    if not ctx.is_distributed:
        return model.to(ctx.device)
    targets = sync_batch_norm_targets(model)  # also refuses a SyncBatchNorm inside f
    if sync_batch_norm and ctx.device.type == "cuda" and targets:
        model = _convert_batch_norms(model, targets)
    if find_unused_parameters is None:
        find_unused_parameters = needs_unused_parameter_search(model)
    model = model.to(ctx.device)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters,
                                   **ddp_options)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


# --- data order and seeds --------------------------------------------------------------------

def make_sampler(dataset, ctx: DistributedContext, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False) -> DistributedSampler:
    """torch's ``DistributedSampler`` for this rank (any sized ``dataset``); call
    ``sampler.set_epoch(epoch)`` before each epoch. Every rank draws the same permutation
    from ``seed + epoch`` and takes every ``world_size``-th index from position ``rank``."""
    return DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed,
                              drop_last=drop_last)


def shard_size(num_samples: int, ctx: DistributedContext) -> int:
    """Samples per rank and epoch: ``ceil(num_samples / world_size)`` (DistributedSampler's)."""
    return -(-num_samples // ctx.world_size)


def shard_indices(order: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """This rank's part of a global sample ``order``, exactly as ``DistributedSampler`` splits
    its permutation: pad by repeating the start to a multiple of ``world_size``, then every
    ``world_size``-th index from ``rank``. Rank ``r``'s ``k``-th batch of ``b`` is then part
    ``r`` of the single-process batch ``k`` of ``world_size * b``. One process: ``order``."""
    if not ctx.is_distributed:
        return order
    total = shard_size(order.shape[0], ctx) * ctx.world_size
    padding = total - order.shape[0]
    if padding:
        order = torch.cat([order, order.repeat(-(-padding // order.shape[0]))[:padding]])
    return order[ctx.rank:total:ctx.world_size]


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random stream (dropout, Hutchinson probes) in a run seeded
    ``seed``: ``seed`` itself on rank 0 (a single process is unchanged), an independent
    stream derived from ``(seed, rank)`` by numpy's ``SeedSequence`` on the others, so that
    runs with neighbouring seeds do not share streams."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    _checks.positive_int("rank", rank, allow_zero=True)
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, rank]).generate_state(1, np.uint64)[0] >> 1)


# --- collectives (identities in a single process) ---------------------------------------------

def _reduce(values: Sequence[float], ctx: DistributedContext, op) -> List[float]:
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64,
                          device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def all_reduce_sum(values: Sequence[float], ctx: DistributedContext) -> List[float]:
    """Element-wise sums over ranks (counts and sums of metrics; exact for integers < 2^53)."""
    return list(values) if not ctx.is_distributed else _reduce(values, ctx, dist.ReduceOp.SUM)


def all_reduce_max(values: Sequence[float], ctx: DistributedContext) -> List[float]:
    """Element-wise maxima over ranks (wall times: the slowest rank sets the pace)."""
    return list(values) if not ctx.is_distributed else _reduce(values, ctx, dist.ReduceOp.MAX)


def all_gather_object(obj: T, ctx: DistributedContext) -> List[T]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not ctx.is_distributed:
        return [obj]
    gathered: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: DistributedContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def decided_by_main(fn: Callable[[], T], ctx: DistributedContext) -> T:
    """``fn()`` evaluated on rank 0 only, its result (or exception) handed to every rank.

    For decisions that must agree across ranks but read files rank 0 may be writing (does
    the output folder hold a run? is there a checkpoint?).
    """
    if not ctx.is_distributed:
        return fn()
    box: List[Any] = [None]
    if ctx.is_main:
        try:
            box[0] = (True, fn())
        except Exception as error:  # noqa: BLE001 - re-raised on every rank below
            box[0] = (False, error)
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


@contextlib.contextmanager
def main_process_first(ctx: DistributedContext) -> Iterator[None]:
    """Local rank 0 of each node runs the block first (a download, a cache), the others after."""
    if ctx.is_distributed and ctx.local_rank != 0:
        dist.barrier()
    yield
    if ctx.is_distributed and ctx.local_rank == 0:
        dist.barrier()
