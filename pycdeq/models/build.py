"""``build_model``: one factory for the paper's models, by name."""

from __future__ import annotations

from typing import Dict, Type, Union

from torch import nn

from .config import ARCHITECTURES, ModelConfig, make_config
from .mdeq import CIFAR10Large, CIFAR10Small, MDEQClassifier, MNISTConv
from .mnist_dense import MNISTDense

MODEL_CLASSES: Dict[str, Union[Type[MNISTDense], Type[MDEQClassifier]]] = {
    "mnist-dense": MNISTDense,
    "mnist-conv": MNISTConv,
    "cifar10-small": CIFAR10Small,
    "cifar10-large": CIFAR10Large,
}
assert tuple(MODEL_CLASSES) == ARCHITECTURES


def build_model(name: str, *, variant: str = "vanilla", continuous: bool = True, num_classes: int = 10,
                input_shape=None, solver=None, adjoint=None, **options) -> nn.Module:
    """Build the paper model ``name`` (``"mnist-dense"``, ``"mnist-conv"``, ``"cifar10-small"``,
    ``"cifar10-large"``).

    ``variant``: ``"vanilla" | "skip" | "skip_reg" | "node"``; ``continuous``: ODE method
    (True) or Broyden (False) for the DEQ variants (ignored by ``"node"``); ``input_shape``:
    per-sample input shape (the dense model's first layer adapts to it: ``(1, 8, 8)`` or
    ``(64,)`` for scikit-learn's digits); ``solver`` / ``adjoint``: default to the paper's
    settings (:mod:`pycdeq.models.defaults`). ``options``: layer options and size overrides
    (see :func:`pycdeq.models.config.make_config`). Unknown names raise ``ValueError`` (model
    name) or ``TypeError`` (option), naming them.
    """
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model name {name!r}; choose one of {', '.join(map(repr, MODEL_CLASSES))}")
    config = make_config(name, variant=variant, continuous=continuous, num_classes=num_classes,
                         input_shape=input_shape, solver=solver, adjoint=adjoint, **options)
    return model_from_config(config)


def model_from_config(config: ModelConfig) -> nn.Module:
    """Build the model a :class:`ModelConfig` describes (``model.config`` round-trips)."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    return MODEL_CLASSES[config.architecture].from_config(config)
