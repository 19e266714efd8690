"""The Julia backend's exceptions (stdlib only: importing this starts nothing)."""

from __future__ import annotations

FIX_JULIA = (
    "To use the Julia backend, install Julia >= 1.10 (1.10.3 or newer; e.g. with juliaup, "
    "https://julialang.org/downloads) and put `julia` on PATH, or set PYTHON_JULIAPKG_EXE to "
    "its executable. The first start installs and precompiles the Julia packages (several "
    "minutes, needs network once).")
FIX_JULIACALL = "Install juliacall with `pip install 'pycdeq[julia]'`."
HOW_TO_FIX = f"{FIX_JULIA} {FIX_JULIACALL}"


class JuliaNotAvailableError(RuntimeError):
    """Julia, juliacall or the Julia packages needed by the backend are not available.

    The message says what was found, why it cannot be used and how to fix it.
    """


class TranslationError(ValueError):
    """A pycdeq model or option has no faithful counterpart in the Julia backend."""


class UnsupportedDeviceError(TranslationError):
    """The model translates, but its Julia counterpart cannot run on the requested device.

    Raised before Julia starts (:mod:`pycdeq.julia.devices`), naming the solver, the device
    and what to use instead.
    """
