"""How far two runs of the same solve may differ when their kernels round differently.

A batch and a sample solved alone, or the same solve on another CPU (AVX2 against AVX-512
reductions, batched against single LAPACK calls), evaluate the same sums in another order.
A length-``n`` dot product differs by at most ``gamma_n ~ n eps`` relative (Higham,
*Accuracy and Stability of Numerical Algorithms*, 2nd ed., section 3.1). Perturbations of
that size at every evaluation, carried through a solve that converges at rate ``q``, move
its result by at most ``gamma ||z|| / (1 - q)``. The bounds below take ``10 gamma_n``: an
emulation that perturbs every ``fn`` output by 4 random ulps (more than any reduction order
changes a 10-term sum) stays under 0.11 of them, 16 ulps under 0.31, for all three
discrete solvers on the problems of ``test_per_sample``.
"""

from __future__ import annotations

import torch


def state_bound(z: torch.Tensor, q: torch.Tensor, terms: int) -> torch.Tensor:
    """Per sample: how far a flat ``(batch, dim)`` result may move under other kernels,
    ``10 terms eps ||z|| / (1 - q)`` for sums of ``terms`` terms and contraction rates ``q``."""
    eps = torch.finfo(z.dtype).eps
    return 10 * terms * eps * torch.linalg.vector_norm(z.detach(), dim=1) / (1 - q)


def assert_same_stop(k_a: int, k_b: int, residuals_a, residuals_b, tol: float, band: float) -> None:
    """Two runs stop at the same iteration unless, at the earlier stop, a residual lies within
    ``band`` (their rounding difference) of the tolerance; ``residuals_*[k]`` is a run's
    residual at iterate ``k``."""
    if k_a == k_b:
        return
    k = min(k_a, k_b)
    near = [abs(float(r[k]) - tol) <= band for r in (residuals_a, residuals_b)]
    assert all(near), (f"stops at {k_a} and {k_b}, but the residuals at iterate {k} "
                       f"({float(residuals_a[k]):.6e}, {float(residuals_b[k]):.6e}) are not within "
                       f"{band:.1e} of the tolerance {tol:.1e}")
