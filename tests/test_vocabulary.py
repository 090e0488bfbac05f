"""One vocabulary in every table (docs/quantities.md, "Vocabulary"), and results of earlier versions still load."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ftlens.invariance import compare, load_comparison
from ftlens.vocabulary import LEGACY_COLUMNS, upgrade_columns

LAYERS = ["blocks.1", "blocks.3"]  # a subset: its numbers are 2 and 4, not 1 and 2


@pytest.fixture(scope="module")
def cmp(pt, ft, make_pool):
    return compare(pt, ft, make_pool(24, 5), layers=LAYERS, seeds=2, n_images=8, steps=3, cache=None,
                   progress=False, bootstrap=5)


def test_every_table_names_its_layers_and_their_true_numbers(cmp, tmp_path):
    numbers = {"blocks.1": 2, "blocks.3": 4}
    assert cmp.per_layer["layer_number"].to_dict() == numbers
    assert dict(zip(cmp.per_seed["layer"], cmp.per_seed["layer_number"], strict=True)) == numbers
    for table, sides in ((cmp.stir, ("target_layer", "reference_layer")), (cmp.cka, ("layer", "pretrained_layer")),
                         (cmp.inversions, ("reference_layer",)), (cmp.bootstrap, ("layer",))):
        for side in sides:
            assert dict(zip(table[side], table[f"{side}_number"], strict=True)) == numbers, side
    assert set(cmp.cka["model"]) == {"pretrained", "finetuned"}
    assert "4 (blocks.3)" in cmp._repr_html_() and "2 (blocks.1)" in cmp._repr_html_()
    from ftlens.similarity import cka_matrix

    pair = cka_matrix({"a": cmp.flow.to_numpy()}, {"b": cmp.flow.to_numpy()})
    assert (pair.index.name, pair.columns.name) == ("first_layer", "second_layer")
    assert cmp.flow.index.name == "pretrained_layer" and cmp.flow.columns.name == "finetuned_layer"
    m = cmp.stir_matrix("finetuned", "pretrained")
    assert (m.index.name, m.columns.name) == ("target_layer", "reference_layer")
    assert m.attrs["target"] == "finetuned" and m.attrs["reference"] == "pretrained"
    # the per-layer STIR columns are stir_<target>_given_<reference>, read from the STIR table
    for target in ("pretrained", "finetuned"):
        for reference in ("pretrained", "finetuned"):
            sub = cmp.stir[(cmp.stir["target"] == target) & (cmp.stir["reference"] == reference)
                           & (cmp.stir["target_layer"] == cmp.stir["reference_layer"])]
            expected = sub.groupby("target_layer")["stir"].mean().reindex(LAYERS)
            np.testing.assert_allclose(cmp.per_layer[f"stir_{target}_given_{reference}"], expected, rtol=0, atol=1e-15)
    # no saved table uses an old name or an abbreviated role
    out = cmp.save(tmp_path / "cmp")
    for path in out.glob("*.csv"):
        header = pd.read_csv(path, nrows=0).columns
        assert not set(header) & set(LEGACY_COLUMNS), path.name
        assert not [c for c in header if c.endswith(("_pt", "_ft")) or "_pt_" in c or "_ft_" in c], path.name


def _as_written_by_the_previous_version(folder):
    """Rewrite a saved comparison's tables with the column names of the previous version."""
    old = {new: old for old, new in LEGACY_COLUMNS.items()}
    cka = pd.read_csv(folder / "cka.csv")
    cka = cka.drop(columns=["layer_number", "pretrained_layer_number"])
    cka.insert(2, "model_b", "pretrained")
    cka = cka.rename(columns={"model": "model_a", "layer": "layer_a", "pretrained_layer": "layer_b"})
    assert list(cka.columns[:5]) == ["model_a", "layer_a", "model_b", "layer_b", "seed"]
    cka.to_csv(folder / "cka.csv", index=False)
    stir = pd.read_csv(folder / "stir.csv").drop(columns=["target_layer_number", "reference_layer_number"])
    stir.to_csv(folder / "stir.csv", index=False)
    inv = pd.read_csv(folder / "inversions.csv").drop(columns=["reference_layer_number"])
    inv.to_csv(folder / "inversions.csv", index=False)
    for name in ("per_layer.csv", "per_seed.csv"):
        table = pd.read_csv(folder / name)
        table.rename(columns=old).drop(columns=["layer_number"]).to_csv(folder / name, index=False)
    assert "stir_pt_pt" in pd.read_csv(folder / "per_layer.csv").columns


def test_a_comparison_saved_by_the_previous_version_loads_with_the_current_names(cmp, tmp_path):
    folder = cmp.save(tmp_path / "old")
    _as_written_by_the_previous_version(folder)
    back = load_comparison(folder)
    pd.testing.assert_frame_equal(back.per_layer, cmp.per_layer)
    pd.testing.assert_frame_equal(back.per_seed, cmp.per_seed)
    pd.testing.assert_frame_equal(back.cka[cmp.cka.columns], cmp.cka, check_dtype=False)
    pd.testing.assert_frame_equal(back.stir[cmp.stir.columns], cmp.stir, check_dtype=False)
    np.testing.assert_array_equal(back.flow_corrected.to_numpy(), cmp.flow_corrected.to_numpy())


def test_old_dynamics_tables_and_cka_results_read_with_the_current_names(tmp_path):
    from ftlens.analysis.dynamics import read_dynamics
    from ftlens.cka import load_cka

    old = pd.DataFrame({"epoch": [0, 1], "layer": ["blocks.0"] * 2, "stir_pt_pt": [0.9, 0.8],
                        "stir_ft_given_pt": [0.7, 0.6], "residual_ft": [0.1, 0.2]})
    old.to_csv(tmp_path / "dynamics.csv", index=False)
    new = read_dynamics(tmp_path / "dynamics.csv")
    assert list(new.columns) == ["epoch", "layer", "stir_pretrained_given_pretrained",
                                 "stir_finetuned_given_pretrained", "residual_finetuned"]
    np.testing.assert_array_equal(new["stir_finetuned_given_pretrained"], [0.7, 0.6])
    assert upgrade_columns(new) is new  # already current: unchanged

    folder = tmp_path / "cka"
    folder.mkdir()
    pd.DataFrame([[1.0, 0.5], [0.5, 1.0]], index=pd.Index(["blocks.0", "blocks.1"], name="layer_a"),
                 columns=["blocks.0", "blocks.1"]).to_csv(folder / "cka.csv")
    (folder / "cka.json").write_text(json.dumps({"kind": "ftlens.cka", "model_a": "A", "model_b": "B",
                                                 "spec_a": "a", "spec_b": "b", "estimator": "biased"}))
    result = load_cka(folder)
    assert {k: result.config[k] for k in ("first", "second", "first_spec", "second_spec")} == {
        "first": "A", "second": "B", "first_spec": "a", "second_spec": "b"}
    assert (result.matrix.index.name, result.matrix.columns.name) == ("first_layer", "second_layer")
    assert result.matrix.loc["blocks.0", "blocks.1"] == 0.5
