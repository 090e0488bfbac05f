"""Gram matrices (linear; Gaussian with a median bandwidth), their centring and HSIC: float64
``(n, n)`` tensors over the same ``n`` samples."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ftlens.errors import ConfigError, NumericalError
from ftlens.similarity.inputs import (
    DTYPE,
    as_matrix,
    centre,
    check_debiased_n,
    check_kernel,
    check_same_rows,
)


def check_gram(k: Any, name: str) -> torch.Tensor:
    if isinstance(k, torch.Tensor):
        t = k.detach()
    else:
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(k, dtype=np.float64)))
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ConfigError(f"{name} must be a square (n, n) Gram matrix, got shape {tuple(t.shape)}.")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise NumericalError(f"{name} contains NaN/inf; a Gram matrix must be finite.")
    t = t.to(DTYPE)
    scale = float(t.abs().max()) if t.numel() else 0.0
    if not torch.allclose(t, t.T, rtol=1e-8, atol=1e-10 * max(scale, 1e-300)):
        raise ConfigError(f"{name} is not symmetric; pass a Gram (kernel) matrix K with K = K^T.")
    return t


def centred_gram(k: torch.Tensor, unbiased: bool) -> torch.Tensor:
    n = k.shape[0]
    if not unbiased:
        row = k.mean(dim=0, keepdim=True)
        col = k.mean(dim=1, keepdim=True)
        return k - row - col + k.mean()
    kt = k.clone()
    kt.fill_diagonal_(0.0)
    means = kt.sum(dim=0) / (n - 2)
    total = kt.sum() / ((n - 1) * (n - 2))
    ku = kt - means[None, :] - means[:, None] + total
    ku.fill_diagonal_(0.0)
    return ku


def hsic_norm(n: int, debiased: bool) -> float:
    return float(n * (n - 3)) if debiased else float((n - 1) ** 2)


def gram_linear(x: Any) -> torch.Tensor:
    """Linear-kernel Gram matrix ``K = X X^T`` of ``x`` (n, d) -> float64 tensor (n, n).

    Not centred: pass it to :func:`center_gram` / :func:`hsic` / :func:`cka_from_grams`.
    """
    m = as_matrix(x, "x")
    return m @ m.T


def rbf_from_centred(xc: torch.Tensor, sigma: float, name: str) -> torch.Tensor:
    n = xc.shape[0]
    g = xc @ xc.T
    sq = torch.diagonal(g).clone()
    d2 = (sq[:, None] + sq[None, :] - 2.0 * g).clamp_min_(0.0)
    d2.fill_diagonal_(0.0)
    if n < 2:
        raise ConfigError(f"{name}: the RBF bandwidth needs at least 2 samples, got {n}.")
    # median over the distinct pairs i < j = median over all off-diagonal entries (each pair
    # appears twice, which keeps the middle values); the diagonal is set below every distance
    dist = d2.sqrt()
    dist.fill_diagonal_(-1.0)
    flat, half = dist.reshape(-1), n * (n - 1) // 2
    lo = torch.kthvalue(flat, n + half).values
    hi = torch.kthvalue(flat, n + half + 1).values
    del dist, flat
    median = float((lo + hi) / 2)
    if median <= 0.0:
        raise ConfigError(
            f"{name}: the median pairwise distance is 0 (at least half of the sample pairs are "
            "identical), so the RBF bandwidth sigma * median would be 0. Remove duplicate "
            "samples or use the linear kernel."
        )
    bandwidth = sigma * median
    return torch.exp(-d2 / (2.0 * bandwidth**2))


def gram_rbf(x: Any, sigma: float = 0.8) -> torch.Tensor:
    """Gaussian-kernel Gram matrix of ``x`` (n, d) -> float64 tensor (n, n).

    ``K_ij = exp(-||x_i - x_j||^2 / (2 h^2))`` with bandwidth ``h = sigma * median`` of the
    Euclidean distances over the distinct pairs ``i < j`` (even count: mean of the two middle
    values). Not centred.
    """
    check_kernel("rbf", sigma)
    xc, constant = centre(as_matrix(x, "x"))
    if constant:
        raise ConfigError(
            "x is constant: every pairwise distance is 0, the RBF bandwidth is undefined."
        )
    return rbf_from_centred(xc, sigma, "x")


def center_gram(k: Any, unbiased: bool = False) -> torch.Tensor:
    """Centre a Gram matrix (n, n) -> float64 tensor (n, n).

    ``unbiased=False``: ``H K H`` with ``H = I - 11^T/n``; then ``<HKH, HLH>/(n-1)^2`` is the
    biased HSIC. ``unbiased=True``: U-centring of ``K`` with zeroed diagonal (Szekely & Rizzo);
    then ``<U(K), U(L)>/(n(n-3))`` is the unbiased HSIC_1 of Song et al. (needs n >= 4).
    """
    t = check_gram(k, "k")
    if unbiased:
        check_debiased_n(t.shape[0], "unbiased centring")
    return centred_gram(t, unbiased)


def hsic(k: Any, l: Any, debiased: bool = False) -> float:  # noqa: E741
    """HSIC between two (uncentred) Gram matrices (n, n) of the same n samples.

    ``debiased=False``: ``tr(K H L H) / (n-1)^2`` (biased). ``debiased=True``: the unbiased
    ``HSIC_1`` of Song et al. 2012 (needs n >= 4). A dependence measure, not normalised.
    """
    kt, lt = check_gram(k, "k"), check_gram(l, "l")
    check_same_rows(kt.shape[0], lt.shape[0], "k", "l")
    n = kt.shape[0]
    if debiased:
        check_debiased_n(n, "debiased HSIC")
    kc, lc = centred_gram(kt, debiased), centred_gram(lt, debiased)
    return float((kc * lc).sum() / hsic_norm(n, debiased))
