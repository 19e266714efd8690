"""Multiscale DEQs (MDEQ wiring) over a tuple state, one tensor per resolution.

``f((z_1, ..., z_N), x)``, as in DeepEquilibriumNetworks.jl and MDEQ:

    b_1 = main_1(z_1, x)                  # only the first (finest) branch gets the injection
    b_i = main_i(z_i)                     # i >= 2
    s_j = sum_i M[i][j](b_i)              # fusion; M[j][j] is the identity
    out_j = post_j(s_j)                   # optional post-fuse layer per scale

The solvers work on the tuple directly (flattened internally), so the user never
concatenates scales. The layer constructors mirror DeepEquilibriumNetworks.jl's
``MultiScale*`` family; the paper's blocks (residual block, strided-conv down mapping,
conv + nearest-upsample up mapping) live in :mod:`pycdeq.models`.
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from .deq import DEQ
from .neural_ode import NeuralODE


def _check_scales(scales, count: int, what: str) -> tuple:
    scales = tuple(tuple(int(d) for d in s) for s in scales)
    if len(scales) != count:
        raise ValueError(f"{what} has {count} entries but scales has {len(scales)}; they must match")
    return scales


class MultiScaleFunction(nn.Module):
    """The fused multiscale map ``f(z, x)`` described in the module docstring."""

    def __init__(self, main_layers: Sequence[nn.Module], mapping_layers: Sequence[Sequence[Optional[nn.Module]]],
                 post_fuse_layers: Optional[Sequence[nn.Module]] = None):
        super().__init__()
        n = len(main_layers)
        if n < 1:
            raise ValueError("main_layers must hold at least one branch")
        if len(mapping_layers) != n or any(len(row) != n for row in mapping_layers):
            shape = [len(row) for row in mapping_layers]
            raise ValueError(f"mapping_layers must be a {n}x{n} matrix (one row per source scale), "
                             f"got rows of lengths {shape}")
        if post_fuse_layers is not None and len(post_fuse_layers) != n:
            raise ValueError(f"post_fuse_layers has {len(post_fuse_layers)} entries for {n} scales")
        self.main = nn.ModuleList(main_layers)
        # Diagonal entries are the identity; store them as nn.Identity for a uniform loop.
        self.mapping = nn.ModuleList(
            nn.ModuleList(nn.Identity() if (i == j or m is None) else m for j, m in enumerate(row))
            for i, row in enumerate(mapping_layers))
        self.post_fuse = nn.ModuleList(post_fuse_layers) if post_fuse_layers is not None else None
        self.num_scales = n

    def forward(self, z, x):
        if not isinstance(z, (tuple, list)) or len(z) != self.num_scales:
            got = len(z) if isinstance(z, (tuple, list)) else "a single tensor"
            raise ValueError(f"the multiscale state must be a tuple of {self.num_scales} tensors, got {got}")
        branches = [self.main[0](z[0], x)] + [self.main[i](z[i]) for i in range(1, self.num_scales)]
        fused = []
        for j in range(self.num_scales):
            total = branches[j]
            for i in range(self.num_scales):
                if i != j:
                    total = total + self.mapping[i][j](branches[i])
            fused.append(self.post_fuse[j](total) if self.post_fuse is not None else total)
        return tuple(fused)


class MultiScalePredictor(nn.Module):
    """Skip predictor ``g(x) = (g_1(x), ..., g_N(x))``: one explicit branch per scale."""

    def __init__(self, branches: Sequence[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return tuple(branch(x) for branch in self.branches)


def MultiScaleDEQ(main_layers, mapping_layers, post_fuse_layers, solver, scales, **kwargs) -> DEQ:
    """Multiscale DEQ with zero initial state. ``scales``: per-scale state shapes ``(C, H, W)``."""
    scales = _check_scales(scales, len(main_layers), "main_layers")
    f = MultiScaleFunction(main_layers, mapping_layers, post_fuse_layers)
    return DEQ(f, solver, state_shape=scales, **kwargs)


def MultiScaleSkipDEQ(main_layers, mapping_layers, post_fuse_layers, init_layers, solver, scales, **kwargs) -> DEQ:
    """Multiscale Skip DEQ: ``z0_i = init_layers[i](x)``."""
    scales = _check_scales(scales, len(main_layers), "main_layers")
    _check_scales(scales, len(init_layers), "init_layers")
    f = MultiScaleFunction(main_layers, mapping_layers, post_fuse_layers)
    return DEQ(f, solver, init=MultiScalePredictor(init_layers), state_shape=scales, **kwargs)


def MultiScaleSkipRegDEQ(main_layers, mapping_layers, post_fuse_layers, solver, scales, **kwargs) -> DEQ:
    """Multiscale Skip Reg. DEQ: ``z0 = f(0, x)``."""
    scales = _check_scales(scales, len(main_layers), "main_layers")
    f = MultiScaleFunction(main_layers, mapping_layers, post_fuse_layers)
    return DEQ(f, solver, init="skip_reg", state_shape=scales, **kwargs)


def MultiScaleNeuralODE(main_layers, mapping_layers, post_fuse_layers, method, scales, **kwargs) -> NeuralODE:
    """Multiscale Neural ODE baseline: the same ``f`` integrated on ``[0, t1]``."""
    scales = _check_scales(scales, len(main_layers), "main_layers")
    f = MultiScaleFunction(main_layers, mapping_layers, post_fuse_layers)
    return NeuralODE(f, method, state_shape=scales, **kwargs)
