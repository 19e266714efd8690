"""The Julia backend: pycdeq's models on DeepEquilibriumNetworks.jl (Lux), through juliacall.

Importing this package starts nothing and touches no network (it imports torch and NumPy,
which ``import pycdeq`` has loaded already, never juliacall): :func:`available` and
:func:`status` only look for a Julia executable (``julia --version``) and for juliacall
(without importing it). Julia starts on first real use (:func:`start`, :class:`JuliaModel`,
:func:`compare`), once per process; without a usable Julia that raises
:class:`JuliaNotAvailableError` at once, with the reason and the fix.

Public names: ``available``, ``status``, ``start``, ``JuliaNotAvailableError``,
``TranslationError``, ``UnsupportedDeviceError``, ``JuliaModel``, ``JuliaForward``, ``compare``, ``ParityReport``,
``Tolerances``, ``ModelSpec``; the translation itself is ``pycdeq.julia.translate.translate``
(the submodule keeps its name; ``compare`` is the function, its module
``pycdeq.julia.compare`` is reachable with ``from pycdeq.julia.compare import ...``).
See ``docs/julia.md``.
"""

from __future__ import annotations

from typing import Any

from . import _detect, _runtime
from .backend import JuliaForward, JuliaModel
from .compare import ParityReport, Tolerances, compare
from .errors import JuliaNotAvailableError, TranslationError, UnsupportedDeviceError
from .translate import ModelSpec

__all__ = ["available", "status", "start", "JuliaNotAvailableError", "TranslationError",
           "UnsupportedDeviceError", "JuliaModel", "JuliaForward", "compare", "ParityReport", "Tolerances", "ModelSpec"]


def available() -> bool:
    """True when a compatible Julia (>= 1.10.3) and juliacall are installed and Julia has not
    already failed to start in this process. Never imports juliacall, never downloads."""
    if _runtime.failure() is not None:
        return False
    return _runtime.started() or _detect.detect().usable


def status() -> str:
    """A human-readable account of the backend: what was found, why it cannot run, the fix."""
    if _runtime.started():
        return "Julia backend running (PycdeqBridge loaded)."
    error = _runtime.failure()
    if error is not None:
        return f"Julia backend failed to start in this process: {error}"
    detection = _detect.detect()
    head = "Julia backend available (starts on first use)" if detection.usable else \
        "Julia backend not available"
    return f"{head}: {_detect.explain(detection)}"


def start() -> Any:
    """Start Julia (once) and return the ``PycdeqBridge`` module handle, or raise
    :class:`JuliaNotAvailableError`."""
    return _runtime.bridge()
