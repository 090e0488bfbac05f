"""Representational similarity analysis (Kriegeskorte et al. 2008): compare two representations by
their representational dissimilarity matrices (RDMs), the distances between every pair of inputs.

``RSA(a, b) = corr(RDM(a), RDM(b))`` over the ``n (n - 1) / 2`` pairs of inputs (the upper
triangles), with a choice of RDM distance (:data:`DISTANCES`, by :func:`scipy.spatial.distance.pdist`,
float64) and of comparison (:data:`COMPARISONS`: Pearson's r or Spearman's rho); a similarity in
[-1, 1], 1 for identical representations. The invariances follow from the distance: Euclidean
distances do not change under rotations and translations, cosine distances not under rotations,
correlation distances (1 - Pearson r between two inputs' feature vectors) under neither; every
distance scales uniformly with the representation, which neither comparison sees.

Registered: ``rsa_correlation_spearman`` (the classic choice), ``rsa_euclidean_pearson`` and
``rsa_cosine_spearman``; :func:`rsa_measure` builds any other pair for ``register``.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import numpy as np

from ftlens.errors import ConfigError, DegenerateRepresentationWarning
from ftlens.similarity.inputs import paired
from ftlens.similarity.measure import Measure

__all__ = ["COMPARISONS", "DISTANCES", "RSA_CORRELATION_SPEARMAN", "RSA_COSINE_SPEARMAN", "RSA_EUCLIDEAN_PEARSON",
           "rdm", "rsa", "rsa_measure"]

#: RDM distance -> the transformations of one side it is invariant to (besides the ones every RSA has)
DISTANCES: dict[str, set[str]] = {
    "euclidean": {"orthogonal", "translation"},
    "cosine": {"orthogonal"},
    "correlation": set(),
}
COMPARISONS = ("pearson", "spearman")
#: invariances of every RSA: a uniform scale of all distances, and the order of the features
_ALWAYS = {"isotropic_scale", "feature_permutation"}


def rdm(x: Any, distance: str = "correlation") -> np.ndarray:
    """The condensed RDM of ``x`` (n, d): the ``distance`` of every pair ``i < j`` of rows, float64 (n (n-1) / 2,)."""
    if distance not in DISTANCES:
        raise ConfigError(f"distance must be one of {list(DISTANCES)}, got {distance!r}.")
    from scipy.spatial.distance import pdist  # here: importing scipy costs every CKA user 60 MiB

    return pdist(np.asarray(x, dtype=np.float64), metric=distance)


def rsa(a: Any, b: Any, distance: str = "correlation", compare: str = "spearman") -> float:
    """RSA of ``a`` (n, d_a) and ``b`` (n, d_b): Pearson or Spearman correlation of their RDMs.

    NaN with a :class:`DegenerateRepresentationWarning` when an RDM is constant (all inputs at the
    same distance) or undefined (a correlation or cosine distance of a constant or zero input).
    """
    if compare not in COMPARISONS:
        raise ConfigError(f"compare must be one of {list(COMPARISONS)}, got {compare!r}.")
    am, bm = paired(a, b)
    if am.shape[0] < 3:
        raise ConfigError(f"RSA needs at least 3 inputs (2 pairs to correlate), got n={am.shape[0]}.")
    rdms = [rdm(x.cpu().numpy(), distance) for x in (am, bm)]
    for name, r in zip(("a", "b"), rdms, strict=True):
        if not np.isfinite(r).all() or np.ptp(r) == 0:
            warnings.warn(f"RSA is undefined for {name}: its {distance} RDM is constant or has undefined entries "
                          "(a constant representation, or an input with constant or zero features); returning NaN.",
                          DegenerateRepresentationWarning, stacklevel=2)
            return float("nan")
    from scipy import stats

    corr = stats.spearmanr if compare == "spearman" else stats.pearsonr
    return float(corr(rdms[0], rdms[1])[0])


def rsa_measure(distance: str, compare: str) -> Measure:
    """The :class:`Measure` ``rsa_<distance>_<compare>`` with its declared invariances."""
    if distance not in DISTANCES or compare not in COMPARISONS:
        raise ConfigError(f"RSA takes a distance in {list(DISTANCES)} and a comparison in {list(COMPARISONS)}; "
                          f"got {distance!r}, {compare!r}.")
    invariant = _ALWAYS | DISTANCES[distance]
    others = {"orthogonal", "translation", "invertible_linear", "sample_shuffle"} - invariant
    return Measure(f"rsa_{distance}_{compare}", partial(rsa, distance=distance, compare=compare), "similarity",
                   invariant, others, f"RSA ({distance} RDM, {compare.capitalize()} correlation)")


RSA_CORRELATION_SPEARMAN = rsa_measure("correlation", "spearman")
RSA_EUCLIDEAN_PEARSON = rsa_measure("euclidean", "pearson")
RSA_COSINE_SPEARMAN = rsa_measure("cosine", "spearman")
