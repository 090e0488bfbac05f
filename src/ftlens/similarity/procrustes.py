"""Orthogonal Procrustes distance (Ding et al. 2021): how far one representation is from the
other after the best rotation, both centred and scaled to unit norm; a distance in [0, 2].
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ftlens.similarity.inputs import centre, paired, warn_degenerate
from ftlens.similarity.measure import Measure

__all__ = ["PROCRUSTES_DISTANCE", "procrustes_distance"]


def _nuclear_factor(x: torch.Tensor) -> torch.Tensor:
    """A matrix ``C`` with ``C C^T = x x^T`` and at most ``min(n, d)`` columns."""
    n, d = x.shape
    if d <= n:
        return x
    evals, evecs = torch.linalg.eigh(x @ x.T)
    return evecs * evals.clamp_min(0.0).sqrt()[None, :]


def procrustes_distance(a: Any, b: Any, *, squared: bool = True) -> float:
    """Orthogonal Procrustes distance between ``a`` (n, d_a) and ``b`` (n, d_b).

    A distance: each side is column-centred and scaled to unit Frobenius norm (``A/||A||_F``),
    the narrower one implicitly zero-padded, then
    ``min_Q ||A - B Q||_F^2 = 2 - 2 ||A^T B||_*`` over orthogonal ``Q`` (``||.||_*``: nuclear
    norm; Ding et al. 2021). In ``[0, 2]``; 0 iff ``b = s a Q + c``; invariant to orthogonal
    maps, isotropic scaling and translation of either side. ``squared=False`` returns the
    square root (a metric). For d >> n the nuclear norm comes from ``n x n`` factors.
    """
    am, bm = paired(a, b)
    factors = []
    for name, x in (("a", am), ("b", bm)):
        xc, constant = centre(x)
        if constant:
            warn_degenerate([name], "Procrustes distance", stacklevel=3)
            return float("nan")
        factors.append(_nuclear_factor(xc / torch.linalg.matrix_norm(xc)))
    nuclear = float(torch.linalg.svdvals(factors[0].T @ factors[1]).sum())
    d2 = max(2.0 - 2.0 * nuclear, 0.0)
    return d2 if squared else math.sqrt(d2)


PROCRUSTES_DISTANCE = Measure(
    "procrustes_distance", procrustes_distance, "distance",
    {"orthogonal", "isotropic_scale", "translation", "feature_permutation"},
    {"invertible_linear", "sample_shuffle"},
    "orthogonal Procrustes distance (squared, unit-norm centred sides)")
