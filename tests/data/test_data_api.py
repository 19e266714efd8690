"""load_dataset's contract: names, options, limits, containers and deterministic loaders."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _data_writers import tiny_mnist_arrays, write_idx_set
from pycdeq.data import DATASETS, DatasetSplits, Split, load_dataset
from pycdeq.data._dataset import stratified_order


def _small(**options):
    return load_dataset("synthetic", shape=(1, 4, 4), n_train=100, n_test=40, **options)


def test_registered_names():
    assert set(DATASETS) == {"digits", "mnist", "fashion-mnist", "fashion-mnist-32", "cifar10", "synthetic"}


def test_unknown_name_is_named_with_the_choices():
    with pytest.raises(ValueError, match="'imagenet'") as info:
        load_dataset("imagenet")
    assert all(name in str(info.value) for name in DATASETS)


def test_name_spelling_variants_are_accepted(tmp_path):
    write_idx_set(tmp_path, tiny_mnist_arrays())
    assert load_dataset("Fashion_MNIST", data_dir=tmp_path).name == "fashion-mnist"


@pytest.mark.parametrize("name, option", [("digits", "shape"), ("synthetic", "test_fraction"),
                                          ("mnist", "n_train"), ("cifar10", "batch_size")])
def test_unknown_option_is_a_type_error_naming_it(name, option):
    with pytest.raises(TypeError, match=f"unknown option.*{option}"):
        load_dataset(name, **{option: 1})


@pytest.mark.parametrize("kwargs, error, match", [
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": 1.5}, TypeError, "seed"),
    ({"download": "yes"}, TypeError, "download"),
    ({"data_dir": "/tmp"}, ValueError, "reads no files"),
    ({"download": True}, ValueError, "nothing to download"),
])
def test_bad_common_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_dataset("digits", **kwargs)


def test_data_dir_of_wrong_type_is_named():
    with pytest.raises(TypeError, match="data_dir"):
        load_dataset("mnist", data_dir=3)


def test_limits_take_a_stratified_seeded_subset_in_file_order():
    full = _small()
    limited = _small(limit_train=30, limit_test=10)
    assert (len(limited.train), len(limited.test)) == (30, 10)
    assert limited.train.y.bincount(minlength=10).tolist() == [3] * 10
    # Every kept row is a row of the full split, in the same relative order.
    rows = [int(torch.nonzero((full.train.x == row).all(dim=(1, 2, 3)))[0]) for row in limited.train.x]
    assert rows == sorted(rows) and len(set(rows)) == 30
    assert torch.equal(full.train.y[rows], limited.train.y)
    again = _small(limit_train=30, limit_test=10)
    assert torch.equal(again.train.x, limited.train.x)
    assert float(limited.mean) == pytest.approx(float(limited.train.x.mean()), rel=1e-6)


def test_limit_is_applied_to_file_data(tmp_path):
    write_idx_set(tmp_path, tiny_mnist_arrays(n_train=20, n_test=10))
    splits = load_dataset("mnist", data_dir=tmp_path, limit_train=10, limit_test=5)
    assert (len(splits.train), len(splits.test)) == (10, 5)
    assert splits.train.y.bincount(minlength=10).tolist() == [1] * 10


def test_limit_none_keeps_everything():
    assert len(_small(limit_train=None, limit_test=None).train) == 100


@pytest.mark.parametrize("options, error, match", [
    ({"limit_train": 101}, ValueError, "limit_train=101 exceeds the 100"),
    ({"limit_test": 0}, ValueError, "limit_test"),
    ({"limit_train": "10"}, TypeError, "limit_train"),
])
def test_bad_limits(options, error, match):
    with pytest.raises(error, match=match):
        _small(**options)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=6).map(lambda s: [s[0]] * len(s)),
       seed=st.integers(0, 2**32 - 1), data=st.data())
def test_stratified_order_prefixes_are_proportional_for_equal_classes(sizes, seed, data):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    labels = labels[np.random.default_rng(0).permutation(labels.size)]
    order = stratified_order(labels, seed)
    assert sorted(order.tolist()) == list(range(labels.size))
    k = data.draw(st.integers(0, labels.size))
    counts = np.bincount(labels[order[:k]], minlength=len(sizes))
    assert np.all(np.abs(counts - k * np.asarray(sizes) / labels.size) < 1.0)


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_is_deterministic_given_a_seeded_generator():
    split = _small().train
    a = _epoch(split.loader(16, shuffle=True, generator=torch.Generator().manual_seed(1)))
    b = _epoch(split.loader(16, shuffle=True, generator=torch.Generator().manual_seed(1)))
    c = _epoch(split.loader(16, shuffle=True, generator=torch.Generator().manual_seed(2)))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))
    assert not torch.equal(a[0][1], c[0][1])


def test_each_epoch_is_a_new_permutation_covering_every_sample_once():
    split = Split(torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1), torch.arange(10))
    loader = split.loader(4, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(loader) == 3
    epochs = [torch.cat([y for _, y in loader]) for _ in range(2)]
    for labels in epochs:
        assert sorted(labels.tolist()) == list(range(10))
    assert not torch.equal(epochs[0], epochs[1])
    batch_x, batch_y = next(iter(loader))
    assert torch.equal(batch_x.reshape(-1).long(), batch_y)  # x and y stay paired


def test_unshuffled_loader_is_file_order_and_drop_last_drops():
    split = Split(torch.rand(10, 1, 2, 2), torch.arange(10))
    batches = list(split.loader(4, shuffle=False))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([x for x, _ in batches]), split.x)
    assert [len(y) for _, y in split.loader(4, shuffle=False, drop_last=True)] == [4, 4]


def test_loader_arguments_are_validated():
    split = Split(torch.rand(4, 1, 2, 2), torch.arange(4))
    with pytest.raises(ValueError, match="batch_size"):
        split.loader(0, shuffle=False)
    with pytest.raises(TypeError, match="generator"):
        split.loader(2, shuffle=True, generator=0)


def test_split_validates_dtypes_and_lengths():
    with pytest.raises(TypeError, match="float32"):
        Split(torch.rand(3, 1, 2, 2, dtype=torch.float64), torch.arange(3))
    with pytest.raises(TypeError, match="int64"):
        Split(torch.rand(3, 1, 2, 2), torch.arange(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="3 samples but Split.y has 2"):
        Split(torch.rand(3, 1, 2, 2), torch.arange(2))


def test_dataset_splits_validates_shapes_and_labels():
    good = Split(torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="expected input_shape"):
        DatasetSplits(good, good, "x", 3, (1, 2, 3), "here")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        DatasetSplits(good, good, "x", 2, (1, 2, 2), "here")
    splits = DatasetSplits(good, good, "x", 3, [1, 2, 2], "here")
    assert splits.input_shape == (1, 2, 2) and "train=3" in repr(splits)
    with pytest.raises(AttributeError):
        splits.name = "y"
