"""The singular spectrum of a weight change ``ΔW`` and the ranks read from it (pure functions, float64).

A tensor is read as a matrix the way its layer applies it: leading singleton dimensions are
dropped (a ViT's ``pos_embed`` (1, N, D) is (N, D), its ``cls_token`` (1, 1, D) a vector), then ``(out, rest)``: a linear weight is
itself, a convolution (out, in, kh, kw) is (out, in * kh * kw). 0-D and 1-D tensors (biases, norm
scales, a CLS token) have no spectrum.

- :func:`effective_rank` (Roy & Vetterli 2007): ``exp(H(p))`` with ``p_i = s_i / sum(s)`` and
  ``H`` the Shannon entropy (natural log): ``k`` for ``k`` equal non-zero singular values, 1 for a
  rank-one matrix, 0 for the zero matrix.
- :func:`stable_rank`: ``||ΔW||_F^2 / ||ΔW||_2^2 = sum(s^2) / max(s)^2``, in ``[1, rank]``; 0 for
  the zero matrix.
- :func:`numerical_rank`: singular values above ``rtol * max(s)`` (and above 0); ``rtol`` defaults to
  ``max(m, n) * eps`` of the dtype the weights were stored in (as ``numpy.linalg.matrix_rank``), so
  the rounding of float32 weights does not count as rank.
"""

from __future__ import annotations

import math

import torch

__all__ = ["as_matrix", "effective_rank", "numerical_rank", "rank_rtol", "singular_values", "stable_rank"]



def as_matrix(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as a float64 ``(out, rest)`` matrix after dropping leading singleton dims; None for a vector."""
    x = t.detach().to(device="cpu", dtype=torch.float64)
    while x.ndim >= 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim < 2:
        return None
    return x.reshape(x.shape[0], -1)


def singular_values(delta: torch.Tensor) -> torch.Tensor:
    """Singular values of the matrix of ``delta`` (see :func:`as_matrix`), descending, float64 (k,)."""
    m = as_matrix(delta)
    if m is None:
        raise ValueError(f"a tensor of shape {tuple(delta.shape)} has no singular spectrum (fewer than 2 dims)")
    return torch.linalg.svdvals(m)


def effective_rank(s: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank ``exp(-sum p_i log p_i)``, ``p = s / sum(s)``; 0 when ``s`` is all 0."""
    s = s.to(torch.float64).clamp_min(0.0)
    total = float(s.sum())
    if total <= 0.0:
        return 0.0
    p = s[s > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def stable_rank(s: torch.Tensor) -> float:
    """``sum(s^2) / max(s)^2``; 0 when ``s`` is all 0."""
    s = s.to(torch.float64)
    top = float(s.max()) if s.numel() else 0.0
    return float((s * s).sum()) / (top * top) if top > 0.0 else 0.0


def rank_rtol(shape: tuple[int, int], dtype: torch.dtype) -> float:
    """``max(m, n) * eps(dtype)``: the relative tolerance below which a singular value is rounding."""
    return max(shape) * torch.finfo(dtype).eps


def numerical_rank(s: torch.Tensor, rtol: float) -> int:
    """How many singular values exceed ``rtol`` times the largest (0 for the zero matrix)."""
    s = s.to(torch.float64)
    top = float(s.max()) if s.numel() else 0.0
    return int((s > rtol * top).sum()) if top > 0.0 else 0
