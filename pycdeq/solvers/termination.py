"""When a sample has reached its fixed point: the termination rule shared by all solvers.

The residual of a state ``z`` is ``r = fn(z) - z``; for an ODE ``dz/dt = fn(z) - z`` this is
the right-hand side itself. A sample stops when

* ``mode="abs"``:  ``||r|| <= abstol``
* ``mode="rel"``:  ``||r|| <= reltol * ||fn(z)||``
* ``mode="norm"``: both of the above (DeepEquilibriumNetworks.jl's ``NormTerminationMode``)

with ``||.||`` taken **per sample** (``norm="l2"``: Euclidean over the sample's elements;
``norm="max"``: max-abs, the reference v2 default), and each sample stops on its own.

``scope="batch"`` reproduces the reference instead (DeepEquilibriumNetworks.jl v0.2.6,
``rel_norm`` on the whole-batch state vector): one norm over the whole batch, built from
the per-sample norms (``l2``: ``sqrt(sum_b ||r_b||^2)``, the 2-norm of the flattened batch;
``max``: the largest per-sample max-abs), and every sample stops together, when the batch
passes. The per-sample safeguards stay per sample: a sample whose residual turns NaN/Inf
or (with ``safe``) diverges is stopped alone, and keeps counting in the batch norm with its
frozen residual (so a NaN sample keeps the batch from passing, as in the reference), and
``best`` picks each sample's own lowest-residual iterate. Solvers that remove finished
samples from the work (``compact=True``) refuse this scope: no sample finishes early.

``safe=True`` adds the divergence guard: a sample whose residual grows past
``divergence_factor`` times its initial residual is stopped and reported as diverged.
``best=True`` returns each sample's lowest-residual iterate instead of its last one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .. import _checks

#: Where the norm of the termination test is taken: per sample, or once over the batch.
SCOPES = ("sample", "batch")


@dataclass(frozen=True)
class Termination:
    mode: Literal["abs", "rel", "norm"] = "abs"
    abstol: float = 1e-4
    reltol: float = 1e-4
    norm: Literal["l2", "max"] = "l2"
    safe: bool = False
    divergence_factor: float = 1e3
    best: bool = False
    scope: Literal["sample", "batch"] = "sample"
    # How often (in iterations) the loop reads the "all stopped?" flag on the host. None
    # means every iteration on CPU (free there) and every 8 on CUDA, where each read is a
    # device->host sync. Results do not depend on it: stopped samples are frozen.
    check_every: int | None = None

    def __post_init__(self):
        _checks.one_of("mode", self.mode, ("abs", "rel", "norm"))
        _checks.one_of("norm", self.norm, ("l2", "max"))
        _checks.one_of("scope", self.scope, SCOPES)
        _checks.positive("abstol", self.abstol, allow_zero=self.mode == "rel")
        _checks.positive("reltol", self.reltol, allow_zero=self.mode == "abs")
        _checks.positive("divergence_factor", self.divergence_factor)
        if self.divergence_factor <= 1:
            raise ValueError(f"divergence_factor must be > 1, got {self.divergence_factor}")
        if not isinstance(self.safe, bool) or not isinstance(self.best, bool):
            raise TypeError("safe and best must be bool")
        if self.check_every is not None:
            _checks.positive_int("check_every", self.check_every)

    def sample_norm(self, v: torch.Tensor) -> torch.Tensor:
        """Per-sample norm of a flat ``(batch, dim)`` tensor -> ``(batch,)``."""
        if self.norm == "l2":
            return torch.linalg.vector_norm(v, dim=1)
        return v.abs().amax(dim=1)

    def batch_norm(self, sample_norms: torch.Tensor) -> torch.Tensor:
        """The whole batch's norm (0-d) from the per-sample norms of :meth:`sample_norm`."""
        if self.norm == "l2":
            return torch.linalg.vector_norm(sample_norms)
        return sample_norms.amax()

    def converged(self, residual: torch.Tensor, fz_norm: torch.Tensor) -> torch.Tensor:
        """(batch,) bool from per-sample ``||fn(z) - z||`` and ``||fn(z)||``; with
        ``scope="batch"`` the test is on the batch norms and its one answer is broadcast."""
        if self.scope == "batch":
            batch_residual = self.batch_norm(residual)
            batch_fz = batch_residual if self.mode == "abs" else self.batch_norm(fz_norm)
            return self._test(batch_residual, batch_fz).expand(residual.shape)
        return self._test(residual, fz_norm)

    def check_compact(self, compact: bool) -> None:
        """Raise if a solver with ``compact=compact`` cannot apply this rule."""
        if compact and self.scope == "batch":
            raise ValueError("Termination(scope='batch') stops every sample together, so there is nothing "
                             "to compact: use compact=False with scope='batch', or scope='sample' with "
                             "compact=True")

    def _test(self, residual: torch.Tensor, fz_norm: torch.Tensor) -> torch.Tensor:
        if self.mode == "abs":
            return residual <= self.abstol
        relative = residual <= self.reltol * fz_norm
        if self.mode == "rel":
            return relative
        return relative & (residual <= self.abstol)

    def check_interval(self, device: torch.device) -> int:
        if self.check_every is not None:
            return self.check_every
        return 1 if device.type == "cpu" else 8
