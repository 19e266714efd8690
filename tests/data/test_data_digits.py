"""scikit-learn digits: real data, exact scaling, a stratified seeded split that loses nothing."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_load_digits

from pycdeq.data import load_dataset


@pytest.fixture(scope="module")
def reference():
    bunch = sklearn_load_digits()
    return bunch.data.astype(np.float64), bunch.target


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_shapes_dtypes_and_sizes(digits):
    assert digits.name == "digits" and digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    assert digits.train.x.shape == (1438, 1, 8, 8) and digits.test.x.shape == (359, 1, 8, 8)
    assert digits.train.x.dtype == torch.float32 and digits.train.y.dtype == torch.int64
    assert len(digits.train) + len(digits.test) == 1797


def test_values_are_sixteenths_in_unit_interval(digits):
    for split in (digits.train, digits.test):
        scaled = split.x * 16
        assert torch.equal(scaled, scaled.round())
        assert split.x.min() == 0.0 and split.x.max() == 1.0


def test_split_is_a_partition_of_the_sklearn_data(digits, reference):
    data, target = reference
    ours = np.concatenate([digits.train.x.reshape(-1, 64).double().numpy() * 16,
                           digits.test.x.reshape(-1, 64).double().numpy() * 16])
    our_labels = np.concatenate([digits.train.y.numpy(), digits.test.y.numpy()])
    rows = np.concatenate([ours, our_labels[:, None]], axis=1)
    expected = np.concatenate([data, target[:, None]], axis=1)
    # Same multiset of (image, label) rows: nothing lost, nothing duplicated.
    np.testing.assert_array_equal(rows[np.lexsort(rows.T[::-1])], expected[np.lexsort(expected.T[::-1])])


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_is_stratified(seed, reference):
    _, target = reference
    splits = load_dataset("digits", seed=seed)
    per_class = np.bincount(target, minlength=10)
    test_counts = np.bincount(splits.test.y.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * per_class) <= 1.0), test_counts


def test_split_is_deterministic_in_seed():
    a, b, c = load_dataset("digits", seed=3), load_dataset("digits", seed=3), load_dataset("digits", seed=4)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.x, c.test.x)


def test_test_fraction_option():
    splits = load_dataset("digits", test_fraction=0.5)
    assert (len(splits.train), len(splits.test)) == (899, 898)  # round(898.5) == 898
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.0)


def test_train_statistics_match_a_float64_computation(digits):
    x = digits.train.x.double()
    assert digits.mean.shape == (1,) and digits.std.shape == (1,)
    assert float(digits.mean) == pytest.approx(float(x.mean()), rel=1e-6)
    assert float(digits.std) == pytest.approx(float(x.std(correction=0)), rel=1e-6)


def test_a_linear_model_learns_it(digits):
    # Sanity that images and labels stay paired: least squares on one-hot targets.
    x = torch.cat([digits.train.x.reshape(-1, 64).double(), torch.ones(len(digits.train), 1, dtype=torch.float64)], 1)
    targets = torch.nn.functional.one_hot(digits.train.y, 10).double()
    weights = torch.linalg.lstsq(x, targets, driver="gelsd").solution
    xt = torch.cat([digits.test.x.reshape(-1, 64).double(), torch.ones(len(digits.test), 1, dtype=torch.float64)], 1)
    accuracy = float(((xt @ weights).argmax(1) == digits.test.y).double().mean())
    assert accuracy > 0.9
