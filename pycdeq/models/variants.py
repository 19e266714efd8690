"""The equilibrium layer of each variant, chosen by ``config.variant`` (one place for all models).

``vanilla`` / ``skip`` / ``skip_reg`` build the DEQ family (``DEQ``, ``SkipDEQ``,
``SkipRegDEQ`` or their ``MultiScale*`` versions) with ``config.solver``; ``node`` builds the
Neural ODE baseline with ``config.solver`` as its ODE method. The Neural ODE modules are
imported only when needed.
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from ..layers.deq import DEQ, SkipDEQ, SkipRegDEQ
from .config import ModelConfig


def equilibrium_layer(config: ModelConfig, f: nn.Module, g: Optional[nn.Module]) -> nn.Module:
    """Single-state layer for ``f(z, x)`` with the state shaped like ``x``; ``g`` for ``skip`` only."""
    if (g is not None) != (config.variant == "skip"):
        raise ValueError(f"a skip predictor g is needed exactly for variant 'skip' (variant {config.variant!r})")
    options = config.layer_options()
    if config.variant == "node":
        from ..layers.neural_ode import NeuralODE

        return NeuralODE(f, config.solver, **options)
    if config.variant == "skip":
        assert g is not None  # checked above: variant 'skip' comes with g
        return SkipDEQ(f, g, config.solver, **options)
    if config.variant == "skip_reg":
        return SkipRegDEQ(f, config.solver, **options)
    return DEQ(f, config.solver, **options)


def multiscale_layer(config: ModelConfig, main_layers: Sequence[nn.Module],
                     mapping_layers: Sequence[Sequence[Optional[nn.Module]]],
                     post_fuse_layers: Sequence[nn.Module],
                     predictor_branches: Optional[Sequence[nn.Module]]) -> nn.Module:
    """Multiscale layer over the tuple state ``config.scales``; predictor branches for ``skip`` only."""
    from ..layers import multiscale

    if (predictor_branches is not None) != (config.variant == "skip"):
        raise ValueError(f"skip predictor branches are needed exactly for variant 'skip' (variant {config.variant!r})")
    options = config.layer_options()
    scales = config.scales
    if config.variant == "node":
        return multiscale.MultiScaleNeuralODE(main_layers, mapping_layers, post_fuse_layers,
                                              config.solver, scales, **options)
    if config.variant == "skip":
        return multiscale.MultiScaleSkipDEQ(main_layers, mapping_layers, post_fuse_layers, predictor_branches,
                                            config.solver, scales, **options)
    if config.variant == "skip_reg":
        return multiscale.MultiScaleSkipRegDEQ(main_layers, mapping_layers, post_fuse_layers, config.solver,
                                               scales, **options)
    return multiscale.MultiScaleDEQ(main_layers, mapping_layers, post_fuse_layers, config.solver, scales,
                                    **options)
