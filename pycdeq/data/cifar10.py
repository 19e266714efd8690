"""CIFAR-10 from the "python version" batches (``cifar-10-batches-py/``).

Each of ``data_batch_1`` .. ``data_batch_5`` (train) and ``test_batch`` is a pickled dict with
``data``: uint8 array ``(10000, 3072)`` whose rows hold the R, G, B planes of a 32x32 image
(so a reshape to ``(N, 3, 32, 32)`` is exact), and ``labels``: a list of ints in ``[0, 10)``.
The files come from Python 2, so keys are bytes; both bytes and str keys are accepted.

Unpickling runs code named in the file, so the unpickler here resolves only the few NumPy
callables an array needs; anything else is refused as a format error.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ._dataset import DatasetFormatError, DatasetSplits, Split, images_from_uint8, labels_to_tensor
from ._files import download_with_torchvision, missing_error, resolve_dir

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)
_HINT = ("CIFAR-10's python version is cifar-10-python.tar.gz from the CIFAR web page; "
         f"unpack it so that data_dir (or data_dir/{FOLDER}) holds these files.")

# (module, name) pairs an ndarray pickle needs, across NumPy 1.x and 2.x module names.
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    # How Python 3 writes bytes at pickle protocol <= 2 (a pure str -> bytes conversion).
    ("_codecs", "encode"),
}


_NUMPY2 = int(np.__version__.split(".")[0]) >= 2


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only NumPy arrays are allowed)")
        if module.startswith("numpy.core.") and _NUMPY2:
            # NumPy 2 renamed numpy.core to numpy._core; the old name still works but warns.
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images ``(N, 3, 32, 32)``, int64 labels ``(N,)``) of one batch file, validated."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a format error of this file
        raise DatasetFormatError(path, f"unpickling failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise DatasetFormatError(path, f"expected a pickled dict, got {type(batch).__name__}")
    data = _get(batch, "data", path)
    labels = _get(batch, "labels", path)
    pixels = int(np.prod(IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        found = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(path, f"'data' must be a uint8 array of shape (N, {pixels}), got {found}")
    try:
        labels = np.asarray(labels)
    except Exception as exc:  # noqa: BLE001
        raise DatasetFormatError(path, f"'labels' is not a sequence of ints ({exc})") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetFormatError(path, f"'labels' must be a 1-D sequence of ints, got {labels.dtype} {labels.shape}")
    if labels.shape[0] != data.shape[0]:
        raise DatasetFormatError(path, f"image/label count mismatch: {labels.shape[0]} labels for "
                                       f"{data.shape[0]} images")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= len(CLASSES)):
        raise DatasetFormatError(path, f"labels out of range [0, {len(CLASSES)}): "
                                       f"[{int(labels.min())}, {int(labels.max())}]")
    return data.reshape((-1,) + IMAGE_SHAPE), labels.astype(np.int64)


def _get(batch: dict, key: str, path: Path):
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DatasetFormatError(path, f"missing key {key!r} (has {sorted(map(repr, batch))})")


def find_folder(folder: Path) -> Path | None:
    """``folder`` itself or ``folder/cifar-10-batches-py``, whichever holds all six batches."""
    for candidate in (folder, folder / FOLDER):
        if all((candidate / name).is_file() for name in TRAIN_FILES + TEST_FILES):
            return candidate
    return None


def _read_split(folder: Path, names) -> Split:
    parts = [read_batch(folder / name) for name in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return Split(images_from_uint8(images), labels_to_tensor(labels))


def load_cifar10(*, data_dir=None, download: bool = False) -> DatasetSplits:
    """CIFAR-10's 50,000 train and 10,000 test images, scaled to ``[0, 1]``."""
    folder = resolve_dir(data_dir, "cifar10", None,
                         f"Expected files: {', '.join(TRAIN_FILES + TEST_FILES)}. {_HINT}")
    found = find_folder(folder)
    if found is None and download:
        # torchvision unpacks into root/cifar-10-batches-py, which find_folder looks in.
        download_with_torchvision("cifar10", folder, lambda tv, root: tv.CIFAR10(root=root, download=True))
        found = find_folder(folder)
    if found is None:
        raise missing_error("cifar10", folder, [f"[{FOLDER}/]{n}" for n in TRAIN_FILES + TEST_FILES], _HINT)
    train = _read_split(found, TRAIN_FILES)
    test = _read_split(found, TEST_FILES)
    return DatasetSplits(train=train, test=test, name="cifar10", num_classes=len(CLASSES),
                         input_shape=IMAGE_SHAPE, source=str(found), class_names=CLASSES)
