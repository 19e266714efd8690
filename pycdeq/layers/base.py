"""The layer contract: what a model (and the trainer) can rely on in an equilibrium layer.

Every layer is an :class:`EquilibriumLayer`: ``forward(x)`` returns ``(z, output)`` with an
immutable :class:`~pycdeq.layers.output.LayerOutput`, and ``fixed_depth`` switches it to
``fixed_depth`` plain applications of ``f`` with backprop (unrolled pretraining, which the
trainer sets for the first ``TrainConfig.pretrain_steps`` steps; 0 solves as usual).
"""

from __future__ import annotations

from torch import nn

from .. import _checks


class EquilibriumLayer(nn.Module):
    """Base of ``DEQ`` (and its Skip / multiscale forms) and ``NeuralODE``."""

    _fixed_depth: int = 0

    @property
    def fixed_depth(self) -> int:
        """Unrolled applications of ``f`` instead of a solve (0: solve); settable on a built layer."""
        return self._fixed_depth

    @fixed_depth.setter
    def fixed_depth(self, depth: int) -> None:
        _checks.positive_int("fixed_depth", depth, allow_zero=True)
        self._fixed_depth = depth
