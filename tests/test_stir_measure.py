"""STIR with another similarity measure (``ftlens.compare(..., measure=NAME)``, ``ftlens compare --measure``):
the inversions are the same, the measure is applied to the clean and inverted representations."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import ftlens
from ftlens.cli import app
from ftlens.errors import ConfigError, DegenerateRepresentationWarning
from ftlens.models import save_checkpoint
from ftlens.similarity import Measure, get_measure, linear_cka, register, unregister

runner = CliRunner()
KW = dict(seeds=1, n_images=12, steps=3, cache=None, progress=False)


@pytest.fixture
def spy():
    """Linear CKA computed from the representations (not the Grams), recording what it was given."""
    calls = []

    def fn(a, b):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return linear_cka(a, b)

    measure = register(Measure("spy_cka", fn, "similarity", get_measure("linear_cka").invariant_to,
                               get_measure("linear_cka").not_invariant_to, "linear CKA from features"))
    yield measure, calls
    unregister(measure.name)


def test_a_measure_in_stir_sees_clean_and_inverted_representations(pt, ft, make_pool, spy):
    measure, calls = spy
    x = make_pool(16, 0)
    default = ftlens.stir(ft, pt, x, **KW)
    routed = ftlens.stir(ft, pt, x, measure="spy_cka", **KW)
    # the same inversions, the same numbers: the Gram route and the representation route agree
    np.testing.assert_allclose(routed["stir"], default["stir"], rtol=1e-10, atol=1e-12)
    assert set(routed["estimator"]) == {"spy_cka"} and set(default["estimator"]) == {"biased"}
    width = ft.representations(x[:2], ["blocks.0"])["blocks.0"].shape[1]
    assert calls and all(a == (12, width) and b == (12, width) for a, b in calls)
    assert len(calls) == len(routed)  # one call per (target layer, reference layer)


def test_compare_with_another_measure(make_vit, make_pool):
    pt, ft = make_vit(0, tokens="mean"), make_vit(1, tokens="mean")  # 32 features: CCA is well posed on 80 images
    x = make_pool(80, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateRepresentationWarning)
        cmp = ftlens.compare(pt, ft, x, measure="svcca", bootstrap=50, **{**KW, "n_images": 80})
    assert cmp.config["measure"] == "svcca" and cmp.estimator == "svcca" and cmp.config["bootstrap"] == 0
    assert cmp.config["similarity"].startswith("SVCCA") and cmp.bootstrap is None
    # the clean-image column is the measure: cka divergence = 1 - SVCCA(ft, pt) on the seed's images
    idx = cmp.config["samples"]["0"]
    ra, rb = ft.representations(x[idx]), pt.representations(x[idx])
    m = get_measure("svcca")
    expected = pd.Series({layer: 1.0 - m(ra[layer], rb[layer]) for layer in cmp.layers})
    np.testing.assert_allclose(cmp.per_layer["cka_divergence"], expected[cmp.per_layer.index], rtol=1e-10)
    assert (expected > 0.05).all() and cmp.per_layer["forgetting"].abs().max() > 0  # not trivially 1
    # an exact copy: nothing learned, forgotten or diverged, whatever the measure
    same = ftlens.compare(pt, pt.copy(), x, measure="mutual_knn", **KW)
    assert (same.per_layer[["learning", "forgetting"]] == 0.0).all().all()
    np.testing.assert_allclose(same.per_layer["cka_divergence"], 0.0, atol=1e-12)
    # linear_cka by name is the default route
    named = ftlens.compare(pt, ft, x, measure="linear_cka", **KW)
    plain = ftlens.compare(pt, ft, x, **KW)
    pd.testing.assert_frame_equal(named.per_layer, plain.per_layer)


def test_a_distance_or_a_contradiction_is_refused(pt, make_pool):
    x = make_pool(8, 0)
    with pytest.raises(ConfigError, match="STIR needs a similarity.*procrustes_distance.*distance"):
        ftlens.compare(pt, pt, x, measure="procrustes_distance", **KW)
    with pytest.raises(ConfigError, match="CKA estimator"):
        ftlens.compare(pt, pt, x, measure="svcca", debiased=True, **KW)
    with pytest.raises(ConfigError, match="unknown similarity measure 'nope'"):
        ftlens.stir(pt, pt, x, measure="nope", **KW)


def test_compare_cli_takes_a_measure_and_the_report_names_it(pt, ft, tmp_path):
    a, b = save_checkpoint(pt, tmp_path / "a.safetensors"), save_checkpoint(ft, tmp_path / "b.safetensors")
    out = tmp_path / "c"
    args = ["compare", "--pretrained", str(a), "--finetuned", str(b), "--data", "digits", "--images", "12",
            "--seeds", "1", "--steps", "2", "--no-cache", "--no-plots", "--out", str(out)]
    result = runner.invoke(app, [*args, "--measure", "rsa_euclidean_pearson"])
    assert result.exit_code == 0, result.output
    assert "RSA (euclidean RDM, Pearson correlation)" in result.output
    cmp = ftlens.load_comparison(out)
    assert cmp.config["measure"] == "rsa_euclidean_pearson" and (out / "weights" / "weights.json").is_file()
    page = ftlens.build_report(out).read_text()
    assert "STIR by rsa_euclidean_pearson" in page
    bad = runner.invoke(app, [*args, "--measure", "procrustes_distance"])
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert bad.exit_code == 2 and len(lines) == 1 and "STIR needs a similarity" in lines[0], bad.output



def test_dynamics_cli_takes_a_measure(pt, tmp_path):
    from ftlens.finetune import finetune

    base = save_checkpoint(pt, tmp_path / "pt.safetensors")
    run = finetune(pretrained_from=str(base), data="digits", batch_size=64, warmup_steps=2, train_size=128,
                   test_size=64, epochs=1, lr=0.05, progress=False, out=str(tmp_path / "run"))
    out = tmp_path / "dyn"
    result = runner.invoke(app, ["dynamics", str(run.run_dir), "--measure", "mutual_knn", "--images", "12", "--seeds",
                                 "1", "--steps", "2", "--no-cache", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "dynamics.csv")
    assert set(table["estimator"]) == {"mutual_knn"} and sorted(table["epoch"].unique()) == [0, 1]
    assert ftlens.io.read_json(out / "dynamics.json")["measure"] == "mutual_knn"
    assert (table[table["epoch"] == 0][["learning", "forgetting"]] == 0.0).all().all()
