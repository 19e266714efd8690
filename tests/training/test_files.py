"""Atomic writes and the output-folder lock (pycdeq.training.files)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from pycdeq.training import FolderLock, FolderLockedError, atomic_write_bytes, atomic_write_text
from pycdeq.training import files as files_module


def test_atomic_write_creates_the_folder_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a" / "b.txt"
    atomic_write_text(path, "one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two" and os.listdir(path.parent) == ["b.txt"]


def test_a_crash_before_the_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_text(path, "good")

    def crash(*args):
        raise OSError("simulated crash")

    monkeypatch.setattr(files_module.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_text(path, "half")
    assert path.read_text() == "good" and os.listdir(tmp_path) == ["results.json"]


def test_a_held_folder_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    with FolderLock(tmp_path / "out") as first:
        assert first.held
        with pytest.raises(FolderLockedError) as refused:
            FolderLock(tmp_path / "out").acquire()
    message = str(refused.value)
    assert str(tmp_path / "out") in message and f"pid {os.getpid()} on {socket.gethostname()}" in message
    assert "started 2" in message  # the start time, e.g. "started 2026-05-09 07:35:25 +0000"


def test_the_lock_is_free_again_after_release_and_after_its_holder_dies(tmp_path):
    FolderLock(tmp_path).acquire().release()
    with FolderLock(tmp_path):
        pass
    # A process that takes the lock and is killed: the kernel drops its lock.
    script = (f"import time; from pycdeq.training import FolderLock; lock = FolderLock({str(tmp_path)!r}).acquire(); "
              "print('held', flush=True); time.sleep(300)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=f"pid {holder.pid} "):
            FolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with FolderLock(tmp_path):
        pass
    assert (tmp_path / ".pycdeq.lock").exists()  # never deleted (see FolderLock)
