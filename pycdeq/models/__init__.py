"""The paper's architectures (Pal, Edelman, Rackauckas), every variant, by name or by class.

* :func:`build_model` (``"mnist-dense"``, ``"mnist-conv"``, ``"cifar10-small"``,
  ``"cifar10-large"``) and :func:`model_from_config`;
* the classes :class:`MNISTDense`, :class:`MNISTConv`, :class:`CIFAR10Small`,
  :class:`CIFAR10Large` (:class:`MDEQClassifier` is their multiscale base);
* :class:`ModelConfig` with :class:`DenseSizes` / :class:`MDEQSizes` (``model.config``).

Every model's ``forward(x)`` returns ``(logits, solution)``; ``solution.skip_loss``,
``solution.jacobian_loss`` and ``solution.nfe`` are set for every variant (zero losses where
they do not apply). Layer-by-layer specifications: ``docs/architectures.md``.
"""

from .build import build_model, model_from_config
from .config import ARCHITECTURES, VARIANTS, DenseSizes, MDEQSizes, ModelConfig, make_config
from .mdeq import CIFAR10Large, CIFAR10Small, MDEQClassifier, MNISTConv
from .mnist_dense import DenseInjection, MNISTDense

__all__ = [
    "build_model", "model_from_config", "make_config", "ModelConfig", "DenseSizes", "MDEQSizes",
    "ARCHITECTURES", "VARIANTS", "MNISTDense", "DenseInjection", "MDEQClassifier", "MNISTConv",
    "CIFAR10Small", "CIFAR10Large",
]
