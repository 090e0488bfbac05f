"""The field's similarity measures (CCA, SVCCA, PWCCA, RSA, mutual k-NN) against closed forms and
slow, obvious references; their invariances are in the property table (tests/test_properties.py)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

import ftlens
from ftlens.errors import ConfigError, DegenerateRepresentationWarning
from ftlens.similarity import get_measure
from ftlens.similarity.cca import canonical_correlations, cca_similarity, principal_basis
from ftlens.similarity.mutual_knn import mutual_knn
from ftlens.similarity.pwcca import pwcca
from ftlens.similarity.rsa import rsa, rsa_measure
from ftlens.similarity.svcca import svcca


def _orthonormal_centred(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """``k`` orthonormal columns (n, k) that sum to 0 (centred)."""
    x = torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(0))
    return q


def _correlated(n: int, d_a: int, d_b: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 6))
    a = z @ rng.standard_normal((6, d_a)) + 0.5 * rng.standard_normal((n, d_a)) + 3.0
    b = z @ rng.standard_normal((6, d_b)) + 0.8 * rng.standard_normal((n, d_b)) * np.linspace(0.3, 2.0, d_b)
    return a, b


def _inv_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return v @ np.diag(w**-0.5) @ v.T


def _reference_cca(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Covariance-whitening CCA (as in Morcos et al.'s code): ``(rho, variates of b (n, m))``; full-rank sides."""
    ac, bc = a - a.mean(0), b - b.mean(0)
    saa, sbb, sab = ac.T @ ac, bc.T @ bc, ac.T @ bc
    wa, wb = _inv_sqrt(saa), _inv_sqrt(sbb)
    u, rho, vh = np.linalg.svd(wa @ sab @ wb)
    m = min(a.shape[1], b.shape[1])
    directions = bc @ wb @ vh.T[:, :m]  # canonical variates of b in sample space
    return rho[:m], directions


def _reference_pwcca(a: np.ndarray, b: np.ndarray) -> float:
    rho, directions = _reference_cca(a, b)
    p, _ = np.linalg.qr(directions)
    weights = np.abs(p.T @ (b - b.mean(0))).sum(axis=1)
    return float((weights * rho).sum() / weights.sum())


def _reference_svcca(a: np.ndarray, b: np.ndarray, keep: float = 0.99) -> float:
    reduced = []
    for x in (a, b):
        xc = x - x.mean(0)
        u, s, _ = np.linalg.svd(xc, full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), keep) + 1)
        reduced.append(u[:, :k] * s[:k])
    return float(_reference_cca(*reduced)[0].mean())


def test_canonical_correlations_closed_form():
    u = _orthonormal_centred(50, 4)
    theta = 0.7
    a = torch.stack([u[:, 0], u[:, 1]], 1)
    b = torch.stack([u[:, 0], math.cos(theta) * u[:, 1] + math.sin(theta) * u[:, 2]], 1)
    rho = canonical_correlations(a, b).rho
    np.testing.assert_allclose(rho.numpy(), [1.0, math.cos(theta)], atol=1e-12)
    assert cca_similarity(a, b) == pytest.approx((1 + math.cos(theta)) / 2, abs=1e-12)
    assert svcca(a, b, keep=1.0) == pytest.approx((1 + math.cos(theta)) / 2, abs=1e-12)
    # PWCCA weights by b's neurons: alpha = (|<u1, 2 u1>|, |<v, v>|) = (2, 1)
    b2 = torch.stack([2.0 * u[:, 0], b[:, 1]], 1)
    assert pwcca(a, b2) == pytest.approx((2 + math.cos(theta)) / 3, abs=1e-12)
    # orthogonal subspaces: every correlation 0
    assert cca_similarity(u[:, :2], u[:, 2:]) == pytest.approx(0.0, abs=1e-12)


