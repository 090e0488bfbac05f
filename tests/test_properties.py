"""The invariance table (in the style of repsim), read from the measure registry: each registered
measure declares the transformations of one representation it must be invariant to and those it
must *not* be invariant to, and whether it is a similarity (1 = same) or a distance (0 = same);
one parametrised test checks every (measure, transformation) pair on the same random data. A
measure is in this table as soon as it is registered."""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
from functools import partial

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ftlens
from ftlens.cli import app
from ftlens.errors import ConfigError
from ftlens.models import load_model, save_checkpoint
from ftlens.similarity import (
    TRANSFORMATIONS,
    Measure,
    get_measure,
    measure_names,
    measures,
    register,
    subspace_similarity,
    unregister,
)

N, D = 100, 32  # D well above the subspace measures' k = 10; N > 2 D + 1: no canonical correlation is 1 by force
_G = torch.Generator().manual_seed(0)
A = torch.randn(N, D, generator=_G, dtype=torch.float64)
B = A @ torch.randn(D, D, generator=_G, dtype=torch.float64) * 0.3 + torch.randn(N, D, generator=_G, dtype=torch.float64)
# neurons of different scales, as a layer's are: with exchangeable (isotropic) neurons a rotation of B changes
# a measure that weights neurons (PWCCA) by much less than in real layers
B = B * torch.exp(torch.linspace(-1.5, 1.5, D, dtype=torch.float64))
_Q, _ = torch.linalg.qr(torch.randn(D, D, generator=_G, dtype=torch.float64))
_M = torch.randn(D, D, generator=_G, dtype=torch.float64) + 0.5 * torch.eye(D, dtype=torch.float64)
_ROWS = torch.randperm(N, generator=_G)
_COLS = torch.randperm(D, generator=_G)
# a translation by a vector that is not constant over the features (a constant shift leaves per-input
# correlations across features unchanged, so it would not test RSA's correlation distance)
_T = 5.0 + torch.randn(D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

#: transformation of the second representation (n, d) -> (n, d'); one per name in TRANSFORMATIONS
TRANSFORMS = {
    "orthogonal": lambda x: x @ _Q,
    "isotropic_scale": lambda x: 3.7 * x,
    "translation": lambda x: x + _T,
    "feature_permutation": lambda x: x[:, _COLS],
    "invertible_linear": lambda x: x @ _M,
    "sample_shuffle": lambda x: x[_ROWS],  # rows no longer paired with the first representation's
}

# The registry holds each measure at its defaults (subspace: k = 10); the table also keeps the
# subspace measures at k = 4, as it did before it read the registry.
VARIANTS = {
    f"{name}_k4": dataclasses.replace(get_measure(name), name=f"{name}_k4", fn=partial(subspace_similarity, k=4, space=space))
    for name, space in (("subspace_features", "features"), ("subspace_samples", "samples"))
}


def table() -> dict[str, Measure]:
    """Every measure the table checks: the registry (as it is now) and the variants above."""
    return {**measures(), **VARIANTS}


def cases(measures_by_name: dict[str, Measure]) -> list[tuple[str, str, bool]]:
    """(measure, transformation, must be invariant) for every declared pair."""
    return [(name, t, t in m.invariant_to) for name, m in measures_by_name.items()
            for t in sorted(m.invariant_to | m.not_invariant_to)]


def check_case(measure: Measure, transform: str, invariant: bool) -> None:
    base = measure(A, B)
    moved = measure(A, TRANSFORMS[transform](B))
    if invariant:
        assert moved == pytest.approx(base, abs=1e-9)
    else:
        assert abs(moved - base) > 1e-3, (base, moved)


def check_identical(measure: Measure) -> None:
    """Identical representations (or ones that differ by a declared invariance) give 1 for a
    similarity and 0 for a distance; unrelated ones are further from that value."""
    assert measure(A, A) == pytest.approx(measure.identical, abs=1e-9)
    for t in measure.invariant_to:
        assert measure(A, TRANSFORMS[t](A)) == pytest.approx(measure.identical, abs=1e-9), t
    noise = 2.0 * torch.randn(N, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    closer = measure(A, noise) < measure.identical if measure.kind == "similarity" else measure(A, noise) > 0
    assert closer and abs(measure(A, noise) - measure.identical) > 0.05, measure(A, noise)


CASES = cases(table())


def test_the_registry_holds_the_measures_with_their_kind():
    builtin = {"linear_cka": "similarity", "linear_cka_debiased": "similarity", "rbf_cka": "similarity",
               "rbf_cka_debiased": "similarity", "procrustes_distance": "distance",
               "subspace_features": "similarity", "subspace_samples": "similarity"}
    assert {name: measures()[name].kind for name in builtin} == builtin
    assert set(TRANSFORMS) == set(TRANSFORMATIONS)


def test_the_docs_table_matches_the_registry():
    """docs/quantities.md lists every built-in measure with its kind and declared invariances."""
    from pathlib import Path

    from ftlens.similarity.registry import BUILTIN

    text = (Path(__file__).parents[1] / "docs" / "quantities.md").read_text()
    head = next(line for line in text.splitlines() if line.startswith("| measure | kind |"))
    assert [c.strip().replace(" ", "_") for c in head.strip("|").split("|")[2:]] == list(TRANSFORMATIONS)
    documented = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 2 + len(TRANSFORMATIONS):
            for name in re.findall(r"`(\w+)`", cells[0]):
                documented[name] = (cells[1], {t for t, c in zip(TRANSFORMATIONS, cells[2:], strict=True) if c == "+"})
    builtin = [getattr(importlib.import_module(module), attr) for module, attr in (e.split(":") for e in BUILTIN)]
    for m in builtin:
        row = f"| `{m.name}` | {m.kind} | " + " | ".join("+" if t in m.invariant_to else "-" for t in TRANSFORMATIONS) + " |"
        assert documented.get(m.name) == (m.kind, set(m.invariant_to)), f"docs/quantities.md needs the row {row}"
    assert set(documented) == {m.name for m in builtin}, "docs/quantities.md lists a measure that is not registered"


def test_every_measure_declares_every_transformation():
    for name, m in table().items():
        assert not m.invariant_to & m.not_invariant_to, name
        assert m.invariant_to | m.not_invariant_to == set(TRANSFORMS), f"{name}: undeclared {set(TRANSFORMS) - m.invariant_to - m.not_invariant_to}"


@pytest.mark.parametrize(("measure", "transform", "invariant"), CASES, ids=[f"{m}-{t}" for m, t, _ in CASES])
def test_invariance_table(measure, transform, invariant):
    check_case(table()[measure], transform, invariant)


@pytest.mark.parametrize("measure", sorted(table()))
def test_permuting_both_sides_the_same_way_changes_nothing(measure):
    f = table()[measure]
    assert f(A[_ROWS], B[_ROWS]) == pytest.approx(f(A, B), abs=1e-9)


@pytest.mark.parametrize("measure", sorted(table()))
def test_identical_representations_give_one_or_zero(measure):
    check_identical(table()[measure])


@pytest.mark.parametrize("measure", sorted(table()))
def test_every_layer_pair_at_once_equals_each_pair(measure):
    """``Measure.matrix`` (a measure's own fast route, or one call per pair) equals the measure of
    each pair of layers, and ``reps_b=None`` compares the layers with themselves."""
    m = table()[measure]
    reps_a = {"a0": A, "a1": B, "a2": A.cos() @ _M}
    reps_b = {"b0": B, "b1": A @ _Q + 1.0}
    df = m.matrix(reps_a, reps_b)
    assert list(df.index) == list(reps_a) and list(df.columns) == list(reps_b) and df.attrs["measure"] == measure
    expected = [[m(xa, xb) for xb in reps_b.values()] for xa in reps_a.values()]
    np.testing.assert_allclose(df.to_numpy(), expected, rtol=1e-10, atol=1e-12)
    same = m.matrix(reps_a).to_numpy()
    np.testing.assert_allclose(np.diag(same), m.identical, atol=1e-9)
    with pytest.raises(ConfigError, match="non-empty dict"):
        m.matrix({}, reps_b)


def test_a_measure_with_a_wrong_declaration_cannot_be_built():
    ok = dict(fn=lambda a, b: 0.0, kind="distance", label="x")
    with pytest.raises(ConfigError, match="missing"):
        Measure("x", invariant_to={"orthogonal"}, not_invariant_to=set(), **ok)
    with pytest.raises(ConfigError, match="unknown"):
        Measure("x", invariant_to=set(TRANSFORMATIONS) | {"rotation"}, not_invariant_to=set(), **ok)
    with pytest.raises(ConfigError, match="in both"):
        Measure("x", invariant_to=set(TRANSFORMATIONS), not_invariant_to={"orthogonal"}, **ok)
    with pytest.raises(ConfigError, match="kind"):
        Measure("x", fn=ok["fn"], kind="similar", invariant_to=set(TRANSFORMATIONS), not_invariant_to=set(), label="x")
    with pytest.raises(ConfigError, match="registered already"):
        register(get_measure("linear_cka"))


# --------------------------------------------------------------------------- a new measure, registered in one line


def _centred_norm(x) -> float:
    t = torch.as_tensor(x, dtype=torch.float64)
    t = t.reshape(t.shape[0], -1)
    return float(torch.linalg.matrix_norm(t - t.mean(dim=0)))


def log_norm_ratio(a, b) -> float:
    """A toy distance: |log(||A_c||_F / ||B_c||_F)| of the column-centred sides."""
    return abs(math.log(_centred_norm(a) / _centred_norm(b)))


@pytest.fixture
def toy():
    measure = register(Measure("log_norm_ratio", log_norm_ratio, "distance", {"orthogonal", "translation", "feature_permutation", "sample_shuffle"}, {"isotropic_scale", "invertible_linear"}, "log ratio of centred norms"))  # noqa: E501
    yield measure
    unregister(measure.name)


def _conv_net():
    """A small CNN (another model family than the ViT) on 16 x 16 images."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3, stride=2),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(6 * 7 * 7, 5))
    return load_model(net, layers=["0", "2", "5"], input_size=(3, 16, 16))


def test_a_registered_measure_is_in_the_table(toy):
    assert "log_norm_ratio" in measure_names() and get_measure("log_norm_ratio") is toy
    rows = [c for c in cases(table()) if c[0] == toy.name]
    assert {t for _, t, _ in rows} == set(TRANSFORMS)
    for _, transform, invariant in rows:
        check_case(toy, transform, invariant)
    check_identical(toy)


def test_a_registered_measure_works_in_the_api(toy, make_vit, make_pool):
    vit, cnn, x = make_vit(0), _conv_net(), make_pool(20, 2)
    result = ftlens.CKA(vit, cnn, measure="log_norm_ratio").compare(x)
    ra, rb = vit.representations(x), cnn.representations(x)
    expected = np.array([[log_norm_ratio(a, b) for b in rb.values()] for a in ra.values()])
    np.testing.assert_allclose(result.matrix.to_numpy(), expected, rtol=1e-12)
    assert list(result.matrix.index) == list(ra) and list(result.matrix.columns) == list(rb)
    assert result.config["measure"] == "log_norm_ratio" and result.config["measure_kind"] == "distance"
    assert "estimator" not in result.config and "log ratio of centred norms" in result._repr_html_()
    same = ftlens.CKA(vit, vit, measure=toy).compare(x).matrix.to_numpy()
    np.testing.assert_allclose(np.diag(same), 0.0, atol=1e-12)  # a model with itself: distance 0
    assert result.plot() is not None
    # the default is unchanged: linear CKA from cka_matrix
    default = ftlens.CKA(vit, cnn).compare(x)
    np.testing.assert_array_equal(default.matrix.to_numpy(), ftlens.cka_matrix(ra, rb).to_numpy())
    assert default.config["estimator"] == "biased" and default.config["similarity"] == "linear CKA (biased HSIC), float64"


def test_a_registered_measure_works_in_the_cli(toy, make_vit, tmp_path):
    model = str(save_checkpoint(make_vit(0), tmp_path / "vit.safetensors"))
    out = tmp_path / "toy"
    result = CliRunner().invoke(app, ["cka", model, model, "--measure", "log_norm_ratio", "--data", "digits",
                                      "--images", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    loaded = ftlens.load_cka(out)
    assert loaded.config["measure"] == "log_norm_ratio" and loaded.matrix.shape == (4, 4)
    np.testing.assert_allclose(np.diag(loaded.matrix.to_numpy()), 0.0, atol=1e-12)  # same model: distance 0


def test_an_unknown_measure_is_one_line_naming_the_known_ones(make_vit):
    result = CliRunner().invoke(app, ["cka", "ftlens:vit-micro", "ftlens:vit-micro", "--measure", "nope"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "unknown similarity measure 'nope'" in lines[0] and "procrustes_distance" in lines[0]
    with pytest.raises(ConfigError, match="known measures: linear_cka, "):
        ftlens.CKA(make_vit(0), make_vit(0), measure="nope")
    with pytest.raises(ConfigError, match="debiased"):
        ftlens.CKA(make_vit(0), make_vit(0), measure="procrustes_distance", debiased=True)
