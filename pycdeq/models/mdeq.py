"""The paper's multiscale (MDEQ) classifiers: MNIST conv, CIFAR-10 small and large.

``stem -> multiscale equilibrium layer -> classification head``, with the blocks of
:mod:`pycdeq.models.blocks` (docs/architectures.md §4) and the sizes of the reference's configs:

=================  =====================  ===============================  ===================
model              scales                 parameters (vanilla/skip_reg/    paper
                                          node; skip)
=================  =====================  ===============================  ===================
``CIFAR10Small``   24x32x32, 24x16x16     163,546; 200,122                 163,546; 200,122
``CIFAR10Large``   32/64/128/256 channels 10,631,958; 11,186,774           10.63M; 11.19M
                   at 32, 16, 8, 4 px
``MNISTConv``      8x28x28, 16x14x14      this package's sizes (no paper count exists)
=================  =====================  ===============================  ===================

The equilibrium function (§4.4): branch 1 is a :class:`~pycdeq.models.blocks.ResidualBlock`
receiving the stem output ``x`` as injection, the other branches get none; outputs are fused
by ``s_j = sum_i M[i][j](b_i)`` and passed through a post-fuse layer per scale.

**Batch coupling.** As in the reference, every BatchNorm inside ``f`` (and in the stem and
the mappings) normalises with the statistics of the *current batch*, in training and in
evaluation. ``f`` therefore couples the samples of a batch: each sample's convergence is
still tracked and reported per sample (``solution.status``, ``solution.residual``), but a
sample's fixed point, and so its prediction, depends on the other samples of the batch
(and on frozen, already converged samples, which stay in the batch statistics). Evaluate
with batches of the training size for results comparable to the paper (128 for CIFAR).

**Dropout.** With ``dropout > 0`` the residual blocks apply variational dropout whose mask is
drawn once per ``forward`` call (training mode) and shared by every ``f`` evaluation of
that call, so the solver sees one fixed map.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch
from torch import nn

from . import blocks
from .config import ModelConfig, model_config
from .variants import multiscale_layer


class MDEQClassifier(nn.Module):
    """Multiscale DEQ classifier built from a :class:`ModelConfig` with :class:`MDEQSizes`.

    Submodules: ``stem``, ``deq`` (a ``MultiScale*`` layer whose ``.f`` is the
    ``MultiScaleFunction`` and, for ``skip``, ``.g`` the predictor), ``head``.
    ``forward(images (N, C, H, W)) -> (logits, output)``. Built from a :class:`ModelConfig`
    (``CIFAR10Small(config)``) or from the keyword options of
    :func:`~pycdeq.models.config.make_config`, not both; the generic class takes
    ``architecture=`` too. BatchNorm inside ``f`` uses the
    batch's statistics, so samples are coupled (module docstring): convergence is tracked
    per sample, but each result depends on the batch it was computed in.
    """

    #: Set by the preset subclasses; ``None`` accepts any multiscale architecture.
    architecture: ClassVar[Optional[str]] = None

    def __init__(self, config: Optional[ModelConfig] = None, **options):
        super().__init__()
        config = model_config(self.architecture, config, options)
        if config.is_dense:
            raise ValueError(f"{config.architecture!r} is not a multiscale architecture; use MNISTDense")
        self.config = config
        sizes = config.mdeq_sizes
        channels = sizes.channels
        in_channels = config.resolved_input_shape[0]
        self.stem = blocks.stem(in_channels, channels[0], downsample_times=sizes.downsample_times,
                                num_scales=sizes.num_scales)
        main = [blocks.ResidualBlock(c, c, expansion=sizes.expansion, dropout=sizes.dropout,
                                     weight_norm=sizes.weight_norm) for c in channels]
        mapping = blocks.mapping_layers(channels)
        post = [blocks.post_fuse(c, weight_norm=sizes.weight_norm) for c in channels]
        predictor = (blocks.skip_predictor_branches(channels, expansion=sizes.skip_expansion,
                                                    weight_norm=sizes.weight_norm)
                     if config.variant == "skip" else None)
        self.deq = multiscale_layer(config, main, mapping, post, predictor)
        self.head = blocks.ClassificationHead(channels, sizes.head_channels, sizes.final_channels,
                                              config.num_classes)
        # Found once: the dropout layers whose masks are redrawn at every forward call.
        self._dropouts = [m for m in self.modules() if isinstance(m, blocks.VariationalDropout)]

    @classmethod
    def from_config(cls, config: ModelConfig) -> "MDEQClassifier":
        return cls(config)

    def resample_dropout(self) -> None:
        """Draw new variational dropout masks at the next ``f`` evaluation."""
        for module in self._dropouts:
            module.reset_mask()

    def forward(self, images: torch.Tensor):
        expected = self.config.resolved_input_shape
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != expected:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must have shape (N, {', '.join(map(str, expected))}), got {got}")
        self.resample_dropout()
        z_star, solution = self.deq(self.stem(images))
        return self.head(z_star), solution


class MNISTConv(MDEQClassifier):
    """2-scale MDEQ for MNIST / Fashion-MNIST: 8 channels at 28x28, 16 at 14x14.

    Blocks as the CIFAR models (expansion 5, no dropout, no weight norm); head bottlenecks
    ``(4, 8)`` and 64 final channels (this package's choice; the paper reports no count).
    """

    architecture = "mnist-conv"


class CIFAR10Small(MDEQClassifier):
    """The paper's "CIFAR-10 small" (``tiny.yml``): channels (24, 24), expansion 5, dropout 0.2.

    163,546 parameters (vanilla / skip_reg / node), 200,122 (skip), as in the paper.
    """

    architecture = "cifar10-small"


class CIFAR10Large(MDEQClassifier):
    """The paper's "CIFAR-10 large" (``large.yml``): 4 scales (32, 64, 128, 256 channels),
    expansion 4, dropout 0.3, weight norm. 10,631,958 / 11,186,774 (skip) parameters.
    """

    architecture = "cifar10-large"
