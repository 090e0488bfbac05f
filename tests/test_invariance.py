"""STIR, learning, forgetting, cka divergence and InvarianceFlow (ALGORITHMS.md §4): values."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ftlens.errors import ImageError, LayerError
from ftlens.invariance import (
    FINETUNED,
    PRETRAINED,
    compare,
    load_comparison,
    plan_inversions,
    run_plan,
    stir,
)
from ftlens.inversion import cached as inversion_mod  # where cached_inversion looks up _invert
from ftlens.models import load_model
from ftlens.store import Cache

N_POOL = 40
N_IMAGES = 32
STEPS = 8
LAYERS = ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]

# pt (vit-micro seed 0) and ft (seed 1, a *different* model) come from conftest.py


@pytest.fixture(scope="module")
def pool(make_pool):
    return make_pool(N_POOL, 42)


@pytest.fixture(scope="module")
def cmp_different(pt, ft, pool):
    return compare(pt, ft, pool, seeds=2, n_images=N_IMAGES, steps=STEPS, cache=None, progress=False)


class _Killed(Exception):
    """Stands for the process being killed in the middle of a run."""


class _Counter(list):
    """The inversions actually computed (cache misses); can simulate a kill after k of them."""

    fail_after: int | None = None


@pytest.fixture
def counter(monkeypatch):
    calls = _Counter()
    real = inversion_mod._invert

    def counting(model, layer, images, settings, seed, **kw):
        calls.append((model.fingerprint, layer, seed))
        if calls.fail_after is not None and len(calls) > calls.fail_after:
            raise _Killed
        return real(model, layer, images, settings, seed, **kw)

    monkeypatch.setattr(inversion_mod, "_invert", counting)
    return calls


# ------------------------------------------------------------------------------ known answer


def _linear(weight: torch.Tensor):
    net = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    net[1].weight.data = weight.clone()
    return load_model(net, layers=["1"], input_size=(1, 8, 8))


def test_linear_toy_directionality():
    """reference = projection onto an 8-dim subspace of 64 pixels (invariant to the complement),
    target = identity. Inverting the projection leaves the complement at the start noise, which the
    identity sees: STIR(identity | projection) is far below 1. Inverting the identity recovers the
    images, so the projection sees no difference: STIR(projection | identity) ~ 1."""
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(64, 8, generator=g))
    projection = _linear(basis @ basis.T)
    identity = _linear(torch.eye(64))
    x = torch.rand(48, 1, 8, 8, generator=g)
    kw = dict(steps=200, cache=None, progress=False, schedule={"stop_residual": 0.01})  # converge fully
    id_given_proj = stir(identity, projection, x, **kw)
    proj_given_id = stir(projection, identity, x, **kw)
    s_ip = float(id_given_proj["stir"].iloc[0])
    s_pi = float(proj_given_id["stir"].iloc[0])
    assert s_ip < 0.75, s_ip  # measured 0.60
    assert s_pi > 0.995, s_pi  # measured 0.9998
    # both inversions converged: the directionality is not an optimisation failure
    assert float(id_given_proj["residual"].iloc[0]) < 0.05
    assert float(proj_given_id["residual"].iloc[0]) < 0.05


# ------------------------------------------------------------------------------ metrics


def test_exact_copy_gives_zero_everywhere(pt, pool):
    copy = pt.copy()
    c = compare(pt, copy, pool, seeds=2, n_images=N_IMAGES, steps=STEPS, cache=None, progress=False)
    pl = c.per_layer
    assert list(pl.index) == LAYERS
    assert (pl["learning"] == 0).all() and (pl["forgetting"] == 0).all()  # exactly: same inversions
    assert np.abs(pl["cka_divergence"].to_numpy()).max() < 1e-12
    # the first terms are measured, not hard-coded 1 (the inversion is imperfect after 8 steps)
    assert (pl["stir_pretrained_given_pretrained"] < 1).all() and (pl["stir_pretrained_given_pretrained"] > 0.9).all()
    assert np.abs(c.flow.to_numpy()).max() < 1e-3


def test_first_term_one_is_the_paper_form(pt, pool):
    c = compare(pt, pt.copy(), pool, seeds=1, n_images=N_IMAGES, steps=STEPS, cache=None, first_term="one",
                progress=False, layers=["blocks.0", "blocks.1"])
    pl = c.per_layer
    np.testing.assert_array_equal(pl["learning"], 1 - pl["stir_pretrained_given_finetuned"])
    np.testing.assert_array_equal(pl["forgetting"], 1 - pl["stir_finetuned_given_pretrained"])
    assert (pl["forgetting"] > 0).all()  # inversion error is no longer cancelled


def test_different_models_learn_and_forget(cmp_different):
    pl = cmp_different.per_layer
    assert pl["learning"].abs().max() > 1e-3
    assert pl["forgetting"].abs().max() > 1e-3
    assert (pl["cka_divergence"] > 1e-3).all()
    # std over the 2 seeds is reported, and the terms are consistent with the STIR matrices
    assert pl["learning_std"].notna().all()
    m_fp = cmp_different.stir_matrix(FINETUNED, PRETRAINED)
    m_pp = cmp_different.stir_matrix(PRETRAINED, PRETRAINED)
    np.testing.assert_allclose(pl["forgetting"], np.diag(m_pp) - np.diag(m_fp), atol=1e-12)


def test_self_stir_rises_toward_one_with_steps(pt, pool):
    values = []
    for steps in (1, 4, 30):
        df = stir(pt, pt, pool[:N_IMAGES], target_layers=["blocks.1"], reference_layers=["blocks.1"], steps=steps,
                  cache=None, progress=False)
        values.append(float(df["stir"].iloc[0]))
    assert values[0] < values[1] < values[2], values
    assert values[2] > 0.99, values


def test_flow_diagonal_zero_antisymmetric_and_definitions(cmp_different):
    flow = cmp_different.flow.to_numpy()
    rel = cmp_different.flow_relative.to_numpy()
    assert (np.diag(flow) == 0).all() and (np.diag(rel) == 0).all()  # exactly
    assert (flow == -flow.T).all()  # eq. 5 is antisymmetric, exactly
    assert np.abs(flow).max() > 0
    # the definitions, entry by entry, from the STIR matrix M[a, b] = STIR(ft^[a] | pt^[b])
    m = cmp_different.stir_matrix(FINETUNED, PRETRAINED).to_numpy()
    for i in range(len(LAYERS)):
        for j in range(len(LAYERS)):
            assert flow[i, j] == pytest.approx(m[j, i] - m[i, j], abs=1e-12)
            assert rel[i, j] == pytest.approx(m[j, i] - m[i, i], abs=1e-12)
    assert cmp_different.flow.index.name == "pretrained_layer"
    assert cmp_different.flow.columns.name == "finetuned_layer"


def test_tables_are_tidy(cmp_different):
    s = cmp_different.stir
    assert {"target", "reference", "target_layer", "reference_layer", "seed", "stir", "residual"} <= set(s.columns)
    assert len(s) == 4 * 2 * len(LAYERS) ** 2  # 4 (target, reference) pairs x 2 seeds x L x L
    assert set(s["estimator"]) == {"biased"}
    assert cmp_different.inversions.shape[0] == 2 * 2 * len(LAYERS)
    assert set(cmp_different.stir_matrices) == {(t, r) for t in (PRETRAINED, FINETUNED) for r in (PRETRAINED, FINETUNED)}
    summary = cmp_different.summary()
    assert list(summary["layer_number"]) == [1, 2, 3, 4]


# ------------------------------------------------------------------------------ cost and cache


def test_two_l_inversions_per_seed_and_shared_by_targets(pt, ft, pool, counter, make_vit):
    compare(pt, ft, pool, seeds=2, n_images=16, steps=1, cache=None, progress=False)
    assert len(counter) == 2 * len(LAYERS) * 2  # 2L per seed, not L^2
    counter.clear()
    third = make_vit(2)
    df = stir([ft, third], pt, pool[:16], seeds=1, steps=1, cache=None, progress=False)
    assert len(counter) == len(LAYERS)  # one inversion per reference layer serves both targets
    assert df["target"].nunique() == 2 and len(df) == 2 * len(LAYERS) ** 2


def test_cache_reuse_dynamics_and_resumption(pt, ft, pool, tmp_path, counter, make_vit):
    cache = Cache(tmp_path / "cache")
    kw = dict(seeds=2, n_images=16, steps=2, cache=cache, progress=False, layers=["blocks.0", "blocks.2"])
    first = compare(pt, ft, pool, **kw)
    assert len(counter) == 8 and first.config["n_inversions_computed"] == 8
    counter.clear()
    again = compare(pt, ft, pool, **kw)
    assert len(counter) == 0 and again.config["n_inversions_computed"] == 0  # no inversion at all
    pd.testing.assert_frame_equal(first.per_layer, again.per_layer)
    # another finetuned model (another epoch): only its own inversions, the pretrained side is cached
    epoch2 = make_vit(3)
    compare(pt, epoch2, pool, **kw)
    assert len(counter) == 4 and all(fp == epoch2.fingerprint for fp, _, _ in counter)
    assert {(layer, seed) for _, layer, seed in counter} == {(la, s) for la in ("blocks.0", "blocks.2") for s in (0, 1)}
    # changing steps or seeds invalidates exactly what depends on it
    counter.clear()
    compare(pt, ft, pool, **{**kw, "seeds": [1, 2]})
    assert len(counter) == 4 and {s for *_, s in counter} == {2}
    # a run killed after 3 inversions resumes: the next run computes only the rest
    counter.clear()
    counter.fail_after = 3
    with pytest.raises(_Killed):
        compare(pt, ft, pool, **{**kw, "steps": 3})
    assert len(counter) == 4  # the 4th call raised
    counter.clear()
    counter.fail_after = None
    resumed = compare(pt, ft, pool, **{**kw, "steps": 3})
    assert len(counter) == 8 - 3 and resumed.config["n_inversions_computed"] == 5


def test_plan_and_run_items_separately(pt, ft, pool, tmp_path):
    """The sharding shape: plan -> run a subset of items per worker -> merge from the cache."""
    cache = Cache(tmp_path)
    plan = plan_inversions({PRETRAINED: pt, FINETUNED: ft}, pool, layers=["blocks.0", "blocks.1"], seeds=[0, 1],
                           n_images=16)
    assert len(plan.items) == 8 and len(plan.unique_keys) == 8
    assert plan.samples[0] != plan.samples[1]  # each seed draws its own sample of the pool
    run_plan(plan, pool, items=plan.items[::2], cache=cache, progress=False)
    run_plan(plan, pool, items=plan.items[1::2], cache=cache, progress=False)
    merged = run_plan(plan, pool, cache=cache, progress=False)
    assert all(inv.cached for inv in merged.values())


# ------------------------------------------------------------------------------ errors


def test_clear_errors(pt, pool):
    shallow = load_model("ftlens:vit-micro", depth=2)
    with pytest.raises(LayerError, match=r"blocks\.2.*missing"):
        compare(pt, shallow, pool, seeds=1, n_images=8, steps=1, cache=None)
    with pytest.raises(LayerError, match="blocks.7"):
        compare(pt, pt, pool, layers=["blocks.7"], seeds=1, n_images=8, steps=1, cache=None)
    bigger = load_model("ftlens:vit-micro", img_size=32)
    with pytest.raises(ImageError, match="input sizes"):
        compare(pt, bigger, pool, seeds=1, n_images=8, steps=1, cache=None)
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        compare(pt, pt, pool * 255, seeds=1, n_images=8, steps=1, cache=None)
    with pytest.raises(ImageError, match=f"only {N_POOL} images"):
        compare(pt, pt, pool, seeds=1, n_images=500, steps=1, cache=None)
    with pytest.raises(ValueError, match="first_term"):
        compare(pt, pt, pool, first_term="two", cache=None)


# ------------------------------------------------------------------------------ save, load, plots


def test_save_load_roundtrip_and_plots(cmp_different, tmp_path):
    out = cmp_different.save(tmp_path / "cmp")
    cfg = json.loads((out / "comparison.json").read_text())
    assert {"torch", "timm", "ftlens", "numpy"} <= set(cfg["versions"])
    assert cfg["pretrained"]["fingerprint"] != cfg["finetuned"]["fingerprint"]
    assert cfg["seeds"] == [0, 1] and cfg["inversion"]["steps"] == STEPS and "timings" in cfg
    loaded = load_comparison(out)
    pd.testing.assert_frame_equal(loaded.per_layer, cmp_different.per_layer, check_exact=True)
    pd.testing.assert_frame_equal(loaded.flow, cmp_different.flow, check_exact=True)
    pd.testing.assert_frame_equal(loaded.flow_relative, cmp_different.flow_relative, check_exact=True)

    from ftlens.report.invariance_plots import flow_heatmap, metrics_figure, save_comparison_plots

    fig = metrics_figure(cmp_different)
    assert len(fig.axes) == 3 and "biased" in fig._suptitle.get_text()
    assert fig.axes[0].get_xlabel() == "layer"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "2", "3", "4"]
    hm = flow_heatmap(cmp_different)
    assert hm.axes[0].get_xlabel().startswith("finetuned") and hm.axes[0].get_ylabel().startswith("pretrained")
    paths = save_comparison_plots(cmp_different, tmp_path / "plots")
    assert all(p.exists() and p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_cli_compare(tmp_path):
    from typer.testing import CliRunner

    from ftlens.cli import app

    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, [
        "compare", "--pretrained", "ftlens:vit-micro", "--finetuned", "ftlens:vit-micro", "--data", "digits",
        "--images", "8", "--steps", "1", "--seeds", "1", "--layers", "blocks.0,blocks.1", "--no-cache",
        "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "learning" in result.output and "biased HSIC" in result.output
    for name in ("comparison.json", "per_layer.csv", "stir.csv", "flow.csv", "metrics.png", "flow.png"):
        assert (out / name).exists(), name
    assert load_comparison(out).layers == ["blocks.0", "blocks.1"]
    bad = CliRunner().invoke(app, [
        "compare", "--pretrained", "ftlens:vit-micro", "--finetuned", "ftlens:vit-micro", "--data", "digits",
        "--images", "8", "--steps", "1", "--seeds", "1", "--layers", "blocks.9", "--no-cache", "--out", str(out),
    ])
    assert bad.exit_code == 2 and "blocks.9" in bad.output
