"""``fashion-mnist-32``: Fashion-MNIST padded to 32x32 with 3 channels, from tiny IDX files written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _data_writers import tiny_mnist_arrays, write_idx_set
from pycdeq.data import DatasetFormatError, load_dataset
from pycdeq.data.idx import FASHION_MNIST_CLASSES


def test_images_are_centred_in_32x32_with_three_identical_channels(tmp_path):
    arrays = tiny_mnist_arrays(n_train=6, n_test=4, height=28, width=28)
    write_idx_set(tmp_path, arrays, gz=True)
    splits = load_dataset("fashion-mnist-32", data_dir=tmp_path)
    assert splits.name == "fashion-mnist-32" and splits.input_shape == (3, 32, 32)
    assert splits.num_classes == 10 and splits.class_names == FASHION_MNIST_CLASSES
    for split, role in ((splits.train, "train"), (splits.test, "test")):
        images = arrays[f"{role}_images"].astype(np.float32) / 255.0
        assert split.x.shape == (len(images), 3, 32, 32) and split.x.dtype == torch.float32
        for channel in range(3):
            np.testing.assert_array_equal(split.x[:, channel, 2:30, 2:30].numpy(), images)
        border = split.x.clone()
        border[:, :, 2:30, 2:30] = 0
        assert torch.count_nonzero(border) == 0  # zero padding, 2 pixels on each side
        np.testing.assert_array_equal(split.y.numpy(), arrays[f"{role}_labels"])


def test_other_sizes_are_centred_with_the_odd_pixel_at_the_bottom_right(tmp_path):
    arrays = tiny_mnist_arrays(n_train=3, n_test=2, height=5, width=4)
    write_idx_set(tmp_path, arrays)
    x = load_dataset("fashion-mnist-32", data_dir=tmp_path).train.x
    # (32 - 5) // 2 = 13 rows above, 14 below; (32 - 4) // 2 = 14 columns each side.
    np.testing.assert_array_equal(x[:, 0, 13:18, 14:18].numpy(), arrays["train_images"].astype(np.float32) / 255.0)
    assert torch.count_nonzero(x[:, :, :13]) == 0 and torch.count_nonzero(x[:, :, 18:]) == 0


def test_limits_and_batches_give_ordinary_tensors(tmp_path):
    write_idx_set(tmp_path, tiny_mnist_arrays(n_train=20, n_test=10, height=28, width=28))
    splits = load_dataset("fashion-mnist-32", data_dir=tmp_path, limit_train=10, limit_test=5, seed=3)
    assert splits.train.x.shape == (10, 3, 32, 32) and splits.test.x.shape == (5, 3, 32, 32)
    batch, _ = next(iter(splits.train.loader(4, shuffle=True, generator=torch.Generator().manual_seed(0))))
    batch += 1.0  # a gathered batch owns its memory (the channels are not views of one another)
    assert torch.equal(batch[:, 0], batch[:, 1])


def test_images_larger_than_32_pixels_are_a_format_error_naming_the_file(tmp_path):
    write_idx_set(tmp_path, tiny_mnist_arrays(n_train=2, n_test=2, height=33, width=8))
    with pytest.raises(DatasetFormatError, match=str(tmp_path)):
        load_dataset("fashion-mnist-32", data_dir=tmp_path)


def test_missing_files_say_how_to_install_fashion_mnist(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist-32", data_dir=tmp_path / "empty")
