"""Synthetic prototype data: deterministic, balanced, in range, and learnable (but not for free)."""

import pytest
import torch

from pycdeq.data import SYNTHETIC_PRESETS, load_dataset


def _nearest_class_mean_accuracy(splits) -> float:
    """Fit class means on train, classify test by the nearest one (the near-Bayes rule here)."""
    flat_train = splits.train.x.reshape(len(splits.train), -1).double()
    means = torch.stack([flat_train[splits.train.y == k].mean(0) for k in range(splits.num_classes)])
    distances = torch.cdist(splits.test.x.reshape(len(splits.test), -1).double(), means)
    return float((distances.argmin(1) == splits.test.y).double().mean())


@pytest.mark.parametrize("preset", sorted(SYNTHETIC_PRESETS))
def test_presets_give_the_real_sets_shapes(preset):
    splits = load_dataset("synthetic", shape=preset, n_train=20, n_test=10)
    assert splits.input_shape == SYNTHETIC_PRESETS[preset]
    assert splits.train.x.shape == (20,) + SYNTHETIC_PRESETS[preset]
    assert SYNTHETIC_PRESETS["mnist"] == (1, 28, 28) and SYNTHETIC_PRESETS["cifar10"] == (3, 32, 32)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5), (3, 16, 9)])
def test_any_shape_in_unit_interval_with_balanced_labels(shape):
    splits = load_dataset("synthetic", shape=shape, num_classes=3, n_train=31, n_test=8)
    assert splits.train.x.shape == (31,) + shape and splits.test.x.shape == (8,) + shape
    assert splits.train.x.dtype == torch.float32 and splits.train.y.dtype == torch.int64
    assert float(splits.train.x.min()) >= 0.0 and float(splits.train.x.max()) <= 1.0
    assert splits.train.y.bincount().tolist() == [11, 10, 10]


def test_same_seed_same_data_other_seed_other_data():
    a = load_dataset("synthetic", seed=5, n_train=50, n_test=20)
    b = load_dataset("synthetic", seed=5, n_train=50, n_test=20)
    c = load_dataset("synthetic", seed=6, n_train=50, n_test=20)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)


def test_split_sizes_do_not_change_each_other():
    a = load_dataset("synthetic", n_train=40, n_test=10)
    b = load_dataset("synthetic", n_train=40, n_test=30)
    c = load_dataset("synthetic", n_train=80, n_test=10)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.x, c.test.x)


def test_noise_free_samples_are_the_prototypes():
    splits = load_dataset("synthetic", shape=(1, 6, 6), num_classes=4, n_train=8, n_test=4, noise=0.0)
    for k in range(4):
        members = splits.train.x[splits.train.y == k]
        assert torch.equal(members[0], members[1])
    assert float(splits.train.x.min()) >= 0.15 - 1e-6 and float(splits.train.x.max()) <= 0.85 + 1e-6
    assert _nearest_class_mean_accuracy(splits) == 1.0


@pytest.mark.parametrize("shape", ["mnist", "cifar10"])
def test_default_noise_is_learnable(shape):
    splits = load_dataset("synthetic", shape=shape, n_train=500, n_test=300)
    assert _nearest_class_mean_accuracy(splits) >= 0.95


def test_heavy_noise_is_hard():
    # The learnability test above can fail: at noise 5 on 8x8 the classes overlap.
    splits = load_dataset("synthetic", shape="digits", n_train=500, n_test=500, noise=5.0)
    assert _nearest_class_mean_accuracy(splits) < 0.6


@pytest.mark.parametrize("options, error, match", [
    ({"shape": (1, 28)}, ValueError, "3 entries"),
    ({"shape": (1, 0, 4)}, ValueError, r"shape\[H\]"),
    ({"shape": "imagenet"}, ValueError, "shape must be one of"),
    ({"shape": 5}, TypeError, "shape must be"),
    ({"num_classes": 1}, ValueError, "num_classes"),
    ({"n_train": 0}, ValueError, "n_train"),
    ({"n_test": 2.5}, TypeError, "n_test"),
    ({"noise": -0.1}, ValueError, "noise"),
])
def test_bad_options_name_the_argument(options, error, match):
    with pytest.raises(error, match=match):
        load_dataset("synthetic", **options)
