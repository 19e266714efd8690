"""Generated classification data of any image shape: learnable, deterministic, instant.

Each class k has a prototype image ``p_k``: uniform noise on a coarse grid (about a quarter of
the resolution) upsampled bilinearly, so prototypes are spatially smooth and a convolutional
model can learn them as well as a dense one. Values lie in ``[0.15, 0.85]``. A sample of class
k is

    x = clip(p_k + noise * eps, 0, 1),   eps ~ N(0, I),

so the Bayes-optimal rule is (close to) nearest prototype and the difficulty is set by
``noise`` against the prototype distances (which grow like sqrt(C*H*W)).

Prototypes, train and test samples use three independent streams spawned from ``seed``, so
changing ``n_test`` never changes the train split and vice versa.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pycdeq import _checks

from ._dataset import DatasetSplits, Split, labels_to_tensor

# Shapes of the real data sets, usable as ``shape="mnist"`` etc.
PRESETS = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}
_PROTOTYPE_CENTRE, _PROTOTYPE_HALF_RANGE = 0.5, 0.35


def resolve_shape(shape) -> tuple[int, int, int]:
    if isinstance(shape, str):
        _checks.one_of("shape", shape, PRESETS)
        return PRESETS[shape]
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be (C, H, W) or one of {sorted(PRESETS)}, got {shape!r}") from None
    if len(dims) != 3:
        raise ValueError(f"shape must have 3 entries (C, H, W), got {dims!r}")
    for axis, d in zip("CHW", dims, strict=True):
        _checks.positive_int(f"shape[{axis}]", d)
    return dims


def prototypes(num_classes: int, shape: tuple[int, int, int], rng: np.random.Generator) -> torch.Tensor:
    """``(num_classes, C, H, W)`` smooth class prototypes in [0.15, 0.85]."""
    c, h, w = shape
    coarse_h, coarse_w = min(h, max(2, math.ceil(h / 4))), min(w, max(2, math.ceil(w / 4)))
    coarse = rng.uniform(-1.0, 1.0, size=(num_classes, c, coarse_h, coarse_w)).astype(np.float32)
    coarse = _PROTOTYPE_CENTRE + _PROTOTYPE_HALF_RANGE * coarse
    # Bilinear interpolation is a convex combination, so the range is preserved.
    return F.interpolate(torch.from_numpy(coarse), size=(h, w), mode="bilinear", align_corners=False)


def _sample(protos: torch.Tensor, n: int, noise: float, rng: np.random.Generator) -> Split:
    num_classes = protos.shape[0]
    # Balanced classes (counts differ by at most one), in random order.
    labels = rng.permutation(np.arange(n) % num_classes)
    eps = torch.from_numpy(rng.standard_normal(size=(n,) + tuple(protos.shape[1:]), dtype=np.float32))
    y = labels_to_tensor(labels)
    # In place on the noise buffer: at CIFAR size each temporary is 600 MB.
    x = eps.mul_(noise).add_(protos.index_select(0, y)).clamp_(0.0, 1.0)
    return Split(x, y)


def load_synthetic(*, seed: int = 0, shape=(1, 28, 28), num_classes: int = 10, n_train: int = 1000,
                   n_test: int = 200, noise: float = 0.3) -> DatasetSplits:
    """Prototype-plus-noise images of ``shape`` (a (C, H, W) tuple or a preset name)."""
    dims = resolve_shape(shape)
    _checks.positive_int("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    _checks.positive_int("n_train", n_train)
    _checks.positive_int("n_test", n_test)
    _checks.positive("noise", noise, allow_zero=True)
    proto_rng, train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    protos = prototypes(num_classes, dims, proto_rng)
    train = _sample(protos, n_train, float(noise), train_rng)
    test = _sample(protos, n_test, float(noise), test_rng)
    source = f"synthetic(shape={dims}, num_classes={num_classes}, noise={noise}, seed={seed})"
    return DatasetSplits(train=train, test=test, name="synthetic", num_classes=num_classes,
                         input_shape=dims, source=source)
