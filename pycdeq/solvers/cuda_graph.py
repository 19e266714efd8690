"""The CUDA-graph loop of the discrete solvers: ``Anderson(graph_block=K)`` (any discrete solver).

A small DEQ on a GPU is bound by kernel launches: an iteration is a few dozen small kernels
around one call of ``fn``, each costing the host a few microseconds to launch. With
``graph_block=K`` the solver captures ``K`` iterations (the ``fn`` call, the solver's update,
the per-sample freezing and termination bookkeeping: :func:`~.discrete.step`) as one CUDA
graph and replays it until every sample has stopped, reading the "any sample running?" flag
once per block: one launch and one host sync per ``K`` iterations.

Per-sample results are those of the eager loop: the block runs exactly the eager loop's
iterations, and samples that stop inside a block are frozen by ``torch.where`` as in the
eager loop. Only the batch counters differ, as with ``Termination.check_every``: the loop
stops at a block boundary, so ``nfe`` and ``steps`` may exceed the eager loop's by up to
``K - 1``.

How a solve runs (:func:`run`): the first iteration runs eagerly on a side stream (the warm-up
that CUDA graphs need: cuBLAS / cuSOLVER handles and workspaces are created outside the
capture); then ``(max_iter - 1) // K`` blocks are replayed from one capture, each followed by
one host read of the flag; the remaining ``(max_iter - 1) % K`` iterations run eagerly.

Static buffers (:class:`LoopBuffers`): a graph replays kernels on fixed addresses, so every
tensor an iteration writes (the iterate, ``fn(z)``, the counter, the solver's memory, the
tracker's books) is snapshotted before capture, and the end of the block copies the block's
results back into those tensors; the next replay starts from there.

Restrictions (checked, with a clear error, where they can be):

* CUDA tensors only (``ValueError`` on another device): there is nothing to capture elsewhere;
* fixed shapes: ``compact=True`` is refused at construction (compaction changes the batch);
* no autograd through the iterations: the implicit adjoints (GMRES, FixedPointAdjoint, JFB)
  run the solve under ``torch.no_grad()``, ``Unrolled`` cannot be used (``RuntimeError``);
* no host logic inside ``fn``: no ``.item()``, no ``print`` of values, no Python branch on a
  tensor, no CPU tensors; CUDA refuses such calls during capture (``RuntimeError`` naming
  the cause); a data-dependent Python branch that does not sync is captured once and then
  replayed as captured, silently;
* inputs ``fn`` reads (its parameters and ``args``) must not be replaced or resized during the
  solve (they are not: the graph lives for one solve);
* not under ``torch.compile`` tracing (compile ``fn`` instead, or the whole model without
  ``graph_block``: ``docs/compile.md``).

The capture costs about as much host time as ``K`` eager iterations, once per solve, so the
loop pays off when a solve takes several blocks.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Tuple

import torch

from .. import _checks
from .history import fixed_shapes


def check_options(graph_block, compact: bool) -> None:
    """Validate ``graph_block`` (a solver option) against the solver's other options."""
    _checks.positive_int("graph_block", graph_block, allow_zero=True)
    if graph_block and compact:
        raise ValueError("graph_block needs fixed shapes, but compact=True changes the batch during the "
                         "solve; use one of the two")


def check_inputs(z0: torch.Tensor) -> None:
    """Refuse a solve the CUDA-graph loop cannot run (module docstring)."""
    if torch.is_grad_enabled():
        raise RuntimeError("graph_block runs the iterations without autograd: solve under torch.no_grad() or with "
                           "an implicit adjoint (GMRES, FixedPointAdjoint, JFB), not Unrolled")
    if z0.device.type != "cuda":
        raise ValueError(f"graph_block needs CUDA tensors (the loop is captured as a CUDA graph), but the state is "
                         f"on {z0.device.type}; use graph_block=0 there")
    if torch.compiler.is_compiling():
        raise RuntimeError("graph_block cannot run inside torch.compile tracing; compile fn instead, or use "
                           "graph_block=0 with a compiled model (docs/compile.md)")
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError("graph_block cannot run inside another CUDA-graph capture")


def plan(max_iter: int, done: int, block: int) -> Tuple[int, int]:
    """``(blocks, tail)``: the iterations left after ``done`` as whole captured blocks of
    ``block`` and an eager remainder; never more than ``max_iter`` in all."""
    left = max(max_iter - done, 0)
    return left // block, left % block


