"""Small models shared by the layer tests, handed out through the ``build`` fixture.

Every ``f`` here is a contraction in ``z`` (its weights are rescaled to a known spectral
norm), so that all solvers converge, Picard iteration included, and unrolled backprop of a
long solve converges to the implicit gradient. Nothing uses BatchNorm: samples are
independent, which the per-sample checks rely on.
"""

from __future__ import annotations

import types
from typing import Optional

import pytest
import torch
from torch import nn

import pycdeq
from pycdeq.layers import DEQ


def _rescale_(weight: torch.Tensor, norm: float) -> None:
    """Scale a (possibly conv) weight so that its flattened spectral norm is ``norm``."""
    with torch.no_grad():
        matrix = weight.reshape(weight.shape[0], -1)
        weight.mul_(norm / torch.linalg.matrix_norm(matrix, 2))


class TanhDense(nn.Module):
    """``f(z, x) = tanh(Wz z + Wx x + b)``; Lipschitz in ``z`` with constant ``<= contraction``."""

    def __init__(self, dim: int, in_dim: Optional[int] = None, contraction: float = 0.5):
        super().__init__()
        self.Wz = nn.Linear(dim, dim)
        self.Wx = nn.Linear(in_dim or dim, dim, bias=False)
        _rescale_(self.Wz.weight, contraction)
        self.calls = 0

    def forward(self, z, x):
        self.calls += 1
        return torch.tanh(self.Wz(z) + self.Wx(x))


class DenseInjection(nn.Module):
    """The MNIST-dense ``f(z, x) = relu(Wz z) + relu(Wx x)`` (no bias), as in the paper."""

    def __init__(self, width: int, contraction: Optional[float] = None):
        super().__init__()
        self.Wz = nn.Linear(width, width, bias=False)
        self.Wx = nn.Linear(width, width, bias=False)
        if contraction is not None:
            _rescale_(self.Wz.weight, contraction)

    def forward(self, z, x):
        return torch.relu(self.Wz(z)) + torch.relu(self.Wx(x))


