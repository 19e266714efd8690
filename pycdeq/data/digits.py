"""scikit-learn's handwritten digits: the real data set that ships offline, pycdeq's default.

1,797 images of 8x8 pixels with integer intensities 0..16 (UCI "optdigits" test set), ten
classes of about 180 each. Images are scaled by 1/16 to ``[0, 1]``. There is no official
train/test split, so one is made here: class-stratified and seeded (see
``stratified_order``), so that ``seed`` alone fixes it.
"""

from __future__ import annotations

import numpy as np
import torch

from pycdeq import _checks

from ._dataset import DatasetSplits, Split, labels_to_tensor, stratified_order

IMAGE_SHAPE = (1, 8, 8)
MAX_INTENSITY = 16.0


def load_digits(*, seed: int = 0, test_fraction: float = 0.2) -> DatasetSplits:
    """The digits split ``1 - test_fraction`` / ``test_fraction`` (1,438 / 359 at 0.2), per class."""
    _checks.in_range("test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True)
    from sklearn.datasets import load_digits as sklearn_load_digits  # noqa: PLC0415 - slow import

    bunch = sklearn_load_digits()
    images = np.asarray(bunch.data, dtype=np.float32).reshape((-1,) + IMAGE_SHAPE) / MAX_INTENSITY
    labels = np.asarray(bunch.target)
    n_test = int(round(test_fraction * labels.shape[0]))
    if not 0 < n_test < labels.shape[0]:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty train or test split")
    order = stratified_order(labels, seed)
    # Sorted so both splits keep the file's order; only membership depends on the seed.
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])

    def split(index):
        return Split(torch.from_numpy(np.ascontiguousarray(images[index])), labels_to_tensor(labels[index]))

    return DatasetSplits(train=split(train_idx), test=split(test_idx), name="digits", num_classes=10,
                         input_shape=IMAGE_SHAPE, source="sklearn.datasets.load_digits",
                         class_names=tuple(str(d) for d in range(10)))
