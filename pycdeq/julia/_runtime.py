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

Packages are resolved only by that start (juliacall asks juliapkg): never once Julia runs,
because ``juliapkg.resolve()`` deletes the environment's Manifest and reinstalls into it
(pyjuliapkg ``src/juliapkg/deps.py``, ``resolve``) under packages already loaded. The GPU
packages are therefore declared before the start when the GPU is asked for first
(:func:`ensure_cuda`).

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
# Declared on first GPU use, never in the base set. CUDA's bound is LuxCUDA's own
# (`CUDA = "5.8, 6"` in LuxDL/Lux.jl lib/LuxCUDA/Project.toml, LuxCUDA 0.3.6): a narrower
# pin would only hold LuxCUDA back.
CUDA_PACKAGES = {
    "CUDA": ("052768ef-5323-5732-b1bb-66c8b64840ba", "5.8, 6"),
    "LuxCUDA": ("d0bbae9a-e099-4d5b-a835-1c6931763bda", "0.3"),
}
LATE_CUDA = (
    "Julia is already running without LuxCUDA in its environment, and packages cannot be added "
    "to a running Julia (resolving rebuilds the environment under the loaded packages). Ask for "
    "the GPU before Julia starts, e.g. JuliaModel.from_torch(model, device=\"cuda\") as the first "
    "use of the backend in a new process; the declaration then stays for later runs.")

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


def _check_startable() -> None:
    """Raise :class:`JuliaNotAvailableError` when detection says a start cannot succeed."""
    detection = _detect.detect(refresh=True)
    if not detection.juliacall:
        raise JuliaNotAvailableError("juliacall is not installed. " + _detect.explain(detection))
    if not detection.julia_found and (detection.offline or not detection.auto_install):
        raise JuliaNotAvailableError("Julia backend unavailable: " + _detect.explain(detection))


def _start() -> Any:
    _check_startable()
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
    """Make CUDA.jl and LuxCUDA available to the Julia session and check the GPU.

    Before Julia starts, the two packages are declared to juliapkg and the start resolves them
    with the rest (the first time this downloads the CUDA runtime: large, needs network).
    Once Julia runs, nothing is resolved: LuxCUDA is loaded if an earlier run installed it,
    otherwise :class:`JuliaNotAvailableError` says to ask for the GPU before the start. Offline
    without the packages, or without a working GPU, it raises the same error.
    """
    with _LOCK:
        if _STATE["cuda"]:
            return
        if _STATE["bridge"] is None and _STATE["error"] is None:
            try:
                _check_startable()
            except JuliaNotAvailableError as error:
                _STATE["error"] = error
                raise
            _declare_cuda_packages()
        bridge()
        main = _STATE["main"]
        try:
            if bool(main.seval('Base.find_package("LuxCUDA") === nothing')):
                raise JuliaNotAvailableError(LATE_CUDA)
            main.seval("import LuxCUDA")
            if not bool(main.seval("LuxCUDA.functional()")):
                raise RuntimeError("LuxCUDA.functional() is false: no usable CUDA GPU for Julia")
        except JuliaNotAvailableError:
            raise
        except Exception as error:  # JuliaError from the import, the RuntimeError above
            raise JuliaNotAvailableError(
                f"The Julia CUDA backend is not available: {type(error).__name__}: {error}") from error
        _STATE["cuda"] = True


def _declare_cuda_packages() -> None:
    """Add CUDA.jl and LuxCUDA to juliapkg's declarations; resolving is left to the start."""
    try:
        import juliapkg  # noqa: PLC0415 -- installed with juliacall, which detection found

        for name, (uuid, version) in CUDA_PACKAGES.items():
            juliapkg.add(name, uuid, version=version)
    except Exception as error:  # ImportError, or juliapkg failing to write its json
        raise JuliaNotAvailableError(
            f"Declaring the Julia CUDA packages failed: {type(error).__name__}: {error}") from error


def cuda_synchronize() -> None:
    """Wait for CUDA.jl's work on the current task's stream (before torch reads its arrays)."""
    if _STATE["cuda"]:
        _STATE["main"].seval("LuxCUDA.CUDA.synchronize()")


def _reset_for_tests() -> None:
    with _LOCK:
        _STATE.update(bridge=None, main=None, error=None, cuda=False)
