"""Mutual k-nearest-neighbour alignment (Huh et al. 2024, "The Platonic Representation Hypothesis"):
the mean share of each input's ``k`` nearest neighbours that both representations agree on.

Each row is scaled to unit L2 norm, neighbours are the ``k`` other inputs of largest cosine
similarity (the input itself excluded), and ``mutual_knn(a, b) = mean_i |N_a(i) & N_b(i)| / k``: a
similarity in [0, 1], 1 when every input has the same neighbours on both sides, about ``k / (n - 1)``
for unrelated ones. Invariant to rotations, isotropic scaling and feature order (cosine similarity
is); not to a translation (no centring, as in the original) or an invertible linear map.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch

from ftlens.errors import ConfigError
from ftlens.similarity.inputs import paired
from ftlens.similarity.measure import Measure

__all__ = ["MUTUAL_KNN", "mutual_knn", "neighbours"]


def neighbours(x: torch.Tensor, k: int) -> torch.Tensor:
    """``(n, n)`` boolean: ``[i, j]`` when input ``j`` is among the ``k`` nearest (cosine) of input ``i != j``."""
    unit = x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    sim = unit @ unit.T
    sim.fill_diagonal_(-torch.inf)
    idx = sim.topk(k, dim=1).indices
    return torch.zeros_like(sim, dtype=torch.bool).scatter_(1, idx, True)


def mutual_knn(a: Any, b: Any, k: int = 10) -> float:
    """Mutual k-NN alignment of ``a`` (n, d_a) and ``b`` (n, d_b); ``k`` in [1, n - 1] (default 10)."""
    am, bm = paired(a, b)
    n = am.shape[0]
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= n - 1:
        raise ConfigError(f"k (neighbours per input) must be an integer in [1, n - 1] = [1, {n - 1}], got {k!r}.")
    shared = (neighbours(am, k) & neighbours(bm, k)).sum(dim=1)
    return float(shared.double().mean() / k)


MUTUAL_KNN = Measure("mutual_knn", partial(mutual_knn, k=10), "similarity",
                     {"orthogonal", "isotropic_scale", "feature_permutation"},
                     {"translation", "invertible_linear", "sample_shuffle"},
                     "mutual k-nearest-neighbour alignment (k = 10, cosine)")
