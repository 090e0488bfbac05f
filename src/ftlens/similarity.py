"""Similarity of paired representations: CKA, minibatch CKA, subspace similarity, Procrustes.

Every function compares two representations of the *same* ``n`` inputs: ``a`` of shape
``(n, d_a)`` and ``b`` of shape ``(n, d_b)`` (row ``i`` of both belongs to input ``i``).
Inputs may be torch tensors or numpy arrays; a 1-D input is one feature per sample and an
input with more than two dimensions is flattened per sample (``(n, C, H, W) -> (n, C*H*W)``),
nothing is averaged away. All arithmetic is float64, on the device of ``a`` (CPU for devices
without float64), and the results are Python floats / pandas objects.

What the numbers mean
---------------------
- **CKA** (Kornblith et al. 2019) is a *similarity*: 1 for identical representations (and for
  representations that differ by an orthogonal map, an isotropic scaling or a translation), near
  0 for unrelated ones. It is symmetric and it is *not* invariant to general invertible linear
  maps.
- **Biased** CKA (the default, as in the paper and the STIR code) uses
  ``HSIC_0(K, L) = tr(K H L H) / (n-1)^2`` with ``H = I - 11^T/n``. With many more features
  than samples it is strongly inflated: two independent random representations can score
  0.8 or more.
- **Debiased** CKA (``debiased=True``) uses the unbiased ``HSIC_1`` of Song et al. (2012), with
  ``K~``, ``L~`` the Grams with zeroed diagonal::

      HSIC_1 = [tr(K~ L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))

  It needs ``n >= 4``; it is near 0 for independent representations and can be slightly
  negative. Computed as the Frobenius inner product of U-centred Grams (Szekely & Rizzo),
  which equals the formula above.
- :class:`MinibatchCKA` (Nguyen et al. 2021) averages ``HSIC_1`` over minibatches, separately
  for the numerator and each denominator term, and takes the ratio at the end.
- :func:`subspace_similarity` (Ramasesh et al.) is a *similarity* in ``[0, 1]``: the overlap
  ``||U_a^T U_b||_F^2 / k`` of the top-``k`` principal subspaces.
- :func:`procrustes_distance` is a *distance*: ``min_Q ||A - B Q||_F^2`` over orthogonal ``Q``
  after centring each representation and scaling it to unit Frobenius norm; in ``[0, 2]``,
  0 for identical representations (up to rotation, scale and translation).

Cost
----
Linear CKA picks the cheaper of two exact routes (``method="auto"``): the Gram route
(``n x n`` Gram matrices, for features >> samples, e.g. 500 x 38,400) or the feature route
(``d_a x d_b`` cross-covariance ``||A_c^T B_c||_F^2``, for samples >> features, e.g.
100,000 x 64; no ``n x n`` matrix is ever formed). :func:`cka_matrix` prepares each layer
once (``L_a + L_b`` centred Grams, not ``L_a * L_b``) and gets every numerator from one
matrix product.

Degenerate input (documented behaviour)
---------------------------------------
- A constant representation (all rows equal, so its HSIC with itself is 0) makes CKA 0/0: the
  result is ``NaN`` and a :class:`DegenerateRepresentationWarning` names the argument or layer.
  Never a silent 0 or 1. The same holds for subspace similarity and Procrustes distance (and
  for subspace similarity when the centred data has rank below ``k``).
- ``debiased=True`` (and :class:`MinibatchCKA`, per batch) with fewer than 4 samples raises
  ``ValueError``.
- NaN or inf in an input raises :class:`ftlens.errors.NumericalError` naming the argument.
- A different number of rows in ``a`` and ``b`` (or across the layers of a dict) raises
  ``ValueError``.
- RBF CKA with a median pairwise distance of 0 (at least half of the sample pairs identical,
  but not all) raises ``ValueError``: the bandwidth would be 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ftlens.errors import ConfigError, DegenerateRepresentationWarning, NumericalError

__all__ = [
    "DegenerateRepresentationWarning",
    "gram_linear",
    "gram_rbf",
    "center_gram",
    "hsic",
    "cka_from_grams",
    "linear_cka",
    "rbf_cka",
    "cka_matrix",
    "cka_per_layer",
    "MinibatchCKA",
    "subspace_similarity",
    "procrustes_distance",
]

_DTYPE = torch.float64
# A representation whose centred Frobenius norm is below this fraction of its raw norm is
# constant up to float64 rounding of the mean (real float32 data is >= ~1e-7 above it).
_CONSTANT_RTOL = 1e-10
# Singular values below this fraction of the largest are treated as zero (rank deficiency).
_RANK_RTOL = 1e-10
_KERNELS = ("linear", "rbf")
_METHODS = ("auto", "gram", "features")


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------


def _shape(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else tuple(np.shape(x))


def _rows(x: Any, name: str) -> int:
    shape = _shape(x)
    if len(shape) == 0:
        raise ConfigError(f"{name} is a scalar; expected a representation of shape (n, features).")
    return int(shape[0])


def _width(x: Any) -> int:
    shape = _shape(x)
    return int(math.prod(shape[1:])) if len(shape) > 1 else 1


def _as_matrix(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """``x`` as a finite float64 ``(n, features)`` tensor (1-D: one feature; >2-D: flattened)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        ):
            raise TypeError(f"{name} must be a numeric tensor or array, got dtype {arr.dtype}.")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise TypeError(f"{name} is complex; similarity needs real-valued representations.")
    if t.ndim == 0:
        raise ConfigError(f"{name} is a scalar; expected a representation of shape (n, features).")
    if t.ndim == 1:
        t = t.unsqueeze(1)
    elif t.ndim > 2:
        t = t.reshape(t.shape[0], -1)
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ConfigError(f"{name} is empty (shape {tuple(t.shape)}); expected (n, features).")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise NumericalError(
            f"{name} contains {bad} NaN/inf value(s) out of {t.numel()}; similarity needs finite "
            "representations. Check the model or checkpoint that produced them (a diverged "
            "finetuning run gives NaN activations)."
        )
    if device is None:
        device = t.device if t.device.type in ("cpu", "cuda") else torch.device("cpu")
    return t.to(device=device, dtype=_DTYPE)


