"""MNIST and Fashion-MNIST from the IDX files they are distributed as (plain or gzipped).

An IDX file is a 4-byte magic number ``00 00 TT D`` (TT the element type, D the number of
dimensions), D big-endian uint32 sizes, then the elements in C order, big-endian. MNIST's images
are ``idx3-ubyte`` (magic 2051: N x 28 x 28 bytes), its labels ``idx1-ubyte`` (magic 2049: N
bytes). Every length is checked against the header, so a truncated download is an error naming
the file, never a silently shorter data set.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from ._dataset import DatasetFormatError, DatasetSplits, Split, images_from_uint8, labels_to_tensor
from ._files import download_with_torchvision, find_first, missing_error, resolve_dir

# IDX element type code -> big-endian numpy dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

# The standard file stems; each is looked for as-is and with ".gz".
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))

_SETS = {
    # name: (default folder, torchvision class, torchvision's raw sub-folder, class names, how to get it)
    "mnist": (None, "MNIST", "MNIST/raw", MNIST_CLASSES,
              "MNIST is distributed as these four IDX files (yann.lecun.com / torchvision mirrors)."),
    "fashion-mnist": (FASHION_MNIST_DEFAULT_DIR, "FashionMNIST", "FashionMNIST/raw", FASHION_MNIST_CLASSES,
                      "On Debian/Ubuntu: apt-get install dataset-fashion-mnist "
                      f"(installs them in {FASHION_MNIST_DEFAULT_DIR})."),
}


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic (whatever its name)."""
    path = Path(path)
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:  # truncated stream, bad CRC, corrupt deflate
        raise DatasetFormatError(path, f"corrupt or truncated gzip data ({exc})") from None


def parse_idx_header(data: bytes, path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(element dtype, dims, header length) of IDX bytes, validating the magic number."""
    if len(data) < 4:
        raise DatasetFormatError(path, f"too short for an IDX header ({len(data)} bytes)")
    zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise DatasetFormatError(path, f"bad magic number 0x{magic:08x} (not an IDX file: expected "
                                       f"00 00 <type in {sorted(_IDX_TYPES)}> <ndim >= 1>)")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DatasetFormatError(path, f"truncated header: {ndim} dimensions need {header_len} bytes, "
                                       f"file has {len(data)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.dtype(_IDX_TYPES[type_code]), dims, header_len


def read_idx(path: str | os.PathLike, *, expected_magic: int | None = None) -> np.ndarray:
    """The array stored in an IDX file (gzipped or not), in native byte order.

    Raises ``DatasetFormatError`` naming ``path`` for a bad or unexpected magic number and for a
    payload shorter (truncated) or longer (trailing bytes) than the header's sizes promise.
    """
    data = read_bytes(path)
    dtype, dims, header_len = parse_idx_header(data, path)
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise DatasetFormatError(path, f"bad magic number {magic} (expected {expected_magic})")
    # Python integers: numpy's int64 product of hostile dims can wrap around, even onto the
    # true payload length, and the reshape below would then fail naming no file.
    expected = math.prod(dims) * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        kind = "truncated" if actual < expected else "trailing bytes"
        raise DatasetFormatError(path, f"wrong length ({kind}): header {dims} needs {expected} payload "
                                       f"bytes, file has {actual}")
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx_header(path: str | os.PathLike) -> tuple[int, tuple[int, ...]]:
    """(magic number, dims) of an IDX file, reading (and gunzipping) only the header bytes."""
    with open(path, "rb") as handle:
        compressed = handle.read(2) == _GZIP_MAGIC
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as handle:
            data = handle.read(4)
            if len(data) == 4:
                data += handle.read(4 * data[3])
    except (EOFError, OSError, zlib.error) as exc:
        raise DatasetFormatError(path, f"corrupt or truncated gzip data ({exc})") from None
    _, dims, _ = parse_idx_header(data, path)
    return int.from_bytes(data[:4], "big"), dims


def find_idx_files(folder: Path, name: str) -> dict[tuple[str, str], Path] | None:
    """The four files in ``folder`` (or torchvision's ``<Class>/raw`` under it); None if any is missing."""
    raw_sub = _SETS[name][2]
    folders = [folder, folder / raw_sub]
    found = {}
    for key, stem in FILES.items():
        path = find_first(folders, (stem, stem + ".gz"))
        if path is None:
            return None
        found[key] = path
    return found


def _read_split(images_path: Path, labels_path: Path, num_classes: int) -> Split:
    images = read_idx(images_path, expected_magic=IMAGES_MAGIC)
    labels = read_idx(labels_path, expected_magic=LABELS_MAGIC)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetFormatError(images_path, f"expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DatasetFormatError(labels_path, f"expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(labels_path, f"image/label count mismatch: {labels.shape[0]} labels for "
                                              f"{images.shape[0]} images in {images_path}")
    if labels.size and int(labels.max()) >= num_classes:
        raise DatasetFormatError(labels_path, f"label {int(labels.max())} out of range [0, {num_classes})")
    return Split(images_from_uint8(images[:, None]), labels_to_tensor(labels))


def load_idx_dataset(name: str, *, data_dir=None, download: bool = False) -> DatasetSplits:
    """MNIST or Fashion-MNIST (``name``) from the standard four IDX files in ``data_dir``."""
    default_dir, tv_class, _, class_names, hint = _SETS[name]
    expected = [f"{stem}[.gz]" for stem in FILES.values()]
    if data_dir is None and default_dir is None:
        # Say what the files are called as well as that a folder is needed.
        hint = f"Expected files: {', '.join(expected)}. {hint}"
    folder = resolve_dir(data_dir, name, default_dir, hint)
    found = find_idx_files(folder, name)
    if found is None and download:
        if data_dir is None:
            raise ValueError(f"download=True for {name} needs data_dir: the default folder {folder} "
                             f"belongs to the system package")

        def fetch(tv, root):
            for train in (True, False):
                getattr(tv, tv_class)(root=root, train=train, download=True)

        download_with_torchvision(name, folder, fetch)
        found = find_idx_files(folder, name)
    if found is None:
        raise missing_error(name, folder, expected, hint)
    num_classes = len(class_names)
    train = _read_split(found["train", "images"], found["train", "labels"], num_classes)
    test = _read_split(found["test", "images"], found["test", "labels"], num_classes)
    return DatasetSplits(train=train, test=test, name=name, num_classes=num_classes,
                         input_shape=tuple(train.x.shape[1:]), source=str(found["train", "images"].parent),
                         class_names=class_names)
