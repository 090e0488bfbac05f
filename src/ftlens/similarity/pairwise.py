"""The CKA engine: prepare each representation once (float64, centred, and in the Gram route its
centred Gram), then every pairwise HSIC from one matrix product, and CKA from the HSIC terms.

Two exact routes for the linear kernel: ``"gram"`` (``n x n`` Grams; features >> samples) and
``"features"`` (``d_a x d_b`` cross-covariances; samples >> features, no ``n x n`` matrix).
Shared by :mod:`ftlens.similarity.cka` and :mod:`ftlens.similarity.minibatch_cka`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ftlens.errors import ConfigError, ConfigTypeError
from ftlens.similarity.gram import centred_gram, hsic_norm, rbf_from_centred
from ftlens.similarity.inputs import (
    DTYPE,
    as_matrix,
    centre,
    check_debiased_n,
    check_kernel,
    check_same_rows,
    rows,
    warn_degenerate,
    width,
)

_METHODS = ("auto", "gram", "features")


@dataclass
class Prepared:
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


def choose_route(
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
) -> Prepared:
    """Convert, centre and (gram route) build the centred Gram of each representation, one at a
    time so that only one float64 copy of the features is alive in the gram route."""
    names = [name for name, _ in reps]
    count = len(reps)
    constant: list[bool] = []
    grams = feats = diags = None
    if route == "gram":
        grams = torch.empty((count, n * n), dtype=DTYPE, device=device)
    else:
        feats, diags = [], torch.empty((count, n), dtype=DTYPE, device=device)
    self_terms = torch.empty(count, dtype=DTYPE, device=device)
    for i, (name, raw) in enumerate(reps):
        x = as_matrix(raw, name, device)
        xc, is_const = centre(x)
        del x
        constant.append(is_const)
        if route == "gram":
            if is_const:
                g = torch.zeros((n, n), dtype=DTYPE, device=xc.device)
            else:
                k = xc @ xc.T if kernel == "linear" else rbf_from_centred(xc, sigma, name)
                g = centred_gram(k, debiased)
                del k
            grams[i] = g.reshape(-1)
            self_terms[i] = (g * g).sum() / hsic_norm(n, debiased)
        else:
            diag = (xc * xc).sum(dim=1)
            small = xc.T @ xc if xc.shape[1] <= n else xc @ xc.T
            t = (small * small).sum()
            ksum = diag.sum()
            self_terms[i] = _hsic_from_stats(t, diag @ diag, ksum, ksum, n, debiased)
            feats.append(xc)
            diags[i] = diag
        del xc
    return Prepared(names, n, route, debiased, grams, feats, diags, self_terms, constant)


def _cross_hsic(pa: Prepared, pb: Prepared) -> torch.Tensor:
    """(L_a, L_b) HSIC between every prepared representation of ``pa`` and of ``pb``."""
    n, debiased = pa.n, pa.debiased
    if pa.route == "gram":
        return (pa.grams @ pb.grams.T) / hsic_norm(n, debiased)
    t = torch.empty((len(pa.names), len(pb.names)), dtype=DTYPE, device=pa.diags.device)
    for i, xa in enumerate(pa.feats):
        for j, xb in enumerate(pb.feats):
            t[i, j] = (xa.T @ xb).square().sum()
    s = pa.diags @ pb.diags.T
    ksum = pa.diags.sum(dim=1)[:, None]
    lsum = pb.diags.sum(dim=1)[None, :]
    return _hsic_from_stats(t, s, ksum, lsum, n, debiased)


def cka_from_hsic(
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
        warn_degenerate(listed)
    return out


def as_items(reps: Any, what: str) -> list[tuple[str, Any]]:
    if not isinstance(reps, Mapping):
        raise ConfigTypeError(
            f"{what} must be a dict {{layer name: representation}}, got {type(reps).__name__}."
        )
    if len(reps) == 0:
        raise ConfigError(f"{what} is empty; pass at least one layer.")
    return [(f"{what}[{name!r}]", value) for name, value in reps.items()]


def common_rows(items: Sequence[tuple[str, Any]]) -> int:
    n = rows(items[0][1], items[0][0])
    for name, value in items[1:]:
        check_same_rows(n, rows(value, name), items[0][0], name)
    return n


def _device_of(x: Any) -> torch.device | None:
    if isinstance(x, torch.Tensor) and x.device.type == "cuda":
        return x.device
    return torch.device("cpu")


def pairwise_hsic(
    items_a: list[tuple[str, Any]],
    items_b: list[tuple[str, Any]] | None,
    kernel: str,
    sigma: float,
    debiased: bool,
    method: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cross (L_a, L_b), self_a (L_a,), self_b (L_b,)) HSIC; ``items_b=None``: a against itself."""
    check_kernel(kernel, sigma)
    n = common_rows(items_a + (items_b or []))
    if n < 2:
        raise ConfigError(f"CKA needs at least 2 samples, got n={n}.")
    if debiased:
        check_debiased_n(n)
    widths_a = [width(v) for _, v in items_a]
    widths_b = widths_a if items_b is None else [width(v) for _, v in items_b]
    route = choose_route(n, widths_a, widths_b, kernel, method)
    device = _device_of(items_a[0][1])
    pa = _prepare(items_a, n, route, kernel, sigma, debiased, device)
    pb = pa if items_b is None else _prepare(items_b, n, route, kernel, sigma, debiased, device)
    return _cross_hsic(pa, pb), pa.self_hsic, pb.self_hsic
