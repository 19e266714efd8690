"""Files that are never half written, and output folders that one process owns at a time.

:func:`atomic_write_bytes` writes to a temporary file in the target's folder, flushes and
fsyncs it, then renames it over the target (``os.replace`` is atomic on POSIX and Windows
within one file system), so a crash or Ctrl-C leaves the previous file or the new one,
never a truncated mix. Checkpoints, the command line's run records, results files and plots
all go through it.

:class:`FolderLock` is an exclusive advisory lock (``fcntl.flock``) on a lock file inside a
folder: a second process asking for the same folder is refused, told who holds it (pid,
host, start time), instead of mixing its files with the first one's. The kernel drops the
lock when its holder exits, also after ``kill -9``, so a stale lock file never blocks a
later run. ``flock`` is POSIX; where ``fcntl`` does not exist (Windows) the lock is a no-op.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Optional, Union

try:  # POSIX only; see the module docstring
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None  # type: ignore[assignment]  # no locking module on this platform
fcntl = _fcntl

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename); creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


class FolderLockedError(RuntimeError):
    """Another process holds the folder's lock; the message says which (pid, host, start time)."""


class FolderLock:
    """Exclusive, non-blocking lock on ``folder / name`` (a context manager).

    ``acquire()`` creates the folder and the lock file if needed, takes the lock or raises
    :class:`FolderLockedError`, then records ``pid host start-time`` in the file for the
    message a refused process prints. The lock file is never deleted: unlinking a file that
    another process has open would let two processes each lock "their" file.
    """

    def __init__(self, folder: PathLike, name: str = ".pycdeq.lock"):
        self.path = Path(folder) / name
        self._handle: Optional[IO[str]] = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> "FolderLock":
        if self._handle is not None:
            raise RuntimeError(f"{self.path} is already locked by this FolderLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # "a+": do not truncate the holder's line
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # BlockingIOError: held by another open file description
                handle.seek(0)
                holder = handle.read().strip()
                handle.close()
                raise FolderLockedError(
                    f"{self.path.parent} is in use by another pycdeq run "
                    f"({holder or 'holder not recorded yet'}); wait for it to finish or choose another "
                    "output folder") from None
        handle.truncate(0)
        started = time.strftime("%Y-%m-%d %H:%M:%S %z")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()  # closing the last descriptor drops the flock

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> Optional[bool]:
        self.release()
        return None
