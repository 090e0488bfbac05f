"""Values of ftlens.similarity against slow, obvious float64 references and known properties."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import ftlens.similarity.pairwise as engine
from ftlens.errors import LayerError, NumericalError
from ftlens.similarity import (
    DegenerateRepresentationWarning,
    MinibatchCKA,
    center_gram,
    cka_from_grams,
    cka_matrix,
    cka_per_layer,
    gram_linear,
    gram_rbf,
    hsic,
    linear_cka,
    procrustes_distance,
    rbf_cka,
    subspace_similarity,
)

# --- tolerances -------------------------------------------------------------------------------
REF_RTOL = 1e-9  # float64 implementation vs float64 reference on the same float64 data
EXACT_ATOL = 1e-10  # identities that hold exactly in exact arithmetic (CKA(X, X) = 1, ...)
FLOAT32_ATOL = 1e-6  # identities on float32 inputs (e.g. a float32 rotation of the data)
CONVERGE_ATOL = 5e-3  # biased vs debiased CKA at n = 4000, noise-free linear relation
MINIBATCH_ATOL = 1e-2  # minibatch (8 x 500) vs full-data debiased CKA at n = 4000
INDEPENDENT_DEBIASED_ATOL = 0.1  # |debiased CKA| of independent features, n = 60, d = 1500
INDEPENDENT_BIASED_MIN = 0.9  # biased CKA of the same independent features is inflated

# (n, d_a, d_b): features >> samples, and samples >> features
WIDE = (24, 300, 200)
TALL = (300, 6, 4)
SHAPES = pytest.mark.parametrize("shape", [WIDE, TALL], ids=["wide", "tall"])


def paired(shape, seed=0, noise=1.0):
    """Float64 numpy a (n, d_a), b (n, d_b) = a M + noise: related but not identical."""
    n, da, db = shape
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, da)) + rng.normal(size=(1, da))  # a non-zero mean on purpose
    b = a @ rng.normal(size=(da, db)) / math.sqrt(da) + noise * rng.normal(size=(n, db))
    return a, b


def orthogonal(d, seed=0):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


# --- slow obvious references (numpy float64, explicit H, explicit formula) --------------------


def ref_hsic_biased(k, l):  # noqa: E741
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def ref_hsic_unbiased(k, l):  # noqa: E741
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    for i in range(n):
        kt[i, i] = 0.0
        lt[i, i] = 0.0
    one = np.ones(n)
    term1 = np.trace(kt @ lt)
    term2 = (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one @ kt @ lt @ one)
    return (term1 + term2 - term3) / (n * (n - 3))


def ref_cka(k, l, debiased):  # noqa: E741
    f = ref_hsic_unbiased if debiased else ref_hsic_biased
    return f(k, l) / math.sqrt(f(k, k) * f(l, l))


def ref_rbf_gram(x, sigma):
    n = x.shape[0]
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            dist[i, j] = math.sqrt(((x[i] - x[j]) ** 2).sum())
    median = np.median(dist[np.triu_indices(n, 1)])
    return np.exp(-(dist**2) / (2.0 * (sigma * median) ** 2))


# --- against the references -------------------------------------------------------------------


@SHAPES
@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_matches_reference(shape, debiased):
    a, b = paired(shape)
    expected = ref_cka(a @ a.T, b @ b.T, debiased)
    for method in ("auto", "gram", "features"):
        got = linear_cka(torch.from_numpy(a), torch.from_numpy(b), debiased, method=method)
        assert got == pytest.approx(expected, rel=REF_RTOL), method
    assert 0.05 < expected < 0.98  # a non-trivial value


@pytest.mark.parametrize("shape", [(30, 200, 150), (120, 3, 2)], ids=["wide", "tall"])
@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_cka_matches_reference(shape, debiased):
    a, b = paired(shape, seed=1)
    sigma = 0.8
    expected = ref_cka(ref_rbf_gram(a, sigma), ref_rbf_gram(b, sigma), debiased)
    assert rbf_cka(a, b, sigma=sigma, debiased=debiased) == pytest.approx(expected, rel=REF_RTOL)
    assert rbf_cka(a, b, sigma=2.0) != pytest.approx(rbf_cka(a, b, sigma=0.5), abs=1e-3)


def test_gram_blocks_match_reference():
    a, b = paired((15, 7, 5), seed=2)
    k, l = a @ a.T, ref_rbf_gram(b, 0.8)  # noqa: E741
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    np.testing.assert_allclose(gram_linear(a).numpy(), k, rtol=REF_RTOL)
    np.testing.assert_allclose(gram_rbf(b, 0.8).numpy(), l, rtol=REF_RTOL)
    np.testing.assert_allclose(center_gram(k).numpy(), h @ k @ h, atol=1e-10)
    assert hsic(k, l) == pytest.approx(ref_hsic_biased(k, l), rel=REF_RTOL)
    # the normalising constant itself is checked, not only a ratio where it would cancel
    assert hsic(k, l, debiased=True) == pytest.approx(ref_hsic_unbiased(k, l), rel=REF_RTOL)
    ku, lu = center_gram(k, unbiased=True), center_gram(l, unbiased=True)
    assert float((ku * lu).sum()) / (n * (n - 3)) == pytest.approx(
        ref_hsic_unbiased(k, l), rel=REF_RTOL
    )
    for debiased in (False, True):
        assert cka_from_grams(k, l, debiased) == pytest.approx(
            ref_cka(k, l, debiased), rel=REF_RTOL
        )
    with pytest.raises(ValueError, match="symmetric"):
        hsic(np.triu(k), l)


def test_route_choice_by_shape():
    assert engine.choose_route(500, [38_400], [38_400], "linear", "auto") == "gram"
    assert engine.choose_route(100_000, [64], [64], "linear", "auto") == "features"
    assert engine.choose_route(100_000, [64], [64], "rbf", "auto") == "gram"


# --- properties -------------------------------------------------------------------------------


@SHAPES
def test_self_similarity_is_one(shape):
    a, _ = paired(shape)
    assert linear_cka(a, a) == pytest.approx(1.0, abs=EXACT_ATOL)
    assert linear_cka(a, a, debiased=True) == pytest.approx(1.0, abs=EXACT_ATOL)
    assert rbf_cka(a, a) == pytest.approx(1.0, abs=EXACT_ATOL)
    assert rbf_cka(a, a, debiased=True) == pytest.approx(1.0, abs=EXACT_ATOL)


@SHAPES
def test_invariant_to_orthogonal_maps_isotropic_scaling_and_translation(shape):
    a, b = paired(shape)
    q = orthogonal(b.shape[1], seed=3)
    b2 = 3.7 * b @ q + 5.0
    for debiased in (False, True):
        assert linear_cka(a, b2, debiased) == pytest.approx(
            linear_cka(a, b, debiased), abs=EXACT_ATOL
        )
        assert rbf_cka(a, b2, debiased=debiased) == pytest.approx(
            rbf_cka(a, b, debiased=debiased), abs=EXACT_ATOL
        )
    assert linear_cka(a, 0.01 * a @ orthogonal(a.shape[1], 4)) == pytest.approx(1.0, abs=EXACT_ATOL)


def test_not_invariant_to_general_invertible_maps():
    a, _ = paired(TALL)
    m = np.diag(np.logspace(-2, 2, a.shape[1])) @ orthogonal(a.shape[1], 5)  # invertible
    assert np.linalg.matrix_rank(m) == a.shape[1]
    assert linear_cka(a, a @ m) < 0.9
    assert linear_cka(a, a @ orthogonal(a.shape[1], 5)) == pytest.approx(1.0, abs=EXACT_ATOL)


@SHAPES
def test_symmetry(shape):
    a, b = paired(shape, seed=6)
    for debiased in (False, True):
        assert linear_cka(a, b, debiased) == pytest.approx(linear_cka(b, a, debiased), rel=1e-12)
        assert rbf_cka(a, b, debiased=debiased) == pytest.approx(
            rbf_cka(b, a, debiased=debiased), rel=1e-12
        )


def test_biased_and_debiased_converge_for_large_n():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4000, 8))
    y = x @ rng.normal(size=(8, 12))  # noise-free, but not an orthogonal map: CKA < 1
    biased, debiased = linear_cka(x, y), linear_cka(x, y, debiased=True)
    assert biased < 0.95
    assert debiased == pytest.approx(biased, abs=CONVERGE_ATOL)


def test_debiased_removes_inflation_for_independent_wide_features():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(60, 1500)), rng.normal(size=(60, 1500))
    assert linear_cka(x, y) > INDEPENDENT_BIASED_MIN
    assert abs(linear_cka(x, y, debiased=True)) < INDEPENDENT_DEBIASED_ATOL


# --- closed forms -----------------------------------------------------------------------------


def test_one_dimensional_linear_cka_is_squared_pearson_correlation():
    rng = np.random.default_rng(9)
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(size=50) + 3.0
    r = np.corrcoef(x, y)[0, 1]
    assert linear_cka(x, y) == pytest.approx(r**2, rel=REF_RTOL)


def test_two_orthogonal_directions_against_one():
    # A = [alpha u, beta v] with u, v centred, orthonormal; B = u.
    # <K_A, L> = alpha^4, ||K_A||^2 = alpha^4 + beta^4, ||L||^2 = 1  =>  CKA = alpha^2 / sqrt(alpha^4 + beta^4)
    rng = np.random.default_rng(10)
    z = rng.normal(size=(40, 2))
    q, _ = np.linalg.qr(z - z.mean(axis=0))
    u, v = q[:, 0], q[:, 1]
    alpha, beta = 2.0, 1.0
    a = np.stack([alpha * u, beta * v], axis=1)
    assert linear_cka(a, u) == pytest.approx(alpha**2 / math.sqrt(alpha**4 + beta**4), rel=REF_RTOL)
    assert linear_cka(np.stack([u, v], axis=1), u) == pytest.approx(1 / math.sqrt(2), rel=REF_RTOL)


# --- minibatch --------------------------------------------------------------------------------


def test_minibatch_single_batch_equals_full_debiased():
    a, b = paired((50, 9, 7), seed=11)
    m = MinibatchCKA()
    m.update(torch.from_numpy(a), torch.from_numpy(b))
    assert m.compute() == pytest.approx(linear_cka(a, b, debiased=True), rel=REF_RTOL)


def test_minibatch_unequal_batches_average_hsic1_terms():
    # batches of different sizes: a wrong n(n-3) normalisation would not cancel here
    a, b = paired((40, 5, 4), seed=12)
    cuts = [(0, 10), (10, 40)]
    m = MinibatchCKA()
    cross = self_a = self_b = 0.0
    for lo, hi in cuts:
        m.update(a[lo:hi], b[lo:hi])
        k, l = a[lo:hi] @ a[lo:hi].T, b[lo:hi] @ b[lo:hi].T  # noqa: E741
        cross += ref_hsic_unbiased(k, l)
        self_a += ref_hsic_unbiased(k, k)
        self_b += ref_hsic_unbiased(l, l)
    assert m.n_batches == 2 and m.n_samples == 40
    assert m.compute() == pytest.approx(cross / math.sqrt(self_a * self_b), rel=REF_RTOL)


def test_minibatch_agrees_with_full_debiased_for_large_batches():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(4000, 8))
    y = x @ rng.normal(size=(8, 6)) + 2.0 * rng.normal(size=(4000, 6))
    m = MinibatchCKA()
    for i in range(8):
        m.update(x[i * 500 : (i + 1) * 500], y[i * 500 : (i + 1) * 500])
    full = linear_cka(x, y, debiased=True)
    assert 0.2 < full < 0.8
    assert m.compute() == pytest.approx(full, abs=MINIBATCH_ATOL)


def test_minibatch_dicts_give_a_layer_matrix():
    rng = np.random.default_rng(14)
    reps_a = {"l0": rng.normal(size=(60, 5)), "l1": rng.normal(size=(60, 2, 3))}
    reps_b = {
        "m0": reps_a["l0"] @ rng.normal(size=(5, 4)) + rng.normal(size=(60, 4)),
        "m1": rng.normal(size=(60, 3)),
        "m2": rng.normal(size=(60, 7)),
    }
    m = MinibatchCKA()
    for lo in (0, 20, 40):
        m.update(
            {k: v[lo : lo + 20] for k, v in reps_a.items()},
            {k: v[lo : lo + 20] for k, v in reps_b.items()},
        )
    df = m.compute()
    assert isinstance(df, pd.DataFrame)
    assert list(df.index) == ["l0", "l1"] and list(df.columns) == ["m0", "m1", "m2"]
    for la, xa in reps_a.items():
        for lb, xb in reps_b.items():
            single = MinibatchCKA()
            for lo in (0, 20, 40):
                single.update(xa[lo : lo + 20], xb[lo : lo + 20])
            assert df.loc[la, lb] == pytest.approx(single.compute(), rel=1e-12)
    with pytest.raises(ValueError, match="layers changed"):
        m.update({"l0": reps_a["l0"][:20]}, {k: v[:20] for k, v in reps_b.items()})


# --- layer matrices ---------------------------------------------------------------------------


def layer_dicts(n, widths_a, widths_b, seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 4))
    reps_a = {
        f"a{i}": torch.from_numpy(base @ rng.normal(size=(4, w)) + rng.normal(size=(n, w)))
        for i, w in enumerate(widths_a)
    }
    reps_b = {
        f"b{i}": torch.from_numpy(base @ rng.normal(size=(4, w)) + 0.5 * rng.normal(size=(n, w)))
        for i, w in enumerate(widths_b)
    }
    return reps_a, reps_b


@pytest.mark.parametrize(
    "kernel,debiased", [("linear", False), ("linear", True), ("rbf", False), ("rbf", True)]
)
def test_cka_matrix_equals_pairwise(kernel, debiased):
    reps_a, reps_b = layer_dicts(30, [50, 80, 12], [60, 40], seed=15)
    reps_a["a2"] = reps_a["a2"].reshape(30, 3, 4)  # a >2-D layer is flattened per sample
    df = cka_matrix(reps_a, reps_b, debiased=debiased, kernel=kernel)
    assert list(df.index) == list(reps_a) and list(df.columns) == list(reps_b)
    assert df.attrs["estimator"] == ("debiased" if debiased else "biased")
    pair = linear_cka if kernel == "linear" else rbf_cka
    for la, xa in reps_a.items():
        for lb, xb in reps_b.items():
            expected = pair(xa, xb, debiased=debiased)
            assert df.loc[la, lb] == pytest.approx(expected, rel=1e-10), (la, lb)
    self_df = cka_matrix(reps_a, debiased=debiased, kernel=kernel)
    np.testing.assert_allclose(np.diag(self_df.to_numpy()), 1.0, atol=EXACT_ATOL)
    np.testing.assert_allclose(self_df.to_numpy(), self_df.to_numpy().T, atol=1e-12)


def test_cka_matrix_prepares_each_layer_once(monkeypatch):
    reps_a, reps_b = layer_dicts(20, [30, 30, 30], [30, 30, 30, 30], seed=16)
    calls = []
    original = engine.centre
    monkeypatch.setattr(engine, "centre", lambda x: calls.append(1) or original(x))
    cka_matrix(reps_a, reps_b)
    assert len(calls) == 3 + 4  # L_a + L_b, not L_a * L_b


def test_cka_matrix_routes_agree_for_many_samples():
    reps_a, reps_b = layer_dicts(400, [5, 3], [4, 6, 2], seed=17)
    for debiased in (False, True):
        feats = cka_matrix(reps_a, reps_b, debiased=debiased, method="features")
        grams = cka_matrix(reps_a, reps_b, debiased=debiased, method="gram")
        np.testing.assert_allclose(feats.to_numpy(), grams.to_numpy(), rtol=1e-10)


def test_cka_per_layer_is_the_diagonal():
    reps_a, reps_b = layer_dicts(25, [40, 20, 10], [40, 20, 10], seed=18)
    reps_b = dict(zip(reps_a, reps_b.values(), strict=True))  # same names
    for debiased in (False, True):
        series = cka_per_layer(reps_a, reps_b, debiased=debiased)
        df = cka_matrix(reps_a, reps_b, debiased=debiased)
        assert list(series.index) == list(reps_a)
        np.testing.assert_allclose(series.to_numpy(), np.diag(df.to_numpy()), rtol=1e-10)
    assert list(cka_per_layer(reps_a, reps_b, layers=["a1"]).index) == ["a1"]
    with pytest.raises(LayerError, match="missing"):
        cka_per_layer(reps_a, {"a0": reps_b["a0"]})


# --- subspace similarity and Procrustes -------------------------------------------------------


def test_subspace_similarity_same_and_orthogonal_subspaces():
    rng = np.random.default_rng(19)
    n, d, k = 80, 20, 3
    w = orthogonal(d, seed=20)
    w1, w2 = w[:, :k], w[:, k : 2 * k]
    scales = np.array([5.0, 3.0, 2.0])
    a = (rng.normal(size=(n, k)) * scales) @ w1.T
    b = (rng.normal(size=(n, k)) * scales) @ (
        w1 @ orthogonal(k, 21)
    ).T  # same subspace, rotated inside
    c = (rng.normal(size=(n, k)) * scales) @ w2.T
    assert subspace_similarity(a, b, k=k) == pytest.approx(1.0, abs=EXACT_ATOL)
    assert subspace_similarity(a, c, k=k) == pytest.approx(0.0, abs=EXACT_ATOL)
    # sample space: orthogonal maps of the features leave the sample-space subspace unchanged
    noisy = a + 0.1 * rng.normal(size=(n, d))
    assert subspace_similarity(
        noisy, noisy @ orthogonal(d, 22), k=k, space="samples"
    ) == pytest.approx(1.0, abs=EXACT_ATOL)
    z = rng.normal(size=(n, 2 * k))
    q, _ = np.linalg.qr(z - z.mean(axis=0))  # centred, orthonormal columns
    assert subspace_similarity(
        q[:, :k] @ rng.normal(size=(k, 7)), q[:, k:] @ rng.normal(size=(k, 9)), k=k, space="samples"
    ) == pytest.approx(0.0, abs=EXACT_ATOL)


@pytest.mark.parametrize("space", ["features", "samples"])
def test_subspace_similarity_matches_reference(space):
    a, b = paired((40, 12, 12), seed=23, noise=0.7)
    k = 4
    ac, bc = a - a.mean(0), b - b.mean(0)

    def top(x):  # eigenvectors of the covariance (features) or of the Gram (samples)
        m = x.T @ x if space == "features" else x @ x.T
        _, vecs = np.linalg.eigh(m)
        return vecs[:, ::-1][:, :k]

    expected = np.linalg.norm(top(ac).T @ top(bc)) ** 2 / k
    assert 0.05 < expected < 0.95
    assert subspace_similarity(a, b, k=k, space=space) == pytest.approx(expected, rel=1e-8)
    with pytest.raises(ValueError, match="k must be"):
        subspace_similarity(a, b, k=13)


def ref_procrustes(a, b):
    a = a - a.mean(0)
    b = b - b.mean(0)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    d = max(a.shape[1], b.shape[1])
    a = np.pad(a, ((0, 0), (0, d - a.shape[1])))
    b = np.pad(b, ((0, 0), (0, d - b.shape[1])))
    u, _, vt = np.linalg.svd(b.T @ a)
    q = u @ vt  # argmin_Q ||a - b Q||_F over orthogonal Q
    return np.linalg.norm(a - b @ q) ** 2


@SHAPES
def test_procrustes_distance(shape):
    a, b = paired(shape, seed=24)
    expected = ref_procrustes(a, b)
    assert 0.01 < expected < 2.0
    assert procrustes_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert procrustes_distance(a, b, squared=False) == pytest.approx(math.sqrt(expected), rel=1e-8)
    rotated = 2.5 * a @ orthogonal(a.shape[1], 25) - 1.0
    assert procrustes_distance(a, rotated) == pytest.approx(0.0, abs=1e-9)
    assert procrustes_distance(a, a + 0.3 * np.random.default_rng(26).normal(size=a.shape)) > 1e-3


# --- inputs and degenerate cases --------------------------------------------------------------


def test_numpy_and_high_dimensional_inputs():
    rng = np.random.default_rng(27)
    a = rng.normal(size=(20, 3, 4, 5)).astype(np.float32)
    b = rng.normal(size=(20, 60))
    expected = linear_cka(torch.from_numpy(a).reshape(20, -1), torch.from_numpy(b))
    assert linear_cka(a, b) == pytest.approx(expected, rel=1e-12)
    assert linear_cka(torch.from_numpy(a), b) == pytest.approx(expected, rel=1e-12)


def test_ordinary_inputs_do_not_warn():
    a, b = paired(WIDE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        linear_cka(a, b, debiased=True)
        cka_matrix({"x": a}, {"y": b}, kernel="rbf")


def test_constant_representation_gives_nan_and_warns():
    a, _ = paired(WIDE)
    const = np.full((a.shape[0], 5), 0.1)
    checks = [
        lambda: linear_cka(a, const),
        lambda: linear_cka(const, a, debiased=True),
        lambda: linear_cka(a, np.zeros((a.shape[0], 3)), method="features"),
        lambda: rbf_cka(a, const),
        lambda: cka_from_grams(a @ a.T, np.ones((a.shape[0], a.shape[0]))),
        lambda: subspace_similarity(const, const, k=2),
        lambda: procrustes_distance(a, const),
    ]
    for check in checks:
        with pytest.warns(DegenerateRepresentationWarning, match="constant"):
            assert math.isnan(check())
    with pytest.warns(DegenerateRepresentationWarning, match=r"reps_a\['dead'\]"):
        df = cka_matrix({"ok": a, "dead": const}, {"b": a[:, :10]})
    assert math.isnan(df.loc["dead", "b"]) and df.loc["ok", "b"] == pytest.approx(
        linear_cka(a, a[:, :10])
    )
    m = MinibatchCKA()
    m.update(a[:12], const[:12])
    with pytest.warns(DegenerateRepresentationWarning):
        assert math.isnan(m.compute())


def test_invalid_inputs_raise():
    a, b = paired(WIDE)
    with pytest.raises(ValueError, match="at least 4 samples"):
        linear_cka(a[:3], b[:3], debiased=True)
    with pytest.raises(ValueError, match="at least 4 samples"):
        MinibatchCKA().update(a[:3], b[:3])
    assert not math.isnan(linear_cka(a[:3], b[:3]))  # the biased estimator is defined for n = 3
    with pytest.raises(ValueError, match="rows"):
        linear_cka(a, b[:-1])
    with pytest.raises(ValueError, match="rows"):
        cka_matrix({"x": a, "y": a[:-2]}, {"z": b})
    bad = b.copy()
    bad[2, 3] = np.nan
    with pytest.raises(NumericalError, match=r"\bb\b"):
        linear_cka(a, bad)
    with pytest.raises(NumericalError, match=r"reps_b\['z'\]"):
        cka_matrix({"x": a}, {"z": torch.from_numpy(bad).float()})
    inf = a.copy()
    inf[0, 0] = np.inf
    with pytest.raises(NumericalError, match=r"\ba\b"):
        procrustes_distance(inf, b)
    with pytest.raises(ValueError, match="kernel"):
        cka_matrix({"x": a}, kernel="cosine")
    duplicated = np.concatenate(
        [np.repeat(a[:1], 20, axis=0), a[1:5]]
    )  # 190 of 276 pairs identical
    with pytest.raises(ValueError, match="median pairwise distance is 0"):
        rbf_cka(duplicated, b)
