"""SVCCA (Raghu et al. 2017): CCA after keeping, on each side, the leading principal directions
that explain 99% of its variance; the mean of the canonical correlations, a similarity in [0, 1].

The SVD step makes it a function of each side's principal subspace: invariant to orthogonal maps,
isotropic scaling, translation and feature order; not to a general invertible linear map, which
changes which directions explain the variance (CCA alone, ``cca``, is invariant to it).
"""

from __future__ import annotations

from typing import Any

from ftlens.similarity.cca import canonical_correlations
from ftlens.similarity.measure import Measure

__all__ = ["SVCCA", "svcca"]


def svcca(a: Any, b: Any, keep: float = 0.99) -> float:
    """SVCCA of ``a`` (n, d_a) and ``b`` (n, d_b): mean canonical correlation of the top principal
    directions of each side explaining a ``keep`` fraction of its variance (``keep=1``: plain CCA).
    NaN with a warning for a constant side."""
    result = canonical_correlations(a, b, keep=keep, what="SVCCA")
    return float("nan") if result is None else float(result.rho.mean())


SVCCA = Measure("svcca", svcca, "similarity",
                {"orthogonal", "isotropic_scale", "translation", "feature_permutation"},
                {"invertible_linear", "sample_shuffle"},
                "SVCCA (99% of the variance kept, mean canonical correlation)")