def _check_same_rows(n_a: int, n_b: int, name_a: str = "a", name_b: str = "b") -> None:
    if n_a != n_b:
        raise ConfigError(
            f"{name_a} has {n_a} rows and {name_b} has {n_b}: CKA compares representations of "
            "the same inputs, row by row, so both need the same number of samples."
        )


def _check_debiased_n(n: int, what: str = "debiased CKA") -> None:
    if n < 4:
        raise ConfigError(
            f"{what} needs at least 4 samples (the unbiased HSIC divides by n(n-3)); got n={n}. "
            "Use more samples or debiased=False."
        )


def _check_kernel(kernel: str, sigma: float) -> None:
    if kernel not in _KERNELS:
        raise ConfigError(f"kernel must be one of {_KERNELS}, got {kernel!r}.")
    if kernel == "rbf" and not (isinstance(sigma, (int, float)) and sigma > 0):
        raise ConfigError(f"sigma must be a positive number, got {sigma!r}.")


def _centre(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Column-centred copy of ``x`` and whether ``x`` is constant (then the copy is exactly 0)."""
    xc = x - x.mean(dim=0, keepdim=True)
    raw = float(torch.linalg.vector_norm(x))
    constant = float(torch.linalg.vector_norm(xc)) <= _CONSTANT_RTOL * raw
    if constant:
        xc.zero_()
    return xc, constant


def _warn_degenerate(names: Sequence[str], what: str = "CKA", stacklevel: int = 4) -> None:
    listed = ", ".join(names)
    warnings.warn(
        f"{what} is undefined for {listed}: the representation is constant over the samples "
        "(its HSIC with itself is 0), so the result is NaN. A constant layer carries no "
        "information about the inputs; check the layer and the inputs.",
        DegenerateRepresentationWarning,
        stacklevel=stacklevel,
    )


# ----------------------------------------------------------------------------------------------
# Gram-level building blocks
# ----------------------------------------------------------------------------------------------


def _check_gram(k: Any, name: str) -> torch.Tensor:
    if isinstance(k, torch.Tensor):
        t = k.detach()
    else:
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(k, dtype=np.float64)))
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ConfigError(f"{name} must be a square (n, n) Gram matrix, got shape {tuple(t.shape)}.")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise NumericalError(f"{name} contains NaN/inf; a Gram matrix must be finite.")
    t = t.to(_DTYPE)
    scale = float(t.abs().max()) if t.numel() else 0.0
    if not torch.allclose(t, t.T, rtol=1e-8, atol=1e-10 * max(scale, 1e-300)):
        raise ConfigError(f"{name} is not symmetric; pass a Gram (kernel) matrix K with K = K^T.")
    return t


def _centre_gram(k: torch.Tensor, unbiased: bool) -> torch.Tensor:
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


def _hsic_norm(n: int, debiased: bool) -> float:
    return float(n * (n - 3)) if debiased else float((n - 1) ** 2)


def gram_linear(x: Any) -> torch.Tensor:
    """Linear-kernel Gram matrix ``K = X X^T`` of ``x`` (n, d) -> float64 tensor (n, n).

    Not centred: pass it to :func:`center_gram` / :func:`hsic` / :func:`cka_from_grams`.
    """
    m = _as_matrix(x, "x")
    return m @ m.T


def _rbf_from_centred(xc: torch.Tensor, sigma: float, name: str) -> torch.Tensor:
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
    _check_kernel("rbf", sigma)
    xc, constant = _centre(_as_matrix(x, "x"))
    if constant:
        raise ConfigError(
            "x is constant: every pairwise distance is 0, the RBF bandwidth is undefined."
        )
    return _rbf_from_centred(xc, sigma, "x")


def center_gram(k: Any, unbiased: bool = False) -> torch.Tensor:
    """Centre a Gram matrix (n, n) -> float64 tensor (n, n).

    ``unbiased=False``: ``H K H`` with ``H = I - 11^T/n``; then ``<HKH, HLH>/(n-1)^2`` is the
    biased HSIC. ``unbiased=True``: U-centring of ``K`` with zeroed diagonal (Szekely & Rizzo);
    then ``<U(K), U(L)>/(n(n-3))`` is the unbiased HSIC_1 of Song et al. (needs n >= 4).
    """
    t = _check_gram(k, "k")
    if unbiased:
        _check_debiased_n(t.shape[0], "unbiased centring")
    return _centre_gram(t, unbiased)


def hsic(k: Any, l: Any, debiased: bool = False) -> float:  # noqa: E741
    """HSIC between two (uncentred) Gram matrices (n, n) of the same n samples.

    ``debiased=False``: ``tr(K H L H) / (n-1)^2`` (biased). ``debiased=True``: the unbiased
    ``HSIC_1`` of Song et al. 2012 (needs n >= 4). A dependence measure, not normalised.
    """
    kt, lt = _check_gram(k, "k"), _check_gram(l, "l")
    _check_same_rows(kt.shape[0], lt.shape[0], "k", "l")
    n = kt.shape[0]
    if debiased:
        _check_debiased_n(n, "debiased HSIC")
    kc, lc = _centre_gram(kt, debiased), _centre_gram(lt, debiased)
    return float((kc * lc).sum() / _hsic_norm(n, debiased))


def cka_from_grams(k: Any, l: Any, debiased: bool = False,  # noqa: E741
                   names: tuple[str, str] = ("the first representation", "the second representation")) -> float:
    """CKA from two (uncentred) Gram matrices (n, n): ``HSIC(K,L)/sqrt(HSIC(K,K) HSIC(L,L))``.

    A similarity (1 = same up to the kernel's invariances). Biased or debiased HSIC as in
    :func:`hsic`. NaN with a :class:`DegenerateRepresentationWarning` (naming ``names``) if a
    self term is 0.
    """
    kt, lt = _check_gram(k, "k"), _check_gram(l, "l")
    _check_same_rows(kt.shape[0], lt.shape[0], "k", "l")
    if debiased:
        _check_debiased_n(kt.shape[0])
    kc, lc = _centre_gram(kt, debiased), _centre_gram(lt, debiased)
    cross = (kc * lc).sum().reshape(1, 1)
    out = _cka_from_hsic(
        cross, (kc * kc).sum().reshape(1), (lc * lc).sum().reshape(1), [names[0]], [names[1]]
    )
    return float(out[0, 0])


# ----------------------------------------------------------------------------------------------
# shared engine: prepare each representation once, then all pairwise HSIC values
# ----------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    names: list[str]
    n: int
    route: str  # "gram": centred Grams; "features": centred features (linear kernel only)
    debiased: bool
    grams: torch.Tensor | None  # (L, n*n) centred (H or U) Grams, flattened
    feats: list[torch.Tensor] | None  # centred features (n, d_l)
    diags: torch.Tensor | None  # (L, n) squared row norms of the centred features
    self_hsic: torch.Tensor  # (L,)
    constant: list[bool]


def _hsic_from_stats(
    t: torch.Tensor, s: torch.Tensor, ksum: torch.Tensor, lsum: torch.Tensor, n: int, debiased: bool
) -> torch.Tensor:
    """HSIC of linear kernels of *centred* features from ``t = tr(KL)``, ``s = diag(K).diag(L)``,
    ``ksum = tr(K)``, ``lsum = tr(L)`` (centred features: ``K~1 = -diag(K)``, ``1'K~1 = -tr K``)."""
    if not debiased:
        return t / ((n - 1) ** 2)
    return (t - s + ksum * lsum / ((n - 1) * (n - 2)) - 2.0 * s / (n - 2)) / (n * (n - 3))


def _choose_route(
    n: int, widths_a: Sequence[int], widths_b: Sequence[int], kernel: str, method: str
) -> str:
    if method not in _METHODS:
        raise ConfigError(f"method must be one of {_METHODS}, got {method!r}.")
    if kernel != "linear":
        if method == "features":
            raise ConfigError("method='features' exists only for the linear kernel.")
        return "gram"
    if method != "auto":
        return method
    widths = list(widths_a) + list(widths_b)
    gram_cost = n * n * (sum(widths) + len(widths_a) * len(widths_b))
    feat_cost = n * sum(widths_a) * sum(widths_b) + n * sum(min(d, n) * d for d in widths)
    return "features" if feat_cost < gram_cost else "gram"


def _prepare(
    reps: Sequence[tuple[str, Any]],
    n: int,
    route: str,
    kernel: str,
    sigma: float,
    debiased: bool,
    device: torch.device | None,
) -> _Prepared:
    """Convert, centre and (gram route) build the centred Gram of each representation, one at a
    time so that only one float64 copy of the features is alive in the gram route."""
    names = [name for name, _ in reps]
    count = len(reps)
    constant: list[bool] = []
    grams = feats = diags = None
    if route == "gram":
        grams = torch.empty((count, n * n), dtype=_DTYPE, device=device)
    else:
        feats, diags = [], torch.empty((count, n), dtype=_DTYPE, device=device)
    self_terms = torch.empty(count, dtype=_DTYPE, device=device)
    for i, (name, raw) in enumerate(reps):
        x = _as_matrix(raw, name, device)
        xc, is_const = _centre(x)
        del x
        constant.append(is_const)
        if route == "gram":
            if is_const:
                g = torch.zeros((n, n), dtype=_DTYPE, device=xc.device)
            else:
                k = xc @ xc.T if kernel == "linear" else _rbf_from_centred(xc, sigma, name)
                g = _centre_gram(k, debiased)
                del k
            grams[i] = g.reshape(-1)
            self_terms[i] = (g * g).sum() / _hsic_norm(n, debiased)
        else:
            diag = (xc * xc).sum(dim=1)
            small = xc.T @ xc if xc.shape[1] <= n else xc @ xc.T
            t = (small * small).sum()
            ksum = diag.sum()
            self_terms[i] = _hsic_from_stats(t, diag @ diag, ksum, ksum, n, debiased)
            feats.append(xc)
            diags[i] = diag
        del xc
    return _Prepared(names, n, route, debiased, grams, feats, diags, self_terms, constant)


def _cross_hsic(pa: _Prepared, pb: _Prepared) -> torch.Tensor:
    """(L_a, L_b) HSIC between every prepared representation of ``pa`` and of ``pb``."""
    n, debiased = pa.n, pa.debiased
    if pa.route == "gram":
        return (pa.grams @ pb.grams.T) / _hsic_norm(n, debiased)
    t = torch.empty((len(pa.names), len(pb.names)), dtype=_DTYPE, device=pa.diags.device)
    for i, xa in enumerate(pa.feats):
        for j, xb in enumerate(pb.feats):
            t[i, j] = (xa.T @ xb).square().sum()
    s = pa.diags @ pb.diags.T
    ksum = pa.diags.sum(dim=1)[:, None]
    lsum = pb.diags.sum(dim=1)[None, :]
    return _hsic_from_stats(t, s, ksum, lsum, n, debiased)


def _cka_from_hsic(
    cross: torch.Tensor,
    self_a: torch.Tensor,
    self_b: torch.Tensor,
    names_a: Sequence[str],
    names_b: Sequence[str],
) -> torch.Tensor:
    """CKA = cross / sqrt(self_a self_b); NaN (and one warning) where a self term is not > 0."""
    bad_a, bad_b = ~(self_a > 0), ~(self_b > 0)
    denom = self_a.clamp_min(0).sqrt()[:, None] * self_b.clamp_min(0).sqrt()[None, :]
    out = cross / torch.where(denom > 0, denom, torch.ones_like(denom))
    out[bad_a, :] = float("nan")
    out[:, bad_b] = float("nan")
    if bool(bad_a.any()) or bool(bad_b.any()):
        listed = [names_a[i] for i in torch.nonzero(bad_a).flatten().tolist()]
        listed += [
            names_b[j] for j in torch.nonzero(bad_b).flatten().tolist() if names_b[j] not in listed
        ]
        _warn_degenerate(listed)
    return out


def _as_items(reps: Any, what: str) -> list[tuple[str, Any]]:
    if not isinstance(reps, Mapping):
        raise TypeError(
            f"{what} must be a dict {{layer name: representation}}, got {type(reps).__name__}."
        )
    if len(reps) == 0:
        raise ConfigError(f"{what} is empty; pass at least one layer.")
    return [(f"{what}[{name!r}]", value) for name, value in reps.items()]


def _common_rows(items: Sequence[tuple[str, Any]]) -> int:
    n = _rows(items[0][1], items[0][0])
    for name, value in items[1:]:
        _check_same_rows(n, _rows(value, name), items[0][0], name)
    return n


def _device_of(x: Any) -> torch.device | None:
    if isinstance(x, torch.Tensor) and x.device.type == "cuda":
        return x.device
    return torch.device("cpu")


def _pairwise(
    items_a: list[tuple[str, Any]],
    items_b: list[tuple[str, Any]] | None,
    kernel: str,
    sigma: float,
    debiased: bool,
    method: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cross (L_a, L_b), self_a (L_a,), self_b (L_b,)) HSIC; ``items_b=None``: a against itself."""
    _check_kernel(kernel, sigma)
    n = _common_rows(items_a + (items_b or []))
    if n < 2:
        raise ConfigError(f"CKA needs at least 2 samples, got n={n}.")
    if debiased:
        _check_debiased_n(n)
    widths_a = [_width(v) for _, v in items_a]
    widths_b = widths_a if items_b is None else [_width(v) for _, v in items_b]
    route = _choose_route(n, widths_a, widths_b, kernel, method)
    device = _device_of(items_a[0][1])
    pa = _prepare(items_a, n, route, kernel, sigma, debiased, device)
    pb = pa if items_b is None else _prepare(items_b, n, route, kernel, sigma, debiased, device)
    return _cross_hsic(pa, pb), pa.self_hsic, pb.self_hsic


# ----------------------------------------------------------------------------------------------
# public CKA API
# ----------------------------------------------------------------------------------------------


def linear_cka(a: Any, b: Any, debiased: bool = False, *, method: str = "auto") -> float:
    """Linear CKA between paired representations ``a`` (n, d_a) and ``b`` (n, d_b).

    A similarity in [0, 1] (debiased: about [-small, 1]); 1 for ``b = s a Q + c`` with ``Q``
    orthogonal. ``debiased=False`` uses the biased HSIC ``tr(KHLH)/(n-1)^2``, ``True`` the
    unbiased HSIC_1 (n >= 4). ``method``: ``"auto"`` (cheaper route by shape), ``"gram"``
    (``n x n`` Grams) or ``"features"`` (``d_a x d_b`` cross-covariance); all exact.
    NaN plus a :class:`DegenerateRepresentationWarning` if either side is constant.
    """
    _check_same_rows(_rows(a, "a"), _rows(b, "b"))
    cross, sa, sb = _pairwise([("a", a)], [("b", b)], "linear", 0.8, debiased, method)
    return float(_cka_from_hsic(cross, sa, sb, ["a"], ["b"])[0, 0])


def rbf_cka(a: Any, b: Any, sigma: float = 0.8, debiased: bool = False) -> float:
    """RBF-kernel CKA between ``a`` (n, d_a) and ``b`` (n, d_b); a similarity, 1 for identical.

    Gaussian kernel of bandwidth ``sigma * median pairwise distance`` (each side its own
    median; see :func:`gram_rbf`). Biased or debiased HSIC as in :func:`linear_cka`.
    """
    _check_same_rows(_rows(a, "a"), _rows(b, "b"))
    cross, sa, sb = _pairwise([("a", a)], [("b", b)], "rbf", sigma, debiased, "gram")
    return float(_cka_from_hsic(cross, sa, sb, ["a"], ["b"])[0, 0])


def _describe(obj: pd.DataFrame | pd.Series, kernel: str, debiased: bool, **extra: Any) -> None:
    obj.attrs.update({"kernel": kernel, "estimator": "debiased" if debiased else "biased", **extra})


def cka_matrix(
    reps_a: Mapping[str, Any],
    reps_b: Mapping[str, Any] | None = None,
    debiased: bool = False,
    kernel: str = "linear",
    *,
    sigma: float = 0.8,
    method: str = "auto",
) -> pd.DataFrame:
    """CKA between every layer of ``reps_a`` and every layer of ``reps_b``.

    ``reps_a``/``reps_b``: ``{layer: (n, ...) representation}``, same ``n`` everywhere.
    ``reps_b=None`` compares ``reps_a`` with itself. Returns a DataFrame (index: layers of a,
    columns: layers of b) of CKA similarities; ``.attrs`` records kernel and estimator.
    Each layer is converted, centred and turned into a centred Gram once (``L_a + L_b``
    Grams; the linear ``"features"`` route keeps centred features instead when samples >>
    features), and all numerators come from one matrix product. Memory for the Gram route:
    ``(L_a + L_b) * n^2 * 8`` bytes. Constant layers give NaN rows/columns and one warning.
    """
    if reps_b is reps_a:
        reps_b = None  # same dict: prepare its layers once
    items_a = _as_items(reps_a, "reps_a")
    items_b = None if reps_b is None else _as_items(reps_b, "reps_b")
    cross, sa, sb = _pairwise(items_a, items_b, kernel, sigma, debiased, method)
    names_a = list(reps_a.keys())
    names_b = names_a if reps_b is None else list(reps_b.keys())
    values = _cka_from_hsic(
        cross, sa, sb, [n for n, _ in items_a], [n for n, _ in (items_b or items_a)]
    )
    df = pd.DataFrame(
        values.cpu().numpy(),
        index=pd.Index(names_a, name="layer_a"),
        columns=pd.Index(names_b, name="layer_b"),
    )
    _describe(df, kernel, debiased)
    return df


def cka_per_layer(
    reps_a: Mapping[str, Any],
    reps_b: Mapping[str, Any],
    debiased: bool = False,
    kernel: str = "linear",
    *,
    sigma: float = 0.8,
    layers: Sequence[str] | None = None,
    method: str = "auto",
) -> pd.Series:
    """CKA of each layer of ``reps_a`` with the layer of the same name in ``reps_b``.

    The diagonal of :func:`cka_matrix` at the cost of ``L`` comparisons. ``layers`` picks
    names (default: all of ``reps_a``, which must then have the same names as ``reps_b``).
    Returns a Series indexed by layer (in the order of ``layers``/``reps_a``).
    """
    from ftlens.errors import LayerError

    if layers is None:
        missing_b = [k for k in reps_a if k not in reps_b]
        missing_a = [k for k in reps_b if k not in reps_a]
        if missing_a or missing_b:
            raise LayerError(
                f"cka_per_layer pairs layers by name, but layers {missing_b} are missing from "
                f"reps_b and {missing_a} from reps_a. Pass layers=[...] to compare a subset, "
                "or use cka_matrix for different names."
            )
        layers = list(reps_a.keys())
    else:
        layers = list(layers)
        absent = [k for k in layers if k not in reps_a or k not in reps_b]
        if absent:
            raise LayerError(f"layers {absent} are not in both reps_a and reps_b.")
    values = []
    for name in layers:
        ia, ib = [(f"reps_a[{name!r}]", reps_a[name])], [(f"reps_b[{name!r}]", reps_b[name])]
        cross, sa, sb = _pairwise(ia, ib, kernel, sigma, debiased, method)
        values.append(float(_cka_from_hsic(cross, sa, sb, [ia[0][0]], [ib[0][0]])[0, 0]))
    series = pd.Series(values, index=pd.Index(layers, name="layer"), name="cka", dtype=float)
    _describe(series, kernel, debiased)
    return series


class MinibatchCKA:
    """Minibatch CKA (Nguyen et al. 2021): unbiased HSIC_1 averaged over minibatches.

    For each minibatch, :meth:`update` computes ``HSIC_1`` for every (layer of a, layer of b)
    pair and for each layer with itself, and adds them to running sums (an ``L_a x L_b``
    accumulator plus ``L_a`` and ``L_b`` self terms). :meth:`compute` divides each sum by the
    number of batches (every batch weighs the same) and returns
    ``mean HSIC_1(K, L) / sqrt(mean HSIC_1(K, K) * mean HSIC_1(L, L))``. Each batch needs at
    least 4 samples; the same images must be fed to both sides. This estimates the same
    population CKA as debiased :func:`linear_cka` and, for a single batch, equals it.

    ``update(a, b)`` with tensors (n, ...) -> ``compute()`` returns a float; with dicts
    ``{layer: tensor}`` -> a DataFrame (index: layers of a, columns: layers of b).
    ``b=None`` compares ``a`` with itself. RBF: each batch uses its own median bandwidth.
    """

    def __init__(self, kernel: str = "linear", *, sigma: float = 0.8, method: str = "auto") -> None:
        _check_kernel(kernel, sigma)
        self.kernel, self.sigma, self.method = kernel, sigma, method
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._mode: str | None = None
        self._names_a: list[str] | None = None
        self._names_b: list[str] | None = None
        self._cross: torch.Tensor | None = None
        self._self_a: torch.Tensor | None = None
        self._self_b: torch.Tensor | None = None
        self.n_batches = 0
        self.n_samples = 0

    def update(self, reps_a: Any, reps_b: Any = None) -> None:
        """Add one minibatch: tensors (n, ...) or dicts ``{layer: (n, ...)}`` of the same n inputs."""
        mode = "dict" if isinstance(reps_a, Mapping) else "tensor"
        if reps_b is not None and isinstance(reps_b, Mapping) != (mode == "dict"):
            raise TypeError("reps_a and reps_b must both be dicts or both be tensors.")
        if self._mode is not None and mode != self._mode:
            raise TypeError(f"this accumulator was fed {self._mode}s before; got a {mode} now.")
        if mode == "dict":
            items_a = _as_items(reps_a, "reps_a")
            items_b = None if reps_b is None else _as_items(reps_b, "reps_b")
            names_a = list(reps_a.keys())
            names_b = names_a if reps_b is None else list(reps_b.keys())
        else:
            items_a = [("a", reps_a)]
            items_b = None if reps_b is None else [("b", reps_b)]
            names_a, names_b = ["a"], ["b"] if reps_b is not None else ["a"]
        if self._names_a is not None and (names_a != self._names_a or names_b != self._names_b):
            raise ConfigError(
                f"layers changed between minibatches: first {self._names_a} x {self._names_b}, "
                f"now {names_a} x {names_b}."
            )
        n = _common_rows(items_a + (items_b or []))
        _check_debiased_n(n, "each minibatch of MinibatchCKA")
        cross, sa, sb = _pairwise(items_a, items_b, self.kernel, self.sigma, True, self.method)
        if self._cross is None:
            self._mode, self._names_a, self._names_b = mode, names_a, names_b
            self._cross, self._self_a, self._self_b = cross.clone(), sa.clone(), sb.clone()
        else:
            self._cross += cross.to(self._cross.device)
            self._self_a += sa.to(self._self_a.device)
            self._self_b += sb.to(self._self_b.device)
        self.n_batches += 1
        self.n_samples += n

    def compute(self) -> float | pd.DataFrame:
        """CKA from the averaged HSIC_1 terms: a float (tensor mode) or a DataFrame (dict mode)."""
        if self._cross is None:
            raise RuntimeError("MinibatchCKA.compute() called before any update().")
        k = float(self.n_batches)
        values = _cka_from_hsic(
            self._cross / k, self._self_a / k, self._self_b / k, self._names_a, self._names_b
        )
        if self._mode == "tensor":
            return float(values[0, 0])
        df = pd.DataFrame(
            values.cpu().numpy(),
            index=pd.Index(self._names_a, name="layer_a"),
            columns=pd.Index(self._names_b, name="layer_b"),
        )
        _describe(df, self.kernel, True, minibatch=True, n_batches=self.n_batches)
        return df


# ----------------------------------------------------------------------------------------------
# subspace similarity and Procrustes distance
# ----------------------------------------------------------------------------------------------


def _paired(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    _check_same_rows(_rows(a, "a"), _rows(b, "b"))
    am = _as_matrix(a, "a")
    return am, _as_matrix(b, "b", am.device)


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
    am, bm = _paired(a, b)
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
        xc, constant = _centre(x)
        if constant:
            _warn_degenerate([name], "subspace similarity", stacklevel=3)
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
    am, bm = _paired(a, b)
    factors = []
    for name, x in (("a", am), ("b", bm)):
        xc, constant = _centre(x)
        if constant:
            _warn_degenerate([name], "Procrustes distance", stacklevel=3)
            return float("nan")
        factors.append(_nuclear_factor(xc / torch.linalg.matrix_norm(xc)))
    nuclear = float(torch.linalg.svdvals(factors[0].T @ factors[1]).sum())
    d2 = max(2.0 - 2.0 * nuclear, 0.0)
    return d2 if squared else math.sqrt(d2)
