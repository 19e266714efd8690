"""Start Julia once, lazily, and cache the outcome (the bridge module or the error).

Nothing here runs at import. :func:`bridge` is the only way in:

1. side-effect-free detection (:mod:`._detect`); with no usable Julia and no opt-in to a
   download (or offline), it raises :class:`JuliaNotAvailableError` at once (well under a
   second) instead of letting juliapkg try the network;
2. ``PYTHON_JULIACALL_HANDLE_SIGNALS=yes`` is set before the import (unless the user chose a
   value): with more than one Julia thread, Julia's GC safepoints segfault without it;
3. ``import juliacall`` under ``socket.setdefaulttimeout``: juliapkg's downloads have no
   timeout of their own, and a stalled network would hang the import forever;
4. ``using PycdeqBridge`` in a private module. The first start resolves, installs and
   precompiles the Julia packages (minutes); later starts take seconds.

Success and failure are both cached: a failed start is not retried in the same process.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from . import _detect
from .errors import HOW_TO_FIX, JuliaNotAvailableError

TIMEOUT_VARIABLE = "PYCDEQ_JULIA_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
CUDA_PACKAGES = {  # added to juliacall's project on first GPU use, never in the base set
    "CUDA": ("052768ef-5323-5732-b1bb-66c8b64840ba", "5"),
    "LuxCUDA": ("d0bbae9a-e099-4d5b-a835-1c6931763bda", "0.3"),
}

_LOCK = threading.RLock()
_STATE: dict = {"bridge": None, "main": None, "error": None, "cuda": False}


def started() -> bool:
    return _STATE["bridge"] is not None


def failure() -> JuliaNotAvailableError | None:
    return _STATE["error"]


def download_timeout() -> float:
    raw = os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_VARIABLE} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{TIMEOUT_VARIABLE} must be > 0, got {raw!r}")
    return value


def bridge() -> Any:
    """The Julia module ``PycdeqBridge`` (a juliacall module handle), starting Julia once."""
    with _LOCK:
        if _STATE["bridge"] is not None:
            return _STATE["bridge"]
        if _STATE["error"] is not None:
            raise _STATE["error"]
        try:
            _STATE["bridge"] = _start()
        except JuliaNotAvailableError as error:
            _STATE["error"] = error
            raise
        return _STATE["bridge"]


def _start() -> Any:
    detection = _detect.detect(refresh=True)
    if not detection.juliacall:
        raise JuliaNotAvailableError("juliacall is not installed. " + _detect.explain(detection))
    if not detection.julia_found and (detection.offline or not detection.auto_install):
        raise JuliaNotAvailableError("Julia backend unavailable: " + _detect.explain(detection))
    os.environ.setdefault("PYTHON_JULIACALL_HANDLE_SIGNALS", "yes")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(download_timeout())
    try:
        import juliacall  # noqa: PLC0415 -- the one place juliacall is imported

        module = juliacall.newmodule("PycdeqPython")
        module.seval("using PycdeqBridge")
        _STATE["main"] = juliacall.Main
        return module.PycdeqBridge
    except Exception as error:  # juliapkg raises bare Exception, URLError, JuliaError, ...
        raise JuliaNotAvailableError(
            f"Starting Julia failed: {type(error).__name__}: {error}. {HOW_TO_FIX}") from error
    finally:
        socket.setdefaulttimeout(previous)


def ensure_cuda() -> None:
    """Add CUDA.jl and LuxCUDA to juliacall's project on first GPU use and load them.

    This downloads the CUDA runtime artifacts once (large; needs network). Offline, or on a
    machine without a working GPU, it raises :class:`JuliaNotAvailableError`.
    """
    bridge()
    with _LOCK:
        if _STATE["cuda"]:
            return
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(download_timeout())
        try:
            import juliapkg  # noqa: PLC0415

            for name, (uuid, version) in CUDA_PACKAGES.items():
                juliapkg.add(name, uuid, version=version)
            juliapkg.resolve()
            _STATE["main"].seval("import LuxCUDA")
            if not bool(_STATE["main"].seval("LuxCUDA.functional()")):
                raise RuntimeError("LuxCUDA.functional() is false: no usable CUDA GPU for Julia")
        except Exception as error:
            raise JuliaNotAvailableError(
                f"The Julia CUDA backend is not available: {type(error).__name__}: {error}") from error
        finally:
            socket.setdefaulttimeout(previous)
        _STATE["cuda"] = True


def cuda_synchronize() -> None:
    """Wait for CUDA.jl's work on the current task's stream (before torch reads its arrays)."""
    if _STATE["cuda"]:
        _STATE["main"].seval("LuxCUDA.CUDA.synchronize()")


def _reset_for_tests() -> None:
    with _LOCK:
        _STATE.update(bridge=None, main=None, error=None, cuda=False)
