"""The invariance table (in the style of repsim): each measure declares the transformations of
one representation it must be invariant to and those it must *not* be invariant to; one
parametrised test checks every (measure, transformation) pair on the same random data."""

from __future__ import annotations

import pytest
import torch

from ftlens.similarity import linear_cka, procrustes_distance, rbf_cka, subspace_similarity

N, D = 60, 12
_G = torch.Generator().manual_seed(0)
A = torch.randn(N, D, generator=_G, dtype=torch.float64)
B = A @ torch.randn(D, D, generator=_G, dtype=torch.float64) * 0.3 + torch.randn(N, D, generator=_G, dtype=torch.float64)
_Q, _ = torch.linalg.qr(torch.randn(D, D, generator=_G, dtype=torch.float64))
_M = torch.randn(D, D, generator=_G, dtype=torch.float64) + 0.5 * torch.eye(D, dtype=torch.float64)
_ROWS = torch.randperm(N, generator=_G)
_COLS = torch.randperm(D, generator=_G)

#: transformation of the second representation (n, d) -> (n, d')
TRANSFORMS = {
    "orthogonal": lambda x: x @ _Q,
    "isotropic_scale": lambda x: 3.7 * x,
    "translation": lambda x: x + 5.0,
    "feature_permutation": lambda x: x[:, _COLS],
    "invertible_linear": lambda x: x @ _M,
    "sample_shuffle": lambda x: x[_ROWS],  # rows no longer paired with the first representation's
}

#: measure -> (function, must be invariant to, must not be invariant to)
MEASURES = {
    "linear_cka": (linear_cka, {"orthogonal", "isotropic_scale", "translation", "feature_permutation"},
                   {"invertible_linear", "sample_shuffle"}),
    "linear_cka_debiased": (lambda a, b: linear_cka(a, b, debiased=True),
                            {"orthogonal", "isotropic_scale", "translation", "feature_permutation"},
                            {"invertible_linear", "sample_shuffle"}),
    "rbf_cka": (rbf_cka, {"orthogonal", "isotropic_scale", "translation", "feature_permutation"},
                {"invertible_linear", "sample_shuffle"}),
    "procrustes_distance": (procrustes_distance, {"orthogonal", "isotropic_scale", "translation",
                                                  "feature_permutation"}, {"invertible_linear", "sample_shuffle"}),
    # feature-space PCA compares neurons one to one, and ignores which image is which
    "subspace_features": (lambda a, b: subspace_similarity(a, b, k=4), {"isotropic_scale", "translation",
                                                                        "sample_shuffle"},
                          {"orthogonal", "feature_permutation", "invertible_linear"}),
    "subspace_samples": (lambda a, b: subspace_similarity(a, b, k=4, space="samples"),
                         {"orthogonal", "isotropic_scale", "translation", "feature_permutation"},
                         {"invertible_linear", "sample_shuffle"}),
}

CASES = [(m, t, t in MEASURES[m][1]) for m in MEASURES for t in sorted(MEASURES[m][1] | MEASURES[m][2])]


def test_every_measure_declares_every_transformation():
    for name, (_, has, lacks) in MEASURES.items():
        assert not has & lacks, name
        assert has | lacks == set(TRANSFORMS), f"{name}: undeclared {set(TRANSFORMS) - has - lacks}"


@pytest.mark.parametrize(("measure", "transform", "invariant"), CASES, ids=[f"{m}-{t}" for m, t, _ in CASES])
def test_invariance_table(measure, transform, invariant):
    f = MEASURES[measure][0]
    base = f(A, B)
    moved = f(A, TRANSFORMS[transform](B))
    if invariant:
        assert moved == pytest.approx(base, abs=1e-9)
    else:
        assert abs(moved - base) > 1e-3, (base, moved)


@pytest.mark.parametrize("measure", sorted(MEASURES))
def test_permuting_both_sides_the_same_way_changes_nothing(measure):
    f = MEASURES[measure][0]
    assert f(A[_ROWS], B[_ROWS]) == pytest.approx(f(A, B), abs=1e-9)