class LoopBuffers:
    """The tensors one iteration writes, by name, as static buffers for a captured block.

    Names: ``z``, ``fz``, ``counter``, ``state.<key>`` for every tensor of the solver's dict
    state and ``tracker.<name>`` for the tracker's per-sample books. Names bound to the same
    tensor (Broyden keeps the iterate in its state) share one buffer."""

    def __init__(self, loop):
        self.names = _bindings(loop)
        self.buffers: Dict[int, torch.Tensor] = {}  # group id -> buffer
        self.group_of: Dict[str, int] = {}
        seen: Dict[int, int] = {}
        for name, tensor in self.names.items():
            group = seen.setdefault(id(tensor), len(seen))
            self.group_of[name] = group
            self.buffers[group] = tensor
        _check_disjoint(self.buffers.values(), "the loop's tensors share memory")

    def store(self, loop) -> None:
        """Copy the loop's current tensors into the buffers (the end of a captured block)."""
        current = _bindings(loop)
        if current.keys() != self.names.keys():
            changed = sorted(current.keys() ^ self.names.keys())
            raise RuntimeError(f"the iteration changed the loop's tensors: {changed}")
        results: Dict[int, torch.Tensor] = {}
        for name, tensor in current.items():
            group = self.group_of[name]
            if results.setdefault(group, tensor) is not tensor:
                raise RuntimeError(f"the iteration changed which of the loop's tensors are one tensor ({name})")
        if len({id(t) for t in results.values()}) != len(results):
            raise RuntimeError("the iteration bound two of the loop's buffers to one tensor")
        fresh = [(self.buffers[g], t) for g, t in results.items() if t is not self.buffers[g]]
        static = {_storage(b) for b in self.buffers.values()}
        if any(_storage(t) in static for _, t in fresh):
            raise RuntimeError("a result of the iteration is a view of one of the loop's buffers")
        for buffer, tensor in fresh:
            buffer.copy_(tensor)

    def restore(self, loop) -> None:
        """Point the loop at the buffers again (after a capture or an eager stand-in)."""
        for name in self.names:
            _assign(loop, name, self.buffers[self.group_of[name]])


def _bindings(loop) -> Dict[str, torch.Tensor]:
    if not isinstance(loop.state, dict):
        raise TypeError(f"graph_block needs a solver whose state is a dict of tensors, got {type(loop.state).__name__}")
    names = {"z": loop.z, "fz": loop.fz, "counter": loop.counter}
    names.update({f"state.{k}": v for k, v in loop.state.items() if torch.is_tensor(v)})
    for attr in loop.tracker.per_sample_books():
        value = getattr(loop.tracker, attr)
        if value is not None:
            names[f"tracker.{attr}"] = value
    return names


def _assign(loop, name: str, tensor: torch.Tensor) -> None:
    owner, _, key = name.partition(".")
    if not key:
        setattr(loop, owner, tensor)
    elif owner == "state":
        loop.state[key] = tensor
    else:
        setattr(loop.tracker, key, tensor)


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _check_disjoint(tensors, message: str) -> None:
    storages = [_storage(t) for t in tensors]
    if len(set(storages)) != len(storages):
        raise RuntimeError(f"graph_block: {message}")


class CUDAGraphCapture:
    """Captures a block as a CUDA graph (:meth:`capture`) and replays it."""

    def __init__(self):
        self.stream = torch.cuda.Stream()
        self.graph: torch.cuda.CUDAGraph | None = None

    @contextlib.contextmanager
    def warmup(self):
        """Run eager work on the side stream the capture uses, as the CUDA-graph docs ask."""
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            yield
        torch.cuda.current_stream().wait_stream(self.stream)

    def capture(self, body: Callable[[], None]) -> Callable[[], None]:
        # capture_begin/end rather than torch.cuda.graph(): that one synchronises the device
        # and empties the allocator's cache on entry, a cost per solve for nothing here.
        # "thread_local": a data-loading thread that pins memory meanwhile does not break the
        # capture (only this thread's calls are checked).
        self.graph = torch.cuda.CUDAGraph()
        with self.warmup():
            self.graph.capture_begin(capture_error_mode="thread_local")
            try:
                body()
            except RuntimeError as error:
                _abort(self.graph)
                raise RuntimeError("graph_block: the iteration could not be captured as a CUDA graph; fn must "
                                   "not synchronise with the host (.item(), printing values, Python branches on "
                                   "tensors, CPU tensors): " + str(error)) from error
            self.graph.capture_end()
        return self.graph.replay


def _abort(graph) -> None:
    try:
        graph.capture_end()
    except RuntimeError:
        pass


class EagerCapture:
    """A stand-in for :class:`CUDAGraphCapture` that runs the block eagerly on every replay:
    the same body, buffers and schedule on any device (tests on CPU, debugging)."""

    warmup = staticmethod(contextlib.nullcontext)

    def capture(self, body: Callable[[], None]) -> Callable[[], None]:
        return body


def run(loop, max_iter: int, block: int, capture=None) -> Tuple[int, int]:
    """Iterate ``loop`` (a :class:`~.discrete.Iteration` from :func:`~.discrete.start`) in
    captured blocks of ``block`` iterations; returns ``(iterations, nfe)`` of the batch.
    ``capture``: :class:`CUDAGraphCapture` (default) or :class:`EagerCapture`."""
    capture = CUDAGraphCapture() if capture is None else capture
    # The body captured is the fixed-shape one (history.py); on CUDA it is the only one, and
    # an eager stand-in on CPU runs the same.
    with fixed_shapes():
        return _run(loop, max_iter, block, capture)


def _run(loop, max_iter: int, block: int, capture) -> Tuple[int, int]:
    iteration, nfe = 0, 1
    if max_iter == 0 or loop.running() == 0:
        return iteration, nfe
    with capture.warmup():
        loop.step()
    iteration, nfe = 1, 2
    blocks, tail = plan(max_iter, iteration, block)
    running = loop.running()
    if blocks and running:
        buffers = LoopBuffers(loop)

        def body():
            for _ in range(block):
                loop.step()
            buffers.store(loop)

        replay = capture.capture(body)
        buffers.restore(loop)
        for _ in range(blocks):
            replay()
            buffers.restore(loop)
            iteration, nfe = iteration + block, nfe + block
            running = loop.running()  # the one host read of the block
            if not running:
                return iteration, nfe
    if running:
        for _ in range(tail):
            loop.step()
            iteration, nfe = iteration + 1, nfe + 1
    return iteration, nfe

