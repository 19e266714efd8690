"""Losses attached to a DEQ's solution: the skip loss and Jacobian regularization.

* Skip loss (Pal et al., Skip DEQ / Skip Reg. DEQ): ``mean |z* - z0|`` over every element of
  every scale of the batch (L1 mean, the paper's form). ``z*`` carries the implicit gradient
  and ``z0 = g(x)`` or ``f(0, x)`` its own explicit one, so this loss is what trains ``g``.
  With the layer's ``output="f_of_iterate"``, ``z* = f(u*, x)`` and this is exactly the
  paper-era ``mean |f(u*, x) - z0|``; with the default ``output="iterate"`` it differs from
  it by at most the solver's residual.
* Jacobian regularization (Bai et al. 2021): Hutchinson's estimate of
  ``||J_f(z*)||_F^2 / d`` with ``J_f = df/dz`` and ``d`` the per-sample state size, from one
  vector-Jacobian product per random vector: ``E_v ||v^T J||^2 = ||J||_F^2`` for
  ``v ~ N(0, I)``. The VJP is built with ``create_graph=True`` so the loss is differentiable
  w.r.t. the parameters of ``f`` (and the injection). ``z*`` is a constant here, as in Bai et
  al.; the loss trains ``f`` to be contractive where it is solved, not to move ``z*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

import torch

from .. import _checks


@dataclass(frozen=True)
class JacobianRegularization:
    """Options of the Jacobian penalty: ``num_vectors`` Hutchinson probes per call."""

    num_vectors: int = 1

    def __post_init__(self):
        _checks.positive_int("num_vectors", self.num_vectors)

    def __call__(self, flat_fn: Callable[..., torch.Tensor], z_star: torch.Tensor,
                 args: Tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
        """Estimate ``mean_b ||J_b||_F^2 / d`` at the flat fixed point ``z_star`` ``(B, d)`` of
        ``flat_fn(z, *args)``."""
        z = z_star.detach().requires_grad_(True)
        with torch.enable_grad():
            fz = flat_fn(z, *args)
            total = fz.new_zeros(())
            for _ in range(self.num_vectors):
                v = torch.randn_like(fz)
                (vjp,) = torch.autograd.grad(fz, z, v, create_graph=True)
                total = total + vjp.pow(2).sum(dim=1).mean() / z.shape[1]
        return total / self.num_vectors


def skip_loss(z_star: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
    """``mean |z* - z0|`` of flat states ``(B, d)``."""
    return (z_star - z0).abs().mean()
