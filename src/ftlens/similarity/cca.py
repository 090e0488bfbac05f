"""Canonical correlation analysis of two representations, and the mean canonical correlation.

The canonical correlations of ``a`` (n, d_a) and ``b`` (n, d_b) are the cosines of the principal
angles between the column spaces of the column-centred data: with ``U_a``, ``U_b`` orthonormal
bases of those spaces (thin SVD, directions with singular value at most ``1e-10`` times the largest
dropped), they are the singular values of ``U_a^T U_b``, ``min(k_a, k_b)`` of them, in [0, 1].
This is the whitened-covariance CCA (``S_aa^-1/2 S_ab S_bb^-1/2``) without forming or inverting a
covariance, so it also holds when a side is rank deficient.

Few samples: two subspaces of the ``(n - 1)``-dimensional centred sample space with
``k_a + k_b > n - 1`` must share ``k_a + k_b - (n - 1)`` directions, whose correlations are 1
whatever the data (with more features than images every correlation is 1); ftlens then warns
(:class:`~ftlens.errors.DegenerateRepresentationWarning`). Use many more images than features, a
pooled token mode, or SVCCA's truncation.

:func:`cca_similarity` (``cca``): the mean canonical correlation (Yanai's ``rho-bar``), invariant
to every invertible linear map of either side. SVCCA and PWCCA (:mod:`~ftlens.similarity.svcca`,
:mod:`~ftlens.similarity.pwcca`) build on :func:`canonical_correlations`.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch

from ftlens.errors import ConfigError, DegenerateRepresentationWarning
from ftlens.similarity.inputs import centre, paired, warn_degenerate
from ftlens.similarity.measure import Measure

__all__ = ["CCA", "CCAResult", "canonical_correlations", "cca_similarity", "principal_basis"]

#: singular values at or below this fraction of the largest are rank deficiency, not a direction
RANK_RTOL = 1e-10


class CCAResult(NamedTuple):
    """``rho`` (m,) canonical correlations, largest first; ``variates_b`` (n, m) the unit-norm canonical
    variates of ``b`` in sample space (paired with ``rho``); ``centred_b`` (n, d_b) the centred ``b``."""

    rho: torch.Tensor
    variates_b: torch.Tensor
    centred_b: torch.Tensor


def principal_basis(xc: torch.Tensor, keep: float | None = None) -> torch.Tensor:
    """Orthonormal basis (n, k) of the column space of the centred ``xc`` (n, d), largest variance first.

    ``keep``: keep the fewest leading directions whose variance (squared singular values) reaches
    this fraction of the total (SVCCA's 0.99); None keeps every direction above the rank tolerance.
    """
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    k = int((s > RANK_RTOL * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    if keep is not None:
        share = torch.cumsum(s * s, 0) / (s * s).sum()
        k = min(k, int((share < keep - 1e-12).sum()) + 1)
    return u[:, :k]


def canonical_correlations(a: Any, b: Any, *, keep: float | None = None, what: str = "CCA") -> CCAResult | None:
    """Canonical correlations of ``a`` (n, d_a) and ``b`` (n, d_b) (see the module docstring).

    ``keep``: SVCCA's variance fraction for the SVD step of both sides (None: no truncation).
    None, with a :class:`DegenerateRepresentationWarning`, when a side is constant.
    """
    if keep is not None and not 0.0 < float(keep) <= 1.0:
        raise ConfigError(f"keep (the variance fraction kept) must be in (0, 1], got {keep!r}.")
    am, bm = paired(a, b)
    n = am.shape[0]
    centred = []
    for name, x in (("a", am), ("b", bm)):
        xc, constant = centre(x)
        if constant:
            warn_degenerate([name], what, stacklevel=4)
            return None
        centred.append(xc)
    ua, ub = principal_basis(centred[0], keep), principal_basis(centred[1], keep)
    forced = ua.shape[1] + ub.shape[1] - (n - 1)
    if forced > 0:
        warnings.warn(
            f"{what}: {forced} of the {min(ua.shape[1], ub.shape[1])} canonical correlations are 1 whatever the "
            f"data: the two sides span {ua.shape[1]} and {ub.shape[1]} directions of the {n - 1}-dimensional "
            "space of centred samples. Use many more images than features (or tokens='mean' or 'cls').",
            DegenerateRepresentationWarning, stacklevel=3)
    p, rho, rt = torch.linalg.svd(ua.T @ ub, full_matrices=False)
    m = min(ua.shape[1], ub.shape[1])
    return CCAResult(rho[:m].clamp(0.0, 1.0), ub @ rt[:m].T, centred[1])


def cca_similarity(a: Any, b: Any) -> float:
    """Mean canonical correlation of ``a`` (n, d_a) and ``b`` (n, d_b): a similarity in [0, 1],
    1 when one side is an invertible linear map of the other (plus a translation)."""
    result = canonical_correlations(a, b, what="mean CCA")
    return float("nan") if result is None else float(result.rho.mean())


CCA = Measure("cca", cca_similarity, "similarity",
              {"orthogonal", "isotropic_scale", "translation", "feature_permutation", "invertible_linear"},
              {"sample_shuffle"}, "mean canonical correlation (CCA)")
