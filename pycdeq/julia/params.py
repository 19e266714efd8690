"""Flat parameter vectors in Julia's layout, and back to torch tensors.

PycdeqBridge exchanges all parameters as one ``Float32`` vector: every Lux array in
column-major order (:func:`pycdeq.julia.convert.julia_memory`), concatenated in the order
``PycdeqBridge.layout`` reports. Python never assumes that order: :func:`order_from_layout`
matches Julia's report against the translation (paths and shapes) and fails loudly on any
difference, before a single weight is copied.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .convert import from_julia_memory, from_lux, julia_memory, to_lux
from .errors import TranslationError
from .translate import ModelSpec, ParamEntry


def parse_layout(layout: str) -> List[Tuple[str, Tuple[int, ...]]]:
    """``"layer_1.weight=128x784;..."`` (``PycdeqBridge.layout``) -> ``[(path, shape), ...]``."""
    out = []
    for item in filter(None, layout.split(";")):
        path, _, size = item.partition("=")
        out.append((path, tuple(int(s) for s in size.split("x"))))
    return out


def order_from_layout(spec: ModelSpec, layout: Sequence[Tuple[str, Tuple[int, ...]]]) -> Tuple[ParamEntry, ...]:
    """The spec's entries in the order Julia reports, after checking paths and shapes agree."""
    by_path = {p.lux_path: p for p in spec.params}
    julia = {path: shape for path, shape in layout}
    if set(julia) != set(by_path):
        raise TranslationError(f"Julia's parameters {sorted(julia)} differ from the translation's "
                               f"{sorted(by_path)}")
    for path, shape in layout:
        if by_path[path].lux_shape != tuple(shape):
            raise TranslationError(f"{path}: Julia has shape {shape}, the translation "
                                   f"{by_path[path].lux_shape}")
    return tuple(by_path[path] for path, _ in layout)


def flatten_params(spec: ModelSpec, tensors: Dict[str, torch.Tensor],
                   order: Optional[Iterable[ParamEntry]] = None) -> np.ndarray:
    """Torch-layout tensors (by torch name) -> one float32 vector in Julia's memory layout."""
    parts = []
    for p in (spec.params if order is None else order):
        if p.torch_name not in tensors:
            raise KeyError(f"missing parameter {p.torch_name!r}")
        t = tensors[p.torch_name].detach().to("cpu", torch.float32)
        parts.append(julia_memory(to_lux(t, p.plan())))
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)


def unflatten_params(spec: ModelSpec, flat, order: Optional[Iterable[ParamEntry]] = None
                     ) -> Dict[str, torch.Tensor]:
    """Inverse of :func:`flatten_params`: torch-layout tensors (new memory) by torch name."""
    flat = np.asarray(flat)
    entries = tuple(spec.params if order is None else order)
    total = sum(p.size for p in entries)
    if flat.shape != (total,):
        raise ValueError(f"expected a flat vector of {total} parameters, got shape {flat.shape}")
    out, offset = {}, 0
    for p in entries:
        lux = from_julia_memory(flat[offset:offset + p.size], p.lux_shape)
        out[p.torch_name] = torch.from_numpy(np.ascontiguousarray(from_lux(lux, p.plan())))
        offset += p.size
    return out


def model_params(spec: ModelSpec, model: nn.Module) -> Dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    return {p.torch_name: named[p.torch_name] for p in spec.params}


def load_params_into(model: nn.Module, spec: ModelSpec, flat, order=None) -> None:
    """Copy a flat Lux-layout vector (e.g. after training in Julia) into the torch model."""
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in unflatten_params(spec, flat, order).items():
            named[name].copy_(value)
