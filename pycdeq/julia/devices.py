"""Which translated models the Julia backend can run on which device, decided in Python.

The rule is checked before Julia starts (and before CUDA.jl is downloaded), so that a
combination known to fail deep inside a Julia solve is refused at once with a typed error.

NLsolve's Anderson (``NLsolveJL(method = :anderson)``, pycdeq's ``Anderson``) keeps the QR
factors of its least-squares problem in host ``Matrix``es (``AndersonCache`` in NLsolve 4.5
``src/solvers/anderson.jl``); ``qradd!`` (``src/nlsolve/utils.jl``) then mixes them with the
state at the first acceleration step, which fails for a GPU array. Damped Picard (pycdeq's
``FixedPoint``, the same solver with ``m = 0``) allocates none of these and only broadcasts.
"""

from __future__ import annotations

from typing import Dict

import torch

from .errors import UnsupportedDeviceError
from .translate import JULIA_SOLVERS, ModelSpec

GPU_UNSUPPORTED: Dict[str, str] = {
    "anderson": "NLsolve's Anderson keeps its QR factors in host matrices (NLsolve 4.5, "
                "src/solvers/anderson.jl) and fails at its first acceleration step on a GPU array",
}
ALTERNATIVES = "use Broyden, FixedPoint or an ODE method on the GPU, or run Anderson on the CPU"


def check_device(spec: ModelSpec, device) -> torch.device:
    """``device`` as a ``torch.device`` when ``spec`` can run there; otherwise raise
    :class:`~pycdeq.julia.errors.UnsupportedDeviceError` (or ``ValueError`` for a device
    type the backend has no path to)."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"spec must be a ModelSpec, got {type(spec).__name__}")
    try:
        target = torch.device(device)
    except (TypeError, RuntimeError) as error:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}") from error
    if target.type not in ("cpu", "cuda"):
        raise ValueError(f"the Julia backend runs on cpu or cuda, got {target}")
    reason = GPU_UNSUPPORTED.get(spec.solver.name)
    if target.type == "cuda" and reason is not None:
        raise UnsupportedDeviceError(
            f"solver {spec.solver.name!r} ({JULIA_SOLVERS[spec.solver.name]}) cannot run on {target} "
            f"in the Julia backend: {reason}; "
            f"{ALTERNATIVES}")
    return target
