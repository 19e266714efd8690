"""The fully connected MNIST model of the paper (docs/architectures.md §8).

::

    x   = ReLU(Linear(in_features -> 128)(flatten(images)))      # stem, with bias
    z*  = DEQ / Skip DEQ / Skip Reg. DEQ / Neural ODE of f on 128 features
    f(z, x) = ReLU(Wz z) + ReLU(Wx x)                             # no biases
    logits = Linear(128 -> num_classes)(z*)
    Skip:  z0 = g(x) = ReLU(Linear(128 -> 128)(x))                # with bias

Parameters for 784 inputs: 134,538 (vanilla / skip_reg / node), 151,050 (skip). The paper's
"138K" for the vanilla model is not reproducible (§8 explains why). All linear layers use
Glorot-uniform weights and zero biases (Flux's defaults, which the reference ran with).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .config import ModelConfig, model_config
from .variants import equilibrium_layer


def _glorot_linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.init.xavier_uniform_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class DenseInjection(nn.Module):
    """``f(z, x) = ReLU(Wz z) + ReLU(Wx x)``: the injection enters as the second summand."""

    def __init__(self, width: int):
        super().__init__()
        self.Wz = _glorot_linear(width, width, bias=False)
        self.Wx = _glorot_linear(width, width, bias=False)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.Wz(z)) + torch.relu(self.Wx(x))


class MNISTDense(nn.Module):
    """Stem ``Linear + ReLU`` -> equilibrium layer on ``width`` features -> ``Linear`` classifier.

    ``forward(images) -> (logits, output)``: images ``(N, C, H, W)`` or ``(N, features)``
    are flattened and must have ``in_features`` values per sample. ``output`` is the layer's
    :class:`~pycdeq.layers.output.LayerOutput` (``.skip_loss``, ``.jacobian_loss``, ``.nfe``,
    per-sample ``.status``).

    Built from a :class:`ModelConfig` (``MNISTDense(config)``) or from the keyword options of
    :func:`~pycdeq.models.config.make_config` (``variant``, ``continuous``, ``num_classes``,
    ``input_shape``, ``solver``, ``adjoint``, ``width``, the layer options), not both. The
    input is given as ``input_shape`` (per sample, as for every model: ``(64,)``,
    ``(1, 28, 28)``) or ``in_features``; default 784.
    """

    def __init__(self, config: Optional[ModelConfig] = None, *, in_features: Optional[int] = None, **options):
        super().__init__()
        if in_features is not None:
            if config is not None:
                raise TypeError("pass either config or keyword options, not both; got config and 'in_features'")
            options.setdefault("input_shape", (in_features,))
        config = model_config("mnist-dense", config, options)
        if in_features is not None and config.in_features != in_features:
            raise ValueError(f"in_features={in_features} contradicts input_shape={config.input_shape} "
                             f"({config.in_features} features); give one of them")
        self.config = config
        width = config.dense_sizes.width
        self.stem = nn.Sequential(_glorot_linear(config.in_features, width), nn.ReLU())
        f = DenseInjection(width)
        g = nn.Sequential(_glorot_linear(width, width), nn.ReLU()) if config.variant == "skip" else None
        self.deq = equilibrium_layer(config, f, g)
        self.head = _glorot_linear(width, config.num_classes)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "MNISTDense":
        return cls(config)

    def forward(self, images: torch.Tensor):
        if not isinstance(images, torch.Tensor) or images.dim() < 2:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a batched tensor (N, features) or (N, C, H, W), got {got}")
        flat = images.reshape(images.shape[0], -1)
        if flat.shape[1] != self.config.in_features:
            raise ValueError(f"images of shape {tuple(images.shape)} have {flat.shape[1]} features per "
                             f"sample; this model expects {self.config.in_features}")
        z_star, solution = self.deq(self.stem(flat))
        return self.head(z_star), solution