def test_svcca_keeps_the_directions_that_explain_99_percent():
    u = _orthonormal_centred(40, 3, seed=1)
    x = torch.stack([10 * u[:, 0], 5 * u[:, 1], 0.01 * u[:, 2]], 1)
    assert principal_basis(x, keep=0.99).shape[1] == 2 and principal_basis(x).shape[1] == 3
    assert principal_basis(x, keep=1.0).shape[1] == 3
    # the third, tiny direction is all that differs: SVCCA ignores it, CCA does not
    other = torch.stack([10 * u[:, 0], 5 * u[:, 1], 0.01 * _orthonormal_centred(40, 4, seed=2)[:, 3]], 1)
    assert svcca(x, other) == pytest.approx(1.0, abs=1e-9) and cca_similarity(x, other) < 0.9
    with pytest.raises(ConfigError, match="keep"):
        svcca(x, other, keep=1.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_cca_measures_agree_with_the_covariance_reference(seed):
    a, b = _correlated(300, 12, 9, seed)
    rho_ref, _ = _reference_cca(a, b)
    np.testing.assert_allclose(canonical_correlations(a, b).rho.numpy(), rho_ref, atol=1e-10)
    assert cca_similarity(a, b) == pytest.approx(rho_ref.mean(), abs=1e-10)
    assert pwcca(a, b) == pytest.approx(_reference_pwcca(a, b), abs=1e-10)
    assert svcca(a, b) == pytest.approx(_reference_svcca(a, b), abs=1e-10)
    # the reference weights the narrower side (b here: 9 < 12) as Morcos et al.'s code does
    assert pwcca(b, a) != pytest.approx(pwcca(a, b), abs=1e-6)


def test_known_invariances_beyond_the_table():
    a, b = _correlated(200, 10, 8, 3)
    rng = np.random.default_rng(4)
    ma, mb = rng.standard_normal((10, 10)) + np.eye(10), rng.standard_normal((8, 8)) + np.eye(8)
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    # CCA: any invertible linear map of either side; SVCCA with everything kept is CCA
    assert cca_similarity(a @ ma, b @ mb) == pytest.approx(cca_similarity(a, b), abs=1e-9)
    assert svcca(a @ ma, b @ mb, keep=1.0) == pytest.approx(cca_similarity(a, b), abs=1e-9)
    # PWCCA's weights come from b: a rotation, even an invertible map, of a changes nothing
    assert pwcca(a @ q, b) == pytest.approx(pwcca(a, b), abs=1e-9)
    assert pwcca(a @ ma, b) == pytest.approx(pwcca(a, b), abs=1e-9)
    assert pwcca(a, b[:, ::-1] * 4.0 - 2.0) == pytest.approx(pwcca(a, b), abs=1e-9)


def test_degenerate_cca_warns_and_a_constant_side_is_nan():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((20, 50)), rng.standard_normal((20, 50))  # more features than images
    with pytest.warns(DegenerateRepresentationWarning, match="whatever the data"):
        value = cca_similarity(a, b)
    assert value == pytest.approx(1.0)  # independent data, every correlation forced to 1
    with pytest.warns(DegenerateRepresentationWarning, match="constant"):
        assert math.isnan(pwcca(a[:, :5], np.ones((20, 3))))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        svcca(*_correlated(100, 5, 5))  # enough images: no warning


def _slow_rdm(x: np.ndarray, distance: str) -> np.ndarray:
    n = len(x)
    out = []
    for i in range(n):
        for j in range(i + 1, n):
            u, v = x[i], x[j]
            if distance == "euclidean":
                out.append(math.sqrt(sum((p - q) ** 2 for p, q in zip(u, v, strict=True))))
            elif distance == "cosine":
                out.append(1 - float(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v)))
            else:
                uc, vc = u - u.mean(), v - v.mean()
                out.append(1 - float(uc @ vc) / (np.linalg.norm(uc) * np.linalg.norm(vc)))
    return np.array(out)


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "correlation"])
@pytest.mark.parametrize("compare", ["pearson", "spearman"])
def test_rsa_agrees_with_a_slow_reference(distance, compare):
    a, b = _correlated(25, 7, 5, 1)
    ra, rb = _slow_rdm(a, distance), _slow_rdm(b, distance)
    if compare == "spearman":
        ra, rb = stats.rankdata(ra), stats.rankdata(rb)
    expected = np.corrcoef(ra, rb)[0, 1]
    assert rsa(a, b, distance, compare) == pytest.approx(expected, abs=1e-10)
    m = rsa_measure(distance, compare)
    assert m(a, b) == pytest.approx(expected, abs=1e-10) and m(a, a) == pytest.approx(1.0)
    noise = np.random.default_rng(9).standard_normal((25, 5))
    assert abs(rsa(a, noise, distance, compare)) < 0.5


def test_rsa_bad_input():
    a = np.random.default_rng(0).standard_normal((10, 4))
    with pytest.raises(ConfigError, match="distance must be one of"):
        rsa(a, a, distance="manhattan")
    with pytest.raises(ConfigError, match="compare must be one of"):
        rsa(a, a, compare="kendall")
    with pytest.warns(DegenerateRepresentationWarning, match="RDM"):
        assert math.isnan(rsa(a, np.ones((10, 3)), "euclidean"))


def _slow_mutual_knn(a: np.ndarray, b: np.ndarray, k: int) -> float:
    def knn(x):
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        sim = unit @ unit.T
        return [set([j for j in np.argsort(-sim[i]) if j != i][:k]) for i in range(len(x))]

    na, nb = knn(a), knn(b)
    return float(np.mean([len(na[i] & nb[i]) / k for i in range(len(a))]))


def test_mutual_knn_agrees_with_a_slow_reference():
    a, b = _correlated(60, 8, 6, 2)
    for k in (1, 5, 10):
        assert mutual_knn(a, b, k=k) == pytest.approx(_slow_mutual_knn(a, b, k), abs=1e-12)
    assert mutual_knn(a, a) == 1.0
    rng = np.random.default_rng(1)
    chance = np.mean([mutual_knn(rng.standard_normal((60, 8)), rng.standard_normal((60, 8))) for _ in range(5)])
    assert chance == pytest.approx(10 / 59, abs=0.05)  # unrelated: about k / (n - 1)
    with pytest.raises(ConfigError, match=r"\[1, 59\]"):
        mutual_knn(a, b, k=60)


def test_the_field_measures_work_in_the_cka_api(make_vit, make_pool):
    first, other, x = make_vit(0, tokens="mean"), make_vit(1, tokens="mean"), make_pool(100, 3)
    warnings.simplefilter("error", DegenerateRepresentationWarning)  # 100 images of 32 features: well posed
    for name in ("svcca", "pwcca", "rsa_euclidean_pearson", "mutual_knn"):
        result = ftlens.CKA(first, other, measure=name).compare(x)
        ra, rb = first.representations(x), other.representations(x)
        expected = [[get_measure(name)(ra[la], rb[lb]) for lb in rb] for la in ra]
        np.testing.assert_allclose(result.matrix.to_numpy(), expected, rtol=1e-12)
        assert result.config["measure"] == name
