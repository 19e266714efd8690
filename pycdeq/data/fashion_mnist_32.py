"""``fashion-mnist-32``: Fashion-MNIST in CIFAR-10's shape, for the CIFAR-shaped models offline.

The paper's 2-4x claim comes from the CIFAR-10 MDEQs, whose stem takes ``3 x 32 x 32``
images. CIFAR-10 is not installable offline, Fashion-MNIST is (Debian's
``dataset-fashion-mnist``), so this option feeds the CIFAR-shaped models with real images:
each ``28 x 28`` grey image is padded with zeros (black, Fashion-MNIST's background) to
``32 x 32``, centred (2 pixels on each side), and given 3 identical channels. Ten classes,
60,000 train and 10,000 test images, values in ``[0, 1]`` as the other loaders return them.

The three channels are one tensor expanded (a view): no memory is spent on the copies, and
a batch gathered from it (``x[index]``) is an ordinary tensor. Images of another size in the
files are padded the same way (centred, the odd pixel at the bottom / right); larger than
``32 x 32`` is a format error naming the file.
"""

from __future__ import annotations

import torch.nn.functional as F

from ._dataset import DatasetFormatError, DatasetSplits, Split
from .idx import load_idx_dataset

IMAGE_SHAPE = (3, 32, 32)


def _cifar_shaped(split: Split, source: str) -> Split:
    x = split.x
    height, width = x.shape[-2:]
    side = IMAGE_SHAPE[-1]
    if height > side or width > side:
        raise DatasetFormatError(source, f"images of {height}x{width} pixels do not fit in {side}x{side}")
    top, left = (side - height) // 2, (side - width) // 2
    padded = F.pad(x, (left, side - width - left, top, side - height - top))
    return Split(padded.expand(-1, IMAGE_SHAPE[0], -1, -1), split.y)


def load_fashion_mnist_32(*, data_dir=None, download: bool = False) -> DatasetSplits:
    """Fashion-MNIST (same files and folders as ``"fashion-mnist"``) as ``(N, 3, 32, 32)`` images."""
    splits = load_idx_dataset("fashion-mnist", data_dir=data_dir, download=download)
    return DatasetSplits(train=_cifar_shaped(splits.train, splits.source),
                         test=_cifar_shaped(splits.test, splits.source), name="fashion-mnist-32",
                         num_classes=splits.num_classes, input_shape=IMAGE_SHAPE, source=splits.source,
                         class_names=splits.class_names)
