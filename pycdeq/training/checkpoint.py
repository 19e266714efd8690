"""Checkpoints: atomic, checksummed, loaded without running code, and bound to their run.

A checkpoint is one file: a ``torch.save``'d envelope ``{"format", "sha256", "payload"}``
whose payload is the ``torch.save``'d training state. It is written with
:func:`~pycdeq.training.files.atomic_write_bytes`, so a crash (or Ctrl-C) leaves the previous
checkpoint or the new one, never half a file.

**What is safe to load.** Both the envelope and the payload are read with
``torch.load(..., weights_only=True)``: tensors, plain containers (dict, list, tuple),
numbers, strings, bytes, ``None``. A file asking to rebuild any other object (an arbitrary
class, or a ``__reduce__`` that calls a function) is refused with :class:`CheckpointError`
before anything in it runs; :func:`save_checkpoint` refuses to write such a state in the
first place. The state therefore holds configurations as plain dicts, never as objects.

**What the checksum does and does not do.** The SHA-256 of the payload, stored next to it,
detects a file truncated or damaged after it was written (a disk or copy error, a flipped
bit). It authenticates nothing: whoever can write the file can write a matching checksum.
Protection against a hostile file is the restricted loading above, not the checksum.

**What a checkpoint belongs to.** :func:`run_identity` describes a run (the model's class
and configuration, every training option, the number of processes of a data-parallel run,
which decides the batch order); the trainer stores it and, on resume, refuses a
checkpoint whose identity differs, naming the fields (:func:`identity_mismatch`), apart from
:data:`RESUMABLE_CHANGES`, the options that may change between a run and its resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn

from .files import atomic_write_bytes

#: v1 payloads held pickled Python objects (configs, metrics) and could not be loaded safely.
FORMAT = "pycdeq-checkpoint-v2"
_OLD_FORMATS = ("pycdeq-checkpoint-v1",)

#: Training options that may differ between a run and its resume: the run's length (``epochs``,
#: ``steps``: continue a finished run for longer), where it runs (``device``) and what is
#: displayed or evaluated (``progress``, ``eval_batch_size``). Any other difference means the
#: checkpoint belongs to another run, and resuming it would silently mix two runs.
RESUMABLE_CHANGES = ("epochs", "steps", "device", "progress", "eval_batch_size")

_PLAIN = (str, bytes, int, float, complex, bool, type(None), torch.Size, torch.dtype, torch.device)


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, unsafe, of another format or of another run."""


def _check_plain(value: Any, where: str) -> None:
    """Refuse (TypeError naming the key) what ``weights_only`` loading could not read back."""
    if isinstance(value, torch.Tensor) or isinstance(value, _PLAIN):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint state {where}: key {key!r} must be a str or int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(f"checkpoint state {where} is a {type(value).__name__}; a checkpoint holds only tensors, "
                    "dicts, lists, tuples, numbers, strings and None (so that it loads without running code)")


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` (tensors and plain containers only: else ``TypeError``) to ``path``."""
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    _check_plain(state, "state")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    envelope = io.BytesIO()
    torch.save({"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}, envelope)
    atomic_write_bytes(Path(path), envelope.getvalue())


def _restricted_load(source, path: Path, what: str, map_location: Any):
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for damaged or unsafe files
        if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error):
            raise CheckpointError(f"checkpoint {path}: its {what} holds objects other than tensors and plain "
                                  "containers; refused without loading them (a pycdeq checkpoint never does; "
                                  "the file was not written by pycdeq or was tampered with)") from None
        raise CheckpointError(f"checkpoint {path} cannot be read ({what}): {error}") from error


def load_checkpoint(path, map_location: Any = "cpu") -> dict:
    """The state saved by :func:`save_checkpoint`; :class:`CheckpointError` naming ``path``
    for a missing, truncated, corrupt (checksum), foreign or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    envelope = _restricted_load(path, path, "envelope", "cpu")
    if not isinstance(envelope, dict) or envelope.get("format") not in (FORMAT, *_OLD_FORMATS):
        raise CheckpointError(f"{path} is not a {FORMAT} file")
    if envelope["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path} has the old format {envelope['format']}, whose payload can only "
                              "be loaded by running pickled code; it is not loaded: start the run anew")
    payload = envelope.get("payload")
    if not isinstance(payload, bytes) or hashlib.sha256(payload).hexdigest() != envelope.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupt: checksum mismatch")
    state = _restricted_load(io.BytesIO(payload), path, "payload", map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return state


# --- what a checkpoint belongs to --------------------------------------------------------------
def describe(value: Any) -> Any:
    """``value`` as plain data for storing and comparing: dataclasses become dicts (with their
    type's name under ``"type"``), tuples lists; other objects their ``repr`` (their class's
    name where the repr is Python's default, which holds a memory address)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: describe(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"type": type(value).__name__, **fields}
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if type(value).__repr__ is object.__repr__:  # "<... object at 0x...>" differs in every process
        return f"{type(value).__module__}.{type(value).__qualname__}"
    return repr(value)


def describe_model(model: Any) -> dict:
    """A model's class and, for pycdeq's models, its :class:`~pycdeq.models.ModelConfig`.
    Also accepts a bare config (what the model would be built from)."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    if dataclasses.is_dataclass(model) and not isinstance(model, type):
        return {"config": describe(model)}
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        # The config identifies a pycdeq model fully (architecture, variant, sizes, solver), and
        # the command line checks a checkpoint against the config before building the model.
        return {"config": describe(config)}
    return {"class": f"{type(model).__module__}.{type(model).__qualname__}"}


def run_identity(model: Any, train_config: Any, *, world_size: int = 1) -> dict:
    """What a checkpoint belongs to: ``{"model": describe_model(model), "train": <options>,
    "world_size": <processes>}`` (data-parallel processes: each takes its share of the batches,
    so resuming with another number would draw other batches)."""
    return {"model": describe_model(model), "train": describe(train_config), "world_size": world_size}


def _flatten(value: Any, prefix: str) -> Dict[str, Any]:
    if isinstance(value, dict):
        flat: Dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def identity_mismatch(stored: dict, current: dict, *, may_change=RESUMABLE_CHANGES) -> List[str]:
    """``"field: stored -> current"`` for every field that differs, except ``train.<may_change>``."""
    old, new = _flatten(stored, ""), _flatten(current, "")
    allowed = {f"train.{name}" for name in may_change}
    return [f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
            for key in sorted(set(old) | set(new)) if key not in allowed and old.get(key) != new.get(key)]


def check_identity(path, stored: Any, current: dict) -> None:
    """:class:`CheckpointError` naming ``path`` and the differing fields unless they match."""
    if not isinstance(stored, dict):
        raise CheckpointError(f"checkpoint {path} does not record which run it belongs to (written by an older "
                              "pycdeq?); it is not resumed")
    differing = identity_mismatch(stored, current)
    if differing:
        processes = (" (resume a data-parallel run with as many processes as wrote it: the batch order depends "
                     "on the number)" if any(d.startswith("world_size:") for d in differing) else "")
        raise CheckpointError(f"checkpoint {path} belongs to another run; it differs in: {'; '.join(differing)}"
                              f"{processes}. Only {', '.join(RESUMABLE_CHANGES)} may change on resume: start a "
                              "new run (another checkpoint path) to change anything else")
