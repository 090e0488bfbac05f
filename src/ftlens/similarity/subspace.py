"""Subspace similarity (Ramasesh et al.): the overlap of the top-``k`` principal subspaces of two
representations, a similarity in [0, 1]; in feature space (neurons one to one) or sample space.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import numpy as np
import torch

from ftlens.errors import ConfigError, DegenerateRepresentationWarning
from ftlens.similarity.inputs import centre, paired, warn_degenerate
from ftlens.similarity.measure import Measure

__all__ = ["SUBSPACE_FEATURES", "SUBSPACE_SAMPLES", "subspace_similarity"]

# Singular values below this fraction of the largest are treated as zero (rank deficiency).
_RANK_RTOL = 1e-10


def subspace_similarity(a: Any, b: Any, k: int = 10, *, space: str = "features") -> float:
    """Overlap of the top-``k`` principal subspaces of ``a`` (n, d_a) and ``b`` (n, d_b).

    A similarity in [0, 1]: ``||U_a^T U_b||_F^2 / k`` where the columns of ``U_a``, ``U_b``
    are orthonormal bases of the top-``k`` principal subspaces of the column-centred data
    (squared cosines of the principal angles, averaged). 1 = same subspace (any rotation
    within it), 0 = orthogonal subspaces.

    ``space="features"`` (Ramasesh et al.): principal directions in feature space (right
    singular vectors, i.e. PCA components); needs ``d_a == d_b`` and compares neurons one to
    one (e.g. a layer before and after finetuning). ``space="samples"``: principal
    directions in sample space (left singular vectors); works for any widths and is
    invariant to orthogonal maps of the features. ``k`` must be at most ``min(n - 1, d)``.
    Computed by a thin SVD of the centred ``(n, d)`` data (fine for d >> n and n >> d).
    """
    if space not in ("features", "samples"):
        raise ConfigError(f"space must be 'features' or 'samples', got {space!r}.")
    am, bm = paired(a, b)
    n = am.shape[0]
    if space == "features" and am.shape[1] != bm.shape[1]:
        raise ConfigError(
            f"space='features' compares feature directions, so a and b need the same width; got "
            f"{am.shape[1]} and {bm.shape[1]}. Use space='samples' for different widths."
        )
    max_k = min(n - 1, am.shape[1], bm.shape[1])
    if not isinstance(k, (int, np.integer)) or k < 1 or k > max_k:
        raise ConfigError(
            f"k must be an integer in [1, min(n-1, d_a, d_b)] = [1, {max_k}], got {k!r}."
        )
    bases = []
    for name, x in (("a", am), ("b", bm)):
        xc, constant = centre(x)
        if constant:
            warn_degenerate([name], "subspace similarity", stacklevel=3)
            return float("nan")
        u, s, vh = torch.linalg.svd(xc, full_matrices=False)
        if float(s[k - 1]) <= _RANK_RTOL * float(s[0]):
            warnings.warn(
                f"subspace similarity is undefined: the centred {name} has rank below k={k}, so "
                "its top-k principal subspace is not unique; returning NaN. Use a smaller k.",
                DegenerateRepresentationWarning,
                stacklevel=2,
            )
            return float("nan")
        bases.append(vh[:k].T if space == "features" else u[:, :k])
    overlap = float((bases[0].T @ bases[1]).square().sum()) / k
    return min(max(overlap, 0.0), 1.0)


# feature-space PCA compares neurons one to one, and ignores which image is which
SUBSPACE_FEATURES = Measure(
    "subspace_features", subspace_similarity, "similarity",
    {"isotropic_scale", "translation", "sample_shuffle"},
    {"orthogonal", "feature_permutation", "invertible_linear"},
    "subspace similarity (top-10 principal directions in feature space)")
SUBSPACE_SAMPLES = Measure(
    "subspace_samples", partial(subspace_similarity, space="samples"), "similarity",
    {"orthogonal", "isotropic_scale", "translation", "feature_permutation"},
    {"invertible_linear", "sample_shuffle"},
    "subspace similarity (top-10 principal directions in sample space)")
