"""What every equilibrium layer does with its input: check it, and build a zero state for it."""

from __future__ import annotations

from typing import Optional, Sequence, TypeGuard, Union

import torch

from .. import _checks
from ..solvers.solution import State

#: A per-sample state shape, or one per scale (a multiscale state).
ShapeSpec = Union[Sequence[int], Sequence[Sequence[int]]]


def is_multiscale(shape: ShapeSpec) -> TypeGuard[Sequence[Sequence[int]]]:
    return len(shape) > 0 and isinstance(shape[0], (tuple, list))


def check_input(x) -> None:
    """The layer input must be a finite floating-point tensor (one host sync)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"the layer input x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"the layer input x must be floating point, got {x.dtype}")
    _checks.finite_tensor("the layer input x", x)


def zero_state(state_shape: Optional[ShapeSpec], x: torch.Tensor) -> State:
    """Zeros of the state's shape for the batch of ``x`` (``x``'s shape when ``None``)."""
    if state_shape is None:
        return torch.zeros_like(x)
    if is_multiscale(state_shape):
        return tuple(x.new_zeros(x.shape[0], *s) for s in state_shape)
    return x.new_zeros(x.shape[0], *state_shape)