class SkipPredictor(nn.Module):
    """``g(x) = tanh(W x + b)`` mapping the input to the state."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, dim)

    def forward(self, x):
        return torch.tanh(self.linear(x))


# --- a 2-scale multiscale f: conv branches, strided-conv down map, conv + upsample up map ---

class InjectedConv(nn.Module):
    """Branch 1: ``tanh(conv(z) + x)`` (the injection enters only the finest scale)."""

    def __init__(self, channels: int, contraction: float):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        _rescale_(self.conv.weight, contraction)

    def forward(self, z, x):
        return torch.tanh(self.conv(z) + x)


class Conv(nn.Module):
    """Branch i >= 2: ``tanh(conv(z))``."""

    def __init__(self, channels: int, contraction: float):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        _rescale_(self.conv.weight, contraction)

    def forward(self, z):
        return torch.tanh(self.conv(z))


def _down(c_in: int, c_out: int, contraction: float) -> nn.Module:
    conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
    _rescale_(conv.weight, contraction)
    return nn.Sequential(conv, nn.ReLU())


def _up(c_in: int, c_out: int, contraction: float) -> nn.Module:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    _rescale_(conv.weight, contraction)
    return nn.Sequential(conv, nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"))


def _post(channels: int) -> nn.Module:
    conv = nn.Conv2d(channels, channels, 1)
    _rescale_(conv.weight, 0.9)
    return nn.Sequential(conv, nn.Tanh())


MULTISCALE_SCALES = ((2, 4, 4), (3, 2, 2))


def multiscale_parts(contraction: float = 0.12, post_fuse: bool = True):
    """``(main_layers, mapping_layers, post_fuse_layers)`` for scales 2x4x4 and 3x2x2.

    The conv weights are small enough that the fused map is a contraction in the flat state.
    """
    (c1, _, _), (c2, _, _) = MULTISCALE_SCALES
    main = [InjectedConv(c1, contraction), Conv(c2, contraction)]
    mapping = [[None, _down(c1, c2, contraction)], [_up(c2, c1, contraction), None]]
    post = [_post(c1), _post(c2)] if post_fuse else None
    return main, mapping, post


def multiscale_init_layers():
    """Skip predictor branches ``x (2x4x4) -> z_1 (2x4x4), z_2 (3x2x2)``."""
    (c1, _, _), (c2, _, _) = MULTISCALE_SCALES
    return [nn.Sequential(nn.Conv2d(c1, c1, 3, padding=1), nn.Tanh()),
            nn.Sequential(nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.Tanh())]


def multiscale_layer(variant: str, solver, **kwargs) -> DEQ:
    from pycdeq.layers import multiscale  # noqa: PLC0415 - imports the ODE integrator

    main, mapping, post = multiscale_parts()
    if variant == "vanilla":
        return multiscale.MultiScaleDEQ(main, mapping, post, solver, MULTISCALE_SCALES, **kwargs)
    if variant == "skip_reg":
        return multiscale.MultiScaleSkipRegDEQ(main, mapping, post, solver, MULTISCALE_SCALES, **kwargs)
    return multiscale.MultiScaleSkipDEQ(main, mapping, post, multiscale_init_layers(), solver,
                                        MULTISCALE_SCALES, **kwargs)


def dense_layer(variant: str, solver, dim: int = 6, in_dim: int = 4, **kwargs) -> DEQ:
    f = TanhDense(dim, in_dim)
    if variant == "vanilla":
        return DEQ(f, solver, state_shape=(dim,), **kwargs)
    if variant == "skip_reg":
        return pycdeq.layers.SkipRegDEQ(f, solver, state_shape=(dim,), **kwargs)
    return pycdeq.layers.SkipDEQ(f, SkipPredictor(in_dim, dim), solver, state_shape=(dim,), **kwargs)


def tight_anderson(abstol: float = 1e-12, max_iter: int = 200) -> pycdeq.Anderson:
    return pycdeq.Anderson(m=5, max_iter=max_iter, termination=pycdeq.Termination(mode="abs", abstol=abstol))


def tight_gmres() -> pycdeq.GMRES:
    return pycdeq.GMRES(rtol=1e-13, atol=1e-15, max_iter=200, restart=50)


def solvers(abstol: float, max_iter: int = 300) -> dict:
    """One of each kind, stopping at ``||f(z) - z|| <= abstol`` per sample: the discrete root
    finders and Tsit5 integrating ``dz/dt = f(z) - z`` (integrator error 10x below ``abstol``)."""
    term = pycdeq.Termination(mode="abs", abstol=abstol)
    return {
        "anderson": pycdeq.Anderson(m=5, max_iter=max_iter, termination=term),
        "broyden": pycdeq.Broyden(memory=30, max_iter=max_iter, termination=term),
        "fixed_point": pycdeq.FixedPoint(max_iter=max_iter, termination=term),
        "tsit5": pycdeq.Tsit5(rtol=abstol / 10, atol=abstol / 10, termination=term, max_steps=max_iter),
    }


def flat_residual(layer: DEQ, z, x) -> torch.Tensor:
    """Per-sample ``||f(z, x) - z||_2`` over the flattened (multiscale: concatenated) state."""
    with torch.no_grad():
        fz = layer.f(z, x)
    parts = zip(fz, z) if isinstance(z, tuple) else [(fz, z)]
    diff = torch.cat([(a - b).reshape(b.shape[0], -1) for a, b in parts], dim=1)
    return torch.linalg.vector_norm(diff, dim=1)


@pytest.fixture
def build():
    """The helpers above, as one namespace (conftest modules are not importable by name)."""
    return types.SimpleNamespace(
        TanhDense=TanhDense, DenseInjection=DenseInjection, SkipPredictor=SkipPredictor,
        multiscale_parts=multiscale_parts, multiscale_init_layers=multiscale_init_layers,
        multiscale_layer=multiscale_layer, dense_layer=dense_layer, scales=MULTISCALE_SCALES,
        tight_anderson=tight_anderson, tight_gmres=tight_gmres, solvers=solvers,
        flat_residual=flat_residual, rescale_=_rescale_)
