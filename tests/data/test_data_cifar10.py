"""CIFAR-10 python batches: exact round trips, the restricted unpickler, and named corruptions."""

import pickle

import numpy as np
import pytest
import torch

from _data_writers import CIFAR_TRAIN, cifar_batch_dict, write_cifar_set
from pycdeq.data import DatasetFormatError, DatasetNotFoundError, load_dataset
from pycdeq.data.cifar10 import read_batch


@pytest.mark.parametrize("protocol", ["py2", 2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("str_keys", [False, True])
@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_batches_read_back_exactly(tmp_path, protocol, str_keys):
    written = write_cifar_set(tmp_path / "cifar-10-batches-py", protocol=protocol, str_keys=str_keys)
    splits = load_dataset("cifar10", data_dir=tmp_path)
    assert splits.input_shape == (3, 32, 32) and splits.num_classes == 10
    assert splits.class_names[0] == "airplane" and splits.source == str(tmp_path / "cifar-10-batches-py")
    assert len(splits.train) == 15 and len(splits.test) == 3
    for name in ("train", "test"):
        images, labels = written[name]
        split = getattr(splits, name)
        assert torch.equal(split.x, torch.from_numpy(images.astype(np.float32) / 255.0))
        assert torch.equal(split.y, torch.from_numpy(labels.astype(np.int64)))


def test_rows_are_red_green_blue_planes(tmp_path):
    folder = tmp_path / "batches"
    write_cifar_set(folder)
    row = np.zeros((1, 3072), dtype=np.uint8)
    row[0, :1024] = 10       # red plane
    row[0, 1024:2048] = 20   # green plane
    row[0, 2048 + 33] = 255  # blue pixel at (row 1, column 1)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": row, b"labels": [4]}, protocol=2))
    x = load_dataset("cifar10", data_dir=folder).test.x[0] * 255
    assert torch.all(x[0] == 10) and torch.all(x[1] == 20)
    assert x[2, 1, 1] == 255 and x[2].sum() == 255


def _write_batch(path, obj_bytes):
    path.write_bytes(obj_bytes)
    return path


def _broken(tmp_path, payload: bytes, name="data_batch_3"):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_set(folder)
    return _write_batch(folder / name, payload)


def _batch(images=None, labels=None, n=3):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8) if images is None else images
    labels = list(range(n)) if labels is None else labels
    return {b"data": images, b"labels": labels}


@pytest.mark.parametrize("payload, reason", [
    (b"this is not a pickle", "unpickling failed"),
    (pickle.dumps(_batch(), protocol=2)[:-40], "unpickling failed"),
    (pickle.dumps([1, 2, 3]), "expected a pickled dict"),
    (pickle.dumps({b"data": _batch()[b"data"]}), "missing key 'labels'"),
    (pickle.dumps({b"labels": [1, 2, 3]}), "missing key 'data'"),
    (pickle.dumps(_batch(images=np.zeros((3, 3000), np.uint8))), r"shape \(N, 3072\)"),
    (pickle.dumps(_batch(images=np.zeros((3, 3072), np.float32))), "uint8 array"),
    (pickle.dumps(_batch(labels=[0, 1])), "count mismatch: 2 labels for 3 images"),
    (pickle.dumps(_batch(labels=[0, 1, 10])), r"labels out of range \[0, 10\)"),
    (pickle.dumps(_batch(labels=[[0], [1], [2]])), "1-D sequence of ints"),
], ids=["garbage", "truncated", "not-a-dict", "no-labels", "no-data", "wrong-width", "wrong-dtype",
        "count-mismatch", "label-range", "label-shape"])
def test_corrupt_batch_is_an_error_naming_the_file(tmp_path, payload, reason):
    path = _broken(tmp_path, payload)
    with pytest.raises(DatasetFormatError, match=reason) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    assert info.value.path == str(path) and "data_batch_3" in str(info.value)


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch should_not_exist",))


def test_pickle_with_foreign_callable_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _broken(tmp_path, pickle.dumps({b"data": _Exploit(), b"labels": [0]}), name="test_batch")
    with pytest.raises(DatasetFormatError, match="refusing to load (posix|nt).system"):
        read_batch(path)
    assert not (tmp_path / "should_not_exist").exists()


def test_missing_batch_lists_expected_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_set(folder)
    (folder / "data_batch_5").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and all(n in message for n in CIFAR_TRAIN + ["test_batch"])


def test_cifar10_without_data_dir_says_to_pass_one():
    with pytest.raises(DatasetNotFoundError, match="pass data_dir"):
        load_dataset("cifar10")


def test_download_only_when_missing_and_asked(tmp_path, fake_torchvision):
    with pytest.raises(DatasetNotFoundError):
        load_dataset("cifar10", data_dir=tmp_path)
    assert fake_torchvision == []
    splits = load_dataset("cifar10", data_dir=tmp_path, download=True)
    assert [c[0] for c in fake_torchvision] == ["CIFAR10"] and len(splits.train) == 15
    load_dataset("cifar10", data_dir=tmp_path, download=True)
    assert len(fake_torchvision) == 1


def test_str_key_batch_dict_matches_bytes_key_dict(tmp_path):
    images = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3, 32, 32)
    a = _write_batch(tmp_path / "a", pickle.dumps(cifar_batch_dict(images, [1, 2])))
    b = _write_batch(tmp_path / "b", pickle.dumps(cifar_batch_dict(images, [1, 2], str_keys=True)))
    (xa, ya), (xb, yb) = read_batch(a), read_batch(b)
    np.testing.assert_array_equal(xa, images)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
