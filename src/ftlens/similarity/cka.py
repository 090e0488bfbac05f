"""Centred kernel alignment (Kornblith et al. 2019): linear and RBF, biased and debiased.

``CKA(A, B) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with ``K``, ``L`` the Gram matrices of
``a`` (n, d_a) and ``b`` (n, d_b); a similarity (1 = identical up to an orthogonal map,
isotropic scaling and translation). Biased HSIC ``tr(KHLH)/(n-1)^2`` or the unbiased HSIC_1
(``debiased=True``, n >= 4). One pair (:func:`linear_cka`, :func:`rbf_cka`,
:func:`cka_from_grams`) or every pair of layers at once (:func:`cka_matrix`,
:func:`cka_per_layer`), all through the engine in :mod:`ftlens.similarity.pairwise`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import pandas as pd

from ftlens.errors import LayerError
from ftlens.similarity.gram import centred_gram, check_gram
from ftlens.similarity.inputs import check_debiased_n, check_same_rows, rows
from ftlens.similarity.measure import Measure
from ftlens.similarity.pairwise import as_items, cka_from_hsic, pairwise_hsic

__all__ = [
    "LINEAR_CKA",
    "LINEAR_CKA_DEBIASED",
    "RBF_CKA",
    "RBF_CKA_DEBIASED",
    "cka_from_grams",
    "cka_matrix",
    "cka_per_layer",
    "linear_cka",
    "rbf_cka",
]


def cka_from_grams(k: Any, l: Any, debiased: bool = False,  # noqa: E741
                   names: tuple[str, str] = ("the first representation", "the second representation")) -> float:
    """CKA from two (uncentred) Gram matrices (n, n): ``HSIC(K,L)/sqrt(HSIC(K,K) HSIC(L,L))``.

    A similarity (1 = same up to the kernel's invariances). Biased or debiased HSIC as in
    :func:`hsic`. NaN with a :class:`DegenerateRepresentationWarning` (naming ``names``) if a
    self term is 0.
    """
    kt, lt = check_gram(k, "k"), check_gram(l, "l")
    check_same_rows(kt.shape[0], lt.shape[0], "k", "l")
    if debiased:
        check_debiased_n(kt.shape[0])
    kc, lc = centred_gram(kt, debiased), centred_gram(lt, debiased)
    cross = (kc * lc).sum().reshape(1, 1)
    out = cka_from_hsic(
        cross, (kc * kc).sum().reshape(1), (lc * lc).sum().reshape(1), [names[0]], [names[1]]
    )
    return float(out[0, 0])


def linear_cka(a: Any, b: Any, debiased: bool = False, *, method: str = "auto") -> float:
    """Linear CKA between paired representations ``a`` (n, d_a) and ``b`` (n, d_b).

    A similarity in [0, 1] (debiased: about [-small, 1]); 1 for ``b = s a Q + c`` with ``Q``
    orthogonal. ``debiased=False`` uses the biased HSIC ``tr(KHLH)/(n-1)^2``, ``True`` the
    unbiased HSIC_1 (n >= 4). ``method``: ``"auto"`` (cheaper route by shape), ``"gram"``
    (``n x n`` Grams) or ``"features"`` (``d_a x d_b`` cross-covariance); all exact.
    NaN plus a :class:`DegenerateRepresentationWarning` if either side is constant.
    """
    check_same_rows(rows(a, "a"), rows(b, "b"))
    cross, sa, sb = pairwise_hsic([("a", a)], [("b", b)], "linear", 0.8, debiased, method)
    return float(cka_from_hsic(cross, sa, sb, ["a"], ["b"])[0, 0])


def rbf_cka(a: Any, b: Any, sigma: float = 0.8, debiased: bool = False) -> float:
    """RBF-kernel CKA between ``a`` (n, d_a) and ``b`` (n, d_b); a similarity, 1 for identical.

    Gaussian kernel of bandwidth ``sigma * median pairwise distance`` (each side its own
    median; see :func:`gram_rbf`). Biased or debiased HSIC as in :func:`linear_cka`.
    """
    check_same_rows(rows(a, "a"), rows(b, "b"))
    cross, sa, sb = pairwise_hsic([("a", a)], [("b", b)], "rbf", sigma, debiased, "gram")
    return float(cka_from_hsic(cross, sa, sb, ["a"], ["b"])[0, 0])


def describe(obj: pd.DataFrame | pd.Series, kernel: str, debiased: bool, **extra: Any) -> None:
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
    items_a = as_items(reps_a, "reps_a")
    items_b = None if reps_b is None else as_items(reps_b, "reps_b")
    cross, sa, sb = pairwise_hsic(items_a, items_b, kernel, sigma, debiased, method)
    names_a = list(reps_a.keys())
    names_b = names_a if reps_b is None else list(reps_b.keys())
    values = cka_from_hsic(
        cross, sa, sb, [n for n, _ in items_a], [n for n, _ in (items_b or items_a)]
    )
    df = pd.DataFrame(
        values.cpu().numpy(),
        index=pd.Index(names_a, name="first_layer"),
        columns=pd.Index(names_b, name="second_layer"),
    )
    describe(df, kernel, debiased)
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
        cross, sa, sb = pairwise_hsic(ia, ib, kernel, sigma, debiased, method)
        values.append(float(cka_from_hsic(cross, sa, sb, [ia[0][0]], [ib[0][0]])[0, 0]))
    series = pd.Series(values, index=pd.Index(layers, name="layer"), name="cka", dtype=float)
    describe(series, kernel, debiased)
    return series


# CKA has the same declared invariances for both kernels and both estimators
_INVARIANT = {"orthogonal", "isotropic_scale", "translation", "feature_permutation"}
_NOT_INVARIANT = {"invertible_linear", "sample_shuffle"}

LINEAR_CKA = Measure("linear_cka", linear_cka, "similarity", _INVARIANT, _NOT_INVARIANT,
                     "linear CKA (biased HSIC)", layers=cka_matrix)
LINEAR_CKA_DEBIASED = Measure("linear_cka_debiased", partial(linear_cka, debiased=True), "similarity",
                              _INVARIANT, _NOT_INVARIANT, "linear CKA (debiased HSIC)",
                              layers=partial(cka_matrix, debiased=True))
RBF_CKA = Measure("rbf_cka", rbf_cka, "similarity", _INVARIANT, _NOT_INVARIANT,
                  "RBF CKA (biased HSIC, bandwidth 0.8 x median distance)",
                  layers=partial(cka_matrix, kernel="rbf"))
RBF_CKA_DEBIASED = Measure("rbf_cka_debiased", partial(rbf_cka, debiased=True), "similarity",
                           _INVARIANT, _NOT_INVARIANT,
                           "RBF CKA (debiased HSIC, bandwidth 0.8 x median distance)",
                           layers=partial(cka_matrix, kernel="rbf", debiased=True))
