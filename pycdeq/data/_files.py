"""Finding a data set's files in a folder, and the one place torchvision's download is used.

The rule (issue 5): files are read from ``data_dir``; torchvision downloads only when the files
are missing *and* the caller passed ``download=True``. torchvision is imported inside that path
alone, so pycdeq never needs it to read data that is already on disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from ._dataset import DatasetNotFoundError


def resolve_dir(data_dir, name: str, default: str | None, hint: str) -> Path:
    """``data_dir`` as a Path, else the data set's default folder, else an error saying what to pass."""
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"data_dir must be a str or os.PathLike, got {type(data_dir).__name__}")
        return Path(data_dir).expanduser()
    if default is None:
        raise DatasetNotFoundError(
            f"{name} has no default folder: pass data_dir=<folder with the files>. {hint}")
    return Path(default)


def find_first(folders: Sequence[Path], candidates: Sequence[str]) -> Path | None:
    """The first existing file among ``folder/candidate`` (folders outer, candidates inner)."""
    for folder in folders:
        for candidate in candidates:
            path = folder / candidate
            if path.is_file():
                return path
    return None


def missing_error(name: str, folder: Path, expected: Sequence[str], hint: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{name}: files not found in {folder}. Expected: {', '.join(expected)}. {hint} "
        f"Or pass download=True to fetch them with torchvision into data_dir.")


def download_with_torchvision(name: str, folder: Path, fetch: Callable) -> None:
    """Call ``fetch(torchvision.datasets, root)`` once; errors say exactly what is missing."""
    try:
        import torchvision.datasets as tv_datasets  # noqa: PLC0415 - optional, download path only
    except ImportError as exc:
        raise ImportError(
            f"download=True for {name} needs torchvision (pip install torchvision); "
            f"alternatively place the files in {folder} yourself") from exc
    folder.mkdir(parents=True, exist_ok=True)
    fetch(tv_datasets, str(folder))
