"""Data sets for pycdeq's experiments, all returned as :class:`DatasetSplits` of float32 tensors.

``load_dataset(name, data_dir=None, download=False, seed=0, **options)`` with ``name`` one of

* ``"digits"``: scikit-learn's 8x8 digits (ships offline; the embedded default), seeded
  stratified 80/20 split; option ``test_fraction``.
* ``"mnist"``, ``"fashion-mnist"``: the standard IDX files (gzipped or not) in ``data_dir``;
  Fashion-MNIST defaults to Debian's ``dataset-fashion-mnist`` folder.
* ``"fashion-mnist-32"``: Fashion-MNIST padded to 32x32 with 3 channels, for the CIFAR-shaped
  models (:mod:`.fashion_mnist_32`); same files and folders as ``"fashion-mnist"``.
* ``"cifar10"``: the python-pickle batches in ``data_dir`` (or ``data_dir/cifar-10-batches-py``).
* ``"synthetic"``: prototype-plus-noise images; options ``shape``, ``num_classes``, ``n_train``,
  ``n_test``, ``noise``.

Every data set also takes ``limit_train`` / ``limit_test``: a class-stratified subset of that
size chosen by ``seed`` (kept in file order). Unknown names and options raise, never ignored.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, Tuple

from pycdeq import _checks

from ._dataset import DatasetFormatError, DatasetNotFoundError, DatasetSplits, Split, take
from .cifar10 import load_cifar10
from .digits import load_digits
from .fashion_mnist_32 import load_fashion_mnist_32
from .idx import load_idx_dataset, read_idx
from .synthetic import PRESETS as SYNTHETIC_PRESETS
from .synthetic import load_synthetic

__all__ = ["DATASETS", "DatasetFormatError", "DatasetNotFoundError", "DatasetSplits", "Split",
           "load_dataset", "read_idx", "SYNTHETIC_PRESETS"]

# name -> (loader, reads files from data_dir?)
_LOADERS: Dict[str, Tuple[Callable[..., Any], bool]] = {
    "digits": (load_digits, False),
    "mnist": (functools.partial(load_idx_dataset, "mnist"), True),
    "fashion-mnist": (functools.partial(load_idx_dataset, "fashion-mnist"), True),
    "fashion-mnist-32": (load_fashion_mnist_32, True),
    "cifar10": (load_cifar10, True),
    "synthetic": (load_synthetic, False),
}
DATASETS = tuple(_LOADERS)
_COMMON_OPTIONS = ("limit_train", "limit_test")


def _own_options(loader) -> tuple[str, ...]:
    """The keyword options a loader takes beyond the ones load_dataset passes itself."""
    params = inspect.signature(loader).parameters
    return tuple(p for p in params if p not in ("seed", "data_dir", "download")
                 and params[p].kind is inspect.Parameter.KEYWORD_ONLY)


def load_dataset(name: str, *, data_dir=None, download: bool = False, seed: int = 0,
                 **options) -> DatasetSplits:
    """Load data set ``name``; see the module docstring for names and options.

    Raises ``ValueError`` for an unknown name, ``TypeError`` for an option the data set does not
    take, ``DatasetNotFoundError`` (a ``FileNotFoundError``) when files are missing and
    ``download`` is false, and ``DatasetFormatError`` (a ``ValueError``) naming the file when
    a file is corrupt or truncated.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    _checks.one_of("dataset name", key, DATASETS)
    _checks.positive_int("seed", seed, allow_zero=True)
    if not isinstance(download, bool):
        raise TypeError(f"download must be a bool, got {type(download).__name__}")
    loader, reads_files = _LOADERS[key]
    own = _own_options(loader)
    unknown = sorted(set(options) - set(own) - set(_COMMON_OPTIONS))
    if unknown:
        raise TypeError(f"unknown option(s) for dataset {key!r}: {', '.join(unknown)}; "
                        f"valid: {', '.join(own + _COMMON_OPTIONS)}")
    limits = {k: options.pop(k) for k in _COMMON_OPTIONS if k in options}
    if reads_files:
        splits = loader(data_dir=data_dir, download=download, **options)
    else:
        # Generated / packaged data: a folder or download request would be silently ignored.
        if data_dir is not None:
            raise ValueError(f"dataset {key!r} reads no files; data_dir must be None, got {data_dir!r}")
        if download:
            raise ValueError(f"dataset {key!r} has nothing to download; download must be False")
        splits = loader(seed=seed, **options)
    if not limits:
        return splits
    train = take(splits.train, limits.get("limit_train"), seed, "limit_train")
    test = take(splits.test, limits.get("limit_test"), seed, "limit_test")
    return DatasetSplits(train=train, test=test, name=splits.name, num_classes=splits.num_classes,
                         input_shape=splits.input_shape, source=splits.source, class_names=splits.class_names)
