"""Packing a state (a tensor or a tuple of tensors, batch first) into one flat ``(batch, dim)`` tensor.

Solvers work on a flat ``(batch, dim)`` view of the state so that their linear algebra is
one batched op whatever the user's state looks like (an image ``(B, C, H, W)`` or a tuple
of per-scale tensors). :class:`StatePacker` converts between the two and checks what ``fn``
returns.
"""

from __future__ import annotations

from typing import Callable

import torch

from .solution import State


def _describe(state) -> str:
    if isinstance(state, torch.Tensor):
        return f"tensor of shape {tuple(state.shape)} and dtype {state.dtype}"
    if isinstance(state, (tuple, list)):
        return "tuple of (" + ", ".join(_describe(s) for s in state) + ")"
    return type(state).__name__


class StatePacker:
    """Flattens a state (tensor or tuple of tensors, batch first) to ``(batch, dim)``."""

    def __init__(self, z0: State, name: str = "z0"):
        self.is_tuple = isinstance(z0, (tuple, list))
        parts = tuple(z0) if self.is_tuple else (z0,)
        if not parts or not all(isinstance(p, torch.Tensor) for p in parts):
            raise TypeError(f"{name} must be a tensor or a tuple of tensors, got {_describe(z0)}")
        first = parts[0]
        for i, p in enumerate(parts):
            label = f"{name}[{i}]" if self.is_tuple else name
            if not p.is_floating_point():
                raise TypeError(f"{label} must be a floating-point tensor, got {p.dtype}")
            if p.dim() < 1 or p.shape[0] < 1:
                raise ValueError(f"{label} must have a non-empty batch dimension first, got shape {tuple(p.shape)}")
            if p.shape[0] != first.shape[0] or p.dtype != first.dtype or p.device != first.device:
                raise ValueError(f"all parts of {name} must share batch size, dtype and device; got {_describe(z0)}")
        self.name = name
        self.batch = first.shape[0]
        self.dtype = first.dtype
        self.device = first.device
        self.shapes = tuple(tuple(p.shape[1:]) for p in parts)
        self.sizes = tuple(int(torch.Size(s).numel()) for s in self.shapes)
        self.dim = sum(self.sizes)

    # The batch size is read from the tensors, not fixed at construction: a compacting solver
    # (``compact=True``) evaluates ``fn`` on the rows still running only.
    def pack(self, z: State) -> torch.Tensor:
        if isinstance(z, torch.Tensor):  # a single-tensor state (check_output has matched the structure)
            return z.reshape(z.shape[0], self.dim)
        return torch.cat([p.reshape(p.shape[0], -1) for p in z], dim=1)

    def unpack(self, flat: torch.Tensor) -> State:
        batch = flat.shape[0]
        if not self.is_tuple:
            return flat.view(batch, *self.shapes[0])
        parts = flat.split(self.sizes, dim=1)
        return tuple(p.reshape(batch, *s) for p, s in zip(parts, self.shapes))

    def check_output(self, out: State, fn_name: str = "fn", batch: int | None = None) -> None:
        """Raise naming both structures if ``out`` is not shaped like the state (of ``batch`` rows)."""
        batch = self.batch if batch is None else batch
        parts = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        ok = (isinstance(out, (tuple, list)) == self.is_tuple and len(parts) == len(self.shapes)
              and all(isinstance(p, torch.Tensor) for p in parts))
        if ok:
            ok = all(tuple(p.shape) == (batch, *s) and p.dtype == self.dtype
                     for p, s in zip(parts, self.shapes))
        if not ok:
            expected = [(batch, *s) for s in self.shapes]
            want = f"shape(s) {expected if self.is_tuple else expected[0]} and dtype {self.dtype}"
            raise ValueError(f"{fn_name} returned a {_describe(out)}, but the state {self.name} "
                             f"needs {want}")

    def flat_fn(self, fn: Callable[..., State]) -> Callable[..., torch.Tensor]:
        """``fn(z, *args)`` acting on flat states, checking every output's structure (cheap:
        no sync). ``args`` are passed through untouched; a compacting solver hands over the
        rows of the batch-aligned ones that it still evaluates."""

        def flat(z: torch.Tensor, *args) -> torch.Tensor:
            out = fn(self.unpack(z), *args)
            self.check_output(out, batch=z.shape[0])
            return self.pack(out)

        return flat
