"""PWCCA (Morcos et al. 2018): the canonical correlations averaged with weights by how much of the
representation each canonical direction accounts for; a similarity in [0, 1].

``PWCCA(a, b) = sum_i alpha_i rho_i / sum_i alpha_i`` with ``rho_i`` the canonical correlations
(:func:`~ftlens.similarity.cca.canonical_correlations`) and ``alpha_i = sum_j |<h_i, b_j>|``: ``h_i``
the unit-norm canonical variate of ``b`` (in sample space) and ``b_j`` the centred neurons (columns)
of ``b``. The weights come from the *second* representation (Morcos et al.'s code weights the side
with fewer neurons, the first on a tie), so PWCCA is not symmetric. It is invariant to isotropic
scaling, translation and neuron order, and not to orthogonal or invertible linear maps of ``b``
(they change the weights) -- the invariances Kornblith et al. (2019, table 1) list for it.
"""

from __future__ import annotations

from typing import Any

from ftlens.similarity.cca import canonical_correlations
from ftlens.similarity.measure import Measure

__all__ = ["PWCCA", "pwcca"]


def pwcca(a: Any, b: Any) -> float:
    """Projection-weighted CCA of ``a`` (n, d_a) and ``b`` (n, d_b), weighted by ``b``'s neurons.
    NaN with a warning for a constant side."""
    result = canonical_correlations(a, b, what="PWCCA")
    if result is None:
        return float("nan")
    alpha = (result.variates_b.T @ result.centred_b).abs().sum(dim=1)
    return float((alpha * result.rho).sum() / alpha.sum())


PWCCA = Measure("pwcca", pwcca, "similarity",
                {"isotropic_scale", "translation", "feature_permutation"},
                {"orthogonal", "invertible_linear", "sample_shuffle"},
                "PWCCA (projection-weighted CCA, weights from the second representation)")
