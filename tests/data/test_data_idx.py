"""MNIST / Fashion-MNIST IDX reading: exact round trips, and every corruption named by file."""

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _data_writers import IDX_STEMS, idx_bytes, tiny_mnist_arrays, write_file, write_idx_set
from pycdeq.data import DatasetFormatError, DatasetNotFoundError, load_dataset, read_idx
from pycdeq.data import idx as idx_module


def _expected_split(arrays, split):
    x = torch.from_numpy(arrays[f"{split}_images"].astype(np.float32) / 255.0)[:, None]
    return x, torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))


@pytest.mark.parametrize("gz", [False, True, {"train_images": True, "train_labels": False,
                                              "test_images": False, "test_labels": True}],
                         ids=["plain", "gzip", "mixed"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_files_read_back_exactly(tmp_path, gz, name):
    arrays = tiny_mnist_arrays()
    write_idx_set(tmp_path, arrays, gz=gz)
    splits = load_dataset(name, data_dir=tmp_path)
    assert splits.name == name and splits.num_classes == 10 and splits.input_shape == (1, 5, 4)
    assert splits.source == str(tmp_path)
    for split_name in ("train", "test"):
        split = getattr(splits, split_name)
        x, y = _expected_split(arrays, split_name)
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert torch.equal(split.x, x) and torch.equal(split.y, y)
    assert splits.train.x.min() == 0.0 and splits.train.x.max() == 1.0


def test_torchvision_raw_layout_is_found(tmp_path):
    arrays = tiny_mnist_arrays()
    write_idx_set(tmp_path / "FashionMNIST" / "raw", arrays)
    splits = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert torch.equal(splits.test.y, _expected_split(arrays, "test")[1])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_decodes_every_element_type_big_endian(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    path = write_file(tmp_path / "a.idx", idx_bytes(array))
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def _corrupt(tmp_path, role, mutate, gz=False):
    arrays = tiny_mnist_arrays()
    paths = write_idx_set(tmp_path, arrays)
    data = mutate(idx_bytes(arrays[role]))
    paths[role].unlink()
    return write_file(paths[role], data, gz)


@pytest.mark.parametrize("gz", [False, True])
def test_bad_magic_number_names_the_file(tmp_path, gz):
    path = _corrupt(tmp_path, "train_images", lambda b: b"\x12\x34" + b[2:], gz)
    with pytest.raises(DatasetFormatError, match="bad magic number") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert info.value.path == str(path) and str(path) in str(info.value)


def test_labels_file_in_place_of_images_is_a_magic_mismatch(tmp_path):
    arrays = tiny_mnist_arrays()
    write_idx_set(tmp_path, arrays)
    (tmp_path / IDX_STEMS["test_images"]).write_bytes(idx_bytes(arrays["test_labels"]))
    with pytest.raises(DatasetFormatError, match=r"bad magic number 2049 \(expected 2051\)") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert IDX_STEMS["test_images"] in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("cut", [1, 20, 60])
def test_truncated_payload_is_an_error_not_a_short_dataset(tmp_path, gz, cut):
    path = _corrupt(tmp_path, "train_images", lambda b: b[:-cut], gz)
    with pytest.raises(DatasetFormatError, match=r"wrong length \(truncated\)") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_truncated_header_names_the_file(tmp_path):
    path = _corrupt(tmp_path, "test_labels", lambda b: b[:6])
    with pytest.raises(DatasetFormatError, match="truncated header") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_trailing_bytes_are_an_error(tmp_path):
    _corrupt(tmp_path, "test_labels", lambda b: b + b"\x00")
    with pytest.raises(DatasetFormatError, match="trailing bytes"):
        load_dataset("mnist", data_dir=tmp_path)


def test_truncated_gzip_stream_names_the_file(tmp_path):
    arrays = tiny_mnist_arrays()
    paths = write_idx_set(tmp_path, arrays, gz=True)
    data = paths["train_labels"].read_bytes()
    paths["train_labels"].write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match="corrupt or truncated gzip") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(paths["train_labels"]) in str(info.value)


def test_image_label_count_mismatch_names_both_files(tmp_path):
    arrays = tiny_mnist_arrays()
    arrays["train_labels"] = arrays["train_labels"][:-1]
    paths = write_idx_set(tmp_path, arrays)
    with pytest.raises(DatasetFormatError, match="count mismatch: 11 labels for 12 images") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(paths["train_labels"]) in str(info.value) and str(paths["train_images"]) in str(info.value)


def test_label_out_of_range_is_an_error(tmp_path):
    arrays = tiny_mnist_arrays()
    arrays["test_labels"][3] = 10
    write_idx_set(tmp_path, arrays)
    with pytest.raises(DatasetFormatError, match=r"label 10 out of range \[0, 10\)"):
        load_dataset("mnist", data_dir=tmp_path)


def test_missing_file_error_names_folder_and_expected_files(tmp_path):
    paths = write_idx_set(tmp_path, tiny_mnist_arrays())
    paths["test_images"].unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "download=True" in message
    assert all(stem in message for stem in IDX_STEMS.values())


def test_mnist_without_data_dir_says_to_pass_one():
    with pytest.raises(DatasetNotFoundError, match="pass data_dir") as info:
        load_dataset("mnist")
    assert "train-images-idx3-ubyte" in str(info.value)


def test_fashion_mnist_missing_default_folder_says_how_to_install(tmp_path, monkeypatch):
    entry = idx_module._SETS["fashion-mnist"]
    monkeypatch.setitem(idx_module._SETS, "fashion-mnist", (str(tmp_path / "none"),) + entry[1:])
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist")
    assert str(tmp_path / "none") in str(info.value)
    with pytest.raises(ValueError, match="download=True for fashion-mnist needs data_dir"):
        load_dataset("fashion-mnist", download=True)


@pytest.mark.parametrize("name, cls_name", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_download_runs_only_when_files_are_missing(tmp_path, fake_torchvision, name, cls_name):
    splits = load_dataset(name, data_dir=tmp_path, download=True)
    assert [c[0] for c in fake_torchvision] == [cls_name, cls_name]
    assert {c[2] for c in fake_torchvision} == {True, False} and all(c[3] for c in fake_torchvision)
    assert torch.equal(splits.train.y, _expected_split(tiny_mnist_arrays(), "train")[1])
    load_dataset(name, data_dir=tmp_path, download=True)  # files now present: no second download
    assert len(fake_torchvision) == 2


def test_no_download_without_the_flag(tmp_path, fake_torchvision):
    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist", data_dir=tmp_path)
    assert fake_torchvision == []


def test_download_without_torchvision_is_a_clear_import_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(ImportError, match="pip install torchvision"):
        load_dataset("mnist", data_dir=tmp_path, download=True)


_REAL_FASHION = Path(idx_module.FASHION_MNIST_DEFAULT_DIR)


@pytest.mark.skipif(not (_REAL_FASHION / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST not installed in {_REAL_FASHION} (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_headers_labels_and_statistics():
    expected = {"train-images-idx3-ubyte.gz": (2051, (60000, 28, 28)),
                "train-labels-idx1-ubyte.gz": (2049, (60000,)),
                "t10k-images-idx3-ubyte.gz": (2051, (10000, 28, 28)),
                "t10k-labels-idx1-ubyte.gz": (2049, (10000,))}
    for file_name, header in expected.items():
        assert idx_module.read_idx_header(_REAL_FASHION / file_name) == header
    test_labels = read_idx(_REAL_FASHION / "t10k-labels-idx1-ubyte.gz", expected_magic=2049)
    np.testing.assert_array_equal(np.bincount(test_labels), [1000] * 10)
    # Whole set through the public loader (~1 s): shapes, range, and its well-known statistics.
    splits = load_dataset("fashion-mnist")
    assert splits.train.x.shape == (60000, 1, 28, 28) and splits.test.x.shape == (10000, 1, 28, 28)
    assert splits.class_names[9] == "Ankle boot"
    assert float(splits.mean) == pytest.approx(0.2860, abs=5e-4)
    assert float(splits.std) == pytest.approx(0.3530, abs=5e-4)
    with gzip.open(_REAL_FASHION / "train-images-idx3-ubyte.gz") as handle:
        first = handle.read(16 + 784)[16:]
    np.testing.assert_array_equal(splits.train.x[0, 0].numpy() * 255.0,
                                  np.frombuffer(first, np.uint8).reshape(28, 28).astype(np.float32))


def _raw_idx(dims, payload_length: int, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + bytes(payload_length)


@pytest.mark.parametrize("dims", [(0xFFFFFFFF, 2), (0xFFFFFFFF, 0xFFFFFFFF, 2)])
def test_header_dims_larger_than_the_file_name_it_with_the_exact_size(tmp_path, dims):
    path = write_file(tmp_path / "huge.idx", _raw_idx(dims, 16))
    needed = 1
    for d in dims:
        needed *= d
    with pytest.raises(DatasetFormatError, match=f"needs {needed} payload bytes, file has 16") as info:
        read_idx(path)
    assert info.value.path == str(path)


def test_header_dims_whose_int64_product_wraps_onto_the_payload_length_are_refused(tmp_path):
    """1497843863 x 343472 x 179280 = 5 * 2**64 + 7,840,000: modulo 2**64 exactly the length of
    this payload, so a check in int64 arithmetic passes it and numpy's reshape fails."""
    dims = (1497843863, 343472, 179280)
    assert (dims[0] * dims[1] * dims[2]) % 2**64 == 7_840_000
    arrays = tiny_mnist_arrays()
    paths = write_idx_set(tmp_path, arrays)
    paths["train_images"].write_bytes(_raw_idx(dims, 7_840_000, type_code=0x08))
    with pytest.raises(DatasetFormatError, match="truncated") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert info.value.path == str(paths["train_images"]) and str(paths["train_images"]) in str(info.value)
