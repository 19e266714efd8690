"""Attaching the implicit (steady-state adjoint) gradient to a solved fixed point.

The forward solve runs without autograd. :func:`attach_implicit_gradient` then evaluates
``fz = fn(z*)`` once with autograd on, at a detached copy of ``z*``, and returns ``z*`` through
:class:`_ImplicitGradient`, whose backward solves the adjoint system (the adjoint's
``solve``, :mod:`pycdeq.adjoints.methods`) and hands ``g`` to ``fz``'s graph. Autograd then carries
``g^T df/dtheta`` to every parameter and input ``fn`` closes over: the injected ``x`` gets its
exact implicit gradient, not a one-step one.

Second differentiation: when backward runs with ``create_graph=True``, the VJPs inside it
are built with ``create_graph=True`` too, so the returned gradients are differentiable
(TorchDEQ computes them without, which breaks double backward, its issue #10). As in
Bai et al.'s Jacobian regularization, the point ``z*`` itself is treated as a constant by
that second derivative.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Tuple

import torch

from ..solvers.base import FlatMap
from .stats import AdjointStats

if TYPE_CHECKING:
    from .base import ImplicitAdjoint


class _ImplicitGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fz, z_star, z_leaf, adjoint, stats):
        ctx.save_for_backward(fz)
        ctx.z_leaf = z_leaf
        ctx.adjoint = adjoint
        ctx.stats = stats
        return z_star.clone()

    @staticmethod
    def backward(ctx, grad_output):
        (fz,) = ctx.saved_tensors
        z_leaf = ctx.z_leaf
        create_graph = torch.is_grad_enabled()

        def vjp(u: torch.Tensor) -> torch.Tensor:
            (out,) = torch.autograd.grad(fz, z_leaf, u, retain_graph=True,
                                         create_graph=create_graph, allow_unused=True)
            return torch.zeros_like(u) if out is None else out

        g, report = ctx.adjoint.solve(vjp, grad_output)
        ctx.stats.record(report)
        return g, None, None, None, None


def attach_implicit_gradient(fn: FlatMap, z_star: torch.Tensor, args: Tuple[torch.Tensor, ...],
                             adjoint: "ImplicitAdjoint") -> Tuple[torch.Tensor, AdjointStats]:
    """Return ``z*`` (same values) differentiable by the implicit function theorem, and the
    :class:`AdjointStats` that the backward pass will fill in. Costs one ``fn`` call."""
    z_leaf = z_star.detach().requires_grad_(True)
    with torch.enable_grad():
        fz = fn(z_leaf, *args)
    stats = AdjointStats(adjoint.name)
    return _ImplicitGradient.apply(fz, z_star.detach(), z_leaf, adjoint, stats), stats
