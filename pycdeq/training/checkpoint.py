"""Checkpoints written atomically with a checksum.

A checkpoint is one file: a ``torch.save``'d envelope ``{"format", "sha256", "payload"}``
whose payload is the serialised training state. It is written to a temporary file in the
same folder, flushed and fsync'ed, then renamed over the target, so a crash (or Ctrl-C)
leaves either the previous checkpoint or the new one, never half a file; the checksum
catches a file damaged later.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "pycdeq-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or of another format."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
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


def save_checkpoint(path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    envelope = io.BytesIO()
    torch.save({"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}, envelope)
    atomic_write_bytes(Path(path), envelope.getvalue())


def load_checkpoint(path, map_location: Any = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        envelope = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged files
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from error
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file")
    payload = envelope["payload"]
    if hashlib.sha256(payload).hexdigest() != envelope["sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: checksum mismatch")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
