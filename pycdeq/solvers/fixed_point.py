"""Damped Picard iteration: ``z <- z + damping * (fn(z) - z)``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _checks
from .discrete import DiscreteSolver


@dataclass(frozen=True)
class FixedPoint(DiscreteSolver):
    """Damped fixed-point (Picard) iteration. Converges when ``fn`` is a contraction.

    ``damping=1`` is plain iteration ``z <- fn(z)``; smaller values average with the current
    iterate, which helps when the Jacobian has eigenvalues near -1.
    """

    damping: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        _checks.in_range("damping", self.damping, 0.0, 1.0, low_open=True)

    def init(self, z0, fz0):
        return {"z": z0, "fz": fz0}

    def propose(self, state) -> torch.Tensor:
        z, fz = state["z"], state["fz"]
        return fz if self.damping == 1.0 else torch.lerp(z, fz, self.damping)

    def update(self, state, z, fz, active) -> None:
        state["z"], state["fz"] = z, fz
