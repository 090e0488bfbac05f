"""Numbers a researcher can trust: null baselines, intervals, the convergence gate, the pool policy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ftlens.invariance import compare, load_comparison
from ftlens.invariance.pool import image_pool, pool_size, sample_indices
from ftlens.invariance.score import bootstrap_cka, bootstrap_indices
from ftlens.similarity import cka_from_grams, gram_linear
from ftlens.stats import HELD, INCONCLUSIVE, NOT_HELD, decide, t_interval, welch_interval

LAYERS = ["blocks.0", "blocks.1", "blocks.3"]
KW = dict(layers=LAYERS, n_images=16, steps=4, cache=None, progress=False)


@pytest.fixture(scope="module")
def pool(make_pool):
    return make_pool(96, 11)


@pytest.fixture(scope="module")
def copy_cmp(pt, pool):
    return compare(pt, pt.copy(), pool, seeds=2, **KW)


def test_copy_has_zero_corrected_flow_and_its_raw_flow_is_the_baseline(copy_cmp):
    for raw, base, corr in (("flow", "flow_baseline", "flow_corrected"),
                            ("flow_relative", "flow_relative_baseline", "flow_relative_corrected")):
        assert (getattr(copy_cmp, corr).to_numpy() == 0).all()  # exactly
        pd.testing.assert_frame_equal(getattr(copy_cmp, base), getattr(copy_cmp, raw), check_exact=True)
    # the baseline is not trivially zero: STIR is directional, a model with itself has a flow
    assert np.abs(copy_cmp.flow_baseline.to_numpy()).max() > 1e-4


def test_baseline_comes_from_the_pretrained_model_alone(pt, ft, pool, copy_cmp):
    other = compare(pt, ft, pool, seeds=2, **KW)
    # same pretrained model, images, seeds and settings: the same baseline, whatever the finetuned model
    pd.testing.assert_frame_equal(other.flow_baseline, copy_cmp.flow_baseline, check_exact=True)
    np.testing.assert_allclose(other.flow_corrected.to_numpy(),
                               other.flow.to_numpy() - other.flow_baseline.to_numpy(), atol=1e-12)
    assert np.abs(other.flow_corrected.to_numpy()).max() > 1e-5  # a different model: not 0
    # by definition, from the STIR matrix of the pretrained model with itself
    m = other.stir_matrix("pretrained", "pretrained").to_numpy()
    np.testing.assert_allclose(other.flow_baseline.to_numpy(), m.T - m, atol=1e-12)


def test_seeds_use_different_images_when_the_pool_allows(pt, pool):
    c = compare(pt, pt.copy(), pool, seeds=3, **KW)
    samples = [set(c.config["samples"][str(s)]) for s in (0, 1, 2)]
    assert all(len(s) == 16 for s in samples)
    assert not (samples[0] & samples[1] or samples[0] & samples[2] or samples[1] & samples[2])  # disjoint
    # a seed's images do not depend on how many other seeds there are (cache keys stay valid)
    assert sample_indices(96, 16, 2) == sorted(c.config["samples"]["2"])
    # a pool too small for disjoint samples still gives each seed its own draw
    assert sample_indices(20, 16, 0) != sample_indices(20, 16, 1)
    assert pool_size(10_000, 500, 3) == 1500 and pool_size(1200, 500, 3) == 1200  # capped by the data


def test_image_pool_draws_enough_for_every_seed_and_records_indices():
    from ftlens.data import get_dataset

    ds = get_dataset("digits", split="test", image_size=(16, 16))
    p = image_pool(ds, 20, 3)
    assert p.images.shape[0] == 60 and len(set(p.indices)) == 60
    x_direct, _ = ds.tensors() if hasattr(ds, "tensors") else (None, None)
    if x_direct is not None:
        assert (x_direct[p.indices] == p.images).all()
    assert p.describe()["pool_size"] == 60


def test_intervals_shrink_with_more_seeds(pt, ft, pool):
    widths = {}
    for k in (2, 6):
        c = compare(pt, ft, pool, seeds=k, **KW)
        pl = c.per_layer
        assert (pl["forgetting_lo"] <= pl["forgetting"]).all() and (pl["forgetting"] <= pl["forgetting_hi"]).all()
        widths[k] = float(np.mean([(pl[f"{m}_hi"] - pl[f"{m}_lo"]).mean()
                                   for m in ("learning", "forgetting", "cka_divergence")]))
    assert widths[6] < 0.6 * widths[2], widths


def test_one_seed_still_has_a_bootstrap_interval(pt, ft, pool):
    c = compare(pt, ft, pool, seeds=1, **KW)
    pl = c.per_layer
    assert pl["cka_divergence_std"].isna().all()  # no spread over one seed
    assert (pl["cka_divergence_hi"] > pl["cka_divergence_lo"]).all()  # but images were resampled
    assert c.bootstrap is not None and c.bootstrap["replicate"].nunique() == c.config["bootstrap"]
    # saved and loaded: the same intervals
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        back = load_comparison(c.save(d))
    pd.testing.assert_frame_equal(back.per_layer, c.per_layer, check_exact=True)
    pd.testing.assert_frame_equal(back.flow_corrected, c.flow_corrected, check_exact=True)


def test_bootstrap_cka_is_cka_of_the_resampled_rows(make_pool):
    base = make_pool(12, 3).flatten(1).double()
    index = bootstrap_indices(12, 7, seed=0)
    assert not (index[0] == index[1]).all()
    for x in (base, base + 50.0):  # features with a large mean: no cancellation
        y = x @ torch_rand(x.shape[1], 5)
        k, l = gram_linear(x), gram_linear(y)  # noqa: E741
        fast = bootstrap_cka(k, l, index)
        for b in range(7):
            i = index[b]
            slow = cka_from_grams(gram_linear(x[i]), gram_linear(y[i]))
            assert float(fast[b]) == pytest.approx(slow, abs=1e-10)


def torch_rand(*shape):
    import torch

    return torch.rand(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_convergence_gate(pt, ft, pool):
    few = compare(pt, ft, pool, seeds=1, **{**KW, "steps": 1}, residual_threshold=0.05)
    assert not few.per_layer["converged"].any()
    lax = compare(pt, ft, pool, seeds=1, **{**KW, "steps": 1}, residual_threshold=10.0)
    assert lax.per_layer["converged"].all()
    pl = few.per_layer
    np.testing.assert_allclose(pl["residual_max"], np.fmax(pl["residual_pretrained"], pl["residual_finetuned"]))


def test_interval_and_verdict_rules():
    lo, hi = t_interval(np.array([1.0, 2.0, 3.0]))
    assert lo == pytest.approx(2 - 4.302652729 * 1 / np.sqrt(3)) and hi == pytest.approx(2 + 4.302652729 / np.sqrt(3))
    assert np.isnan(t_interval(np.array([1.0]))[0])
    assert welch_interval([1, 2, 3], [1, 2, 3])[0] < 0 < welch_interval([1, 2, 3], [1, 2, 3])[1]
    assert decide(0.1, 0.3) == (HELD, None)
    assert decide(-0.3, -0.1)[0] == NOT_HELD
    assert decide(-0.3, -0.1, direction="less")[0] == HELD
    assert decide(-0.1, 0.3)[0] == INCONCLUSIVE
    assert decide(0.1, 0.3, reasons=["only 1 seed"]) == (INCONCLUSIVE, "only 1 seed")
    assert decide(float("nan"), float("nan"))[0] == INCONCLUSIVE
    # equivalence: an interval inside (-margin, margin) excludes any effect of that size
    verdict, reason = decide(-0.004, 0.006, margin=0.01)
    assert verdict == NOT_HELD and "within +-0.01" in reason
    assert decide(-0.004, 0.012, margin=0.01)[0] == INCONCLUSIVE  # an effect of 0.012 is not excluded
    assert decide(-0.012, 0.004, margin=0.01)[0] == INCONCLUSIVE
    assert decide(-0.004, 0.006)[0] == INCONCLUSIVE  # no margin: as before
    assert decide(0.001, 0.006, margin=0.01) == (HELD, None)  # significance decides first
    assert decide(-0.004, 0.006, margin=0.01, reasons=["unconverged"])[0] == INCONCLUSIVE


# ------------------------------------------------------------------------------ verdicts on synthetic runs

CONFIG = {"runs": [{"name": "pt-start", "strategy": "ft"}, {"name": "from-zero", "strategy": "scratch"},
                   {"name": "lpft", "strategy": "lp-ft", "lr": 0.01}], "defaults": {"lr": 0.03}}


def _findings(monkeypatch, tmp_path, runs, config=CONFIG):
    from ftlens import findings as findings_mod

    monkeypatch.setattr(findings_mod, "_load", lambda out, name: runs.get(name))
    return {f["id"]: f for f in findings_mod.compute_findings(tmp_path, config)}


def test_a_known_effect_is_held_and_its_opposite_did_not_hold(monkeypatch, tmp_path, synthetic_comparison):
    forgets = synthetic_comparison([0.05] * 4, [0.2, 0.25, 0.3, 0.3], [0.01, 0.01, 0.1, 0.1])
    got = _findings(monkeypatch, tmp_path, {"pt-start": forgets})  # run roles from the configuration
    f = got["cka-misses-forgetting"]
    assert f["verdict"] == HELD and f["held"] is True and f["reason"] is None
    assert f["interval"][0] > 0 and f["statistic"] == pytest.approx(0.225 - 0.01, abs=0.01) and f["n_points"] == 3
    assert "seeds" in f["test"]
    aligned = synthetic_comparison([0.05] * 4, [0.01, 0.01, 0.3, 0.3], [0.2, 0.2, 0.1, 0.1])
    f = _findings(monkeypatch, tmp_path, {"pt-start": aligned})["cka-misses-forgetting"]
    assert f["verdict"] == NOT_HELD and f["held"] is False and f["interval"][1] < 0


def test_one_seed_two_epochs_or_unconverged_inversions_are_inconclusive(monkeypatch, tmp_path, synthetic_comparison):
    one_seed = synthetic_comparison([0.05] * 4, [0.2, 0.25, 0.3, 0.3], [0.01, 0.01, 0.1, 0.1], seeds=1)
    f = _findings(monkeypatch, tmp_path, {"pt-start": one_seed})["cka-misses-forgetting"]
    assert f["verdict"] == INCONCLUSIVE and f["held"] is None and "too few seeds" in f["reason"]
    unconverged = synthetic_comparison([0.05] * 4, [0.2, 0.25, 0.3, 0.3], [0.01, 0.01, 0.1, 0.1], residual=1.7)
    assert not unconverged.per_layer["converged"].any()
    f = _findings(monkeypatch, tmp_path, {"pt-start": unconverged})["cka-misses-forgetting"]
    assert f["verdict"] == INCONCLUSIVE and "unconverged" in f["reason"]
    # a perfect correlation over two epochs decides nothing
    (tmp_path / "correlation").mkdir()
    pd.DataFrame([{"hypothesis": "h", "r": 1.0, "p": 0.0, "p_bonferroni": 0.0, "n_epochs": 2, "n_hypotheses": 352,
                   "is_headline": True}]).to_csv(tmp_path / "correlation" / "pt-start.csv", index=False)
    f = _findings(monkeypatch, tmp_path, {})["forgetting-std-robustness-pt-start"]
    assert f["verdict"] == INCONCLUSIVE and "too few epochs" in f["reason"] and f["n_points"] == 2
    assert "352" in f["test"]  # the grid's correction


def test_compression_uses_the_corrected_flow(monkeypatch, tmp_path, synthetic_comparison):
    lower = np.tril(np.ones((4, 4)), -1) - np.triu(np.ones((4, 4)), 1)
    compress = synthetic_comparison([0.05] * 4, [0.1] * 4, [0.05] * 4, 0.2 * lower)
    f = _findings(monkeypatch, tmp_path, {"pt-start": compress})["compression-ft"]
    assert f["verdict"] == HELD and f["statistic"] == pytest.approx(0.2, abs=0.01)
    flat = synthetic_comparison([0.05] * 4, [0.1] * 4, [0.05] * 4, 0 * lower, noise=0.02)
    f = _findings(monkeypatch, tmp_path, {"pt-start": flat})["compression-ft"]
    assert f["verdict"] == INCONCLUSIVE and "contains the null" in f["reason"]


def test_confounded_strategy_comparison_lists_what_differs(tmp_path):
    from ftlens.findings import confounders, run_roles

    assert run_roles(CONFIG) == {"ft": "pt-start", "scratch": "from-zero", "reconstruction": None, "lp-ft": "lpft",
                                 "lp-ft-control": "pt-start"}
    assert confounders(CONFIG, "pt-start", "lpft") == ["lr: 0.03 vs 0.01"]
    pd.DataFrame([{"run": r, "split": s, "layer": "pre_logits", "measure": "mean_squared_difference", "value": v}
                  for r, s, v in (("pt-start", "ID", 2.0), ("pt-start", "OOD", 1.0), ("lpft", "ID", 0.5),
                                  ("lpft", "OOD", 0.4))]).to_csv(tmp_path / "distortion.csv", index=False)
    from ftlens.findings import compute_findings

    f = {x["id"]: x for x in compute_findings(tmp_path, CONFIG)}["lpft-distorts-less"]
    assert f["verdict"] == INCONCLUSIVE and "lr: 0.03 vs 0.01" in f["reason"]


def test_lp_ft_is_compared_with_its_control_arm_when_the_config_names_one(tmp_path):
    """An FT arm at LP-FT's settings (role lp_ft_control) removes the confounder; the ID-vs-OOD
    finding stays on the pretrained-start run."""
    from ftlens.findings import compute_findings, confounders, run_roles

    cfg = {**CONFIG, "runs": [*CONFIG["runs"], {"name": "ft-slow", "strategy": "ft", "lr": 0.01}],
           "roles": {"lp_ft_control": "ft-slow"}}
    assert run_roles(cfg)["lp-ft-control"] == "ft-slow" and run_roles(cfg)["ft"] == "pt-start"
    assert confounders(cfg, "ft-slow", "lpft") == []
    pd.DataFrame([{"run": r, "split": s, "layer": "pre_logits", "measure": "mean_squared_difference", "value": v}
                  for r, s, v in (("pt-start", "ID", 2.0), ("pt-start", "OOD", 1.0), ("ft-slow", "ID", 0.9),
                                  ("ft-slow", "OOD", 0.8), ("lpft", "ID", 0.5), ("lpft", "OOD", 0.4))]
                 ).to_csv(tmp_path / "distortion.csv", index=False)
    f = {x["id"]: x for x in compute_findings(tmp_path, cfg)}
    assert "'ft-slow', 'lpft'" in f["lpft-distorts-less"]["rule"]
    assert f["lpft-distorts-less"]["statistic"] == pytest.approx(0.9 - 0.5)
    assert "differ in more than" not in (f["lpft-distorts-less"]["reason"] or "")
    assert f["ft-distorts-id-more"]["statistic"] == pytest.approx(2.0 - 1.0)


# ------------------------------------------------------------------------------ ftlens validate


def _edge_net():
    """A small CNN with hand-set (non-random) edge filters: its features are far from a random init's."""
    import torch
    from torch import nn

    from ftlens.models import load_model

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    with torch.no_grad():
        k = torch.zeros(8, 3, 3, 3)
        for o in range(8):
            k[o, o % 3, 1, 1] = 1.0
            k[o, o % 3, 1, (o // 3) % 3] -= 0.8
        net[0].weight.copy_(k)
        net[0].bias.zero_()
        centre = torch.zeros(3, 3)
        centre[1, 1] = 1.0
        net[2].weight.copy_(torch.eye(8)[:, :, None, None] * centre)
        net[2].bias.zero_()
    return load_model(net, layers=["1", "3"], input_size=(3, 16, 16))


def test_validate_passes_on_a_structured_model_and_flags_failures():
    from ftlens.data import get_dataset
    from ftlens.validate import validate

    x = image_pool(get_dataset("digits", split="test", image_size=(16, 16)), 32, 2).images
    table = validate(_edge_net(), x, n_images=32, seeds=2, steps=30, cache=None, progress=False)
    assert list(table["check"].unique()) == ["exact copy", "random init", "shuffled order", "inversion residual"]
    assert table["passed"].all(), table.to_string()
    assert table.loc[0, "value"] <= 1e-12
    # the same model with too few inversion steps: the residual check fails, the others still pass
    short = validate(_edge_net(), x, n_images=32, seeds=2, steps=1, cache=None, progress=False)
    assert not short[short["check"] == "inversion residual"]["passed"].any()
    assert short[short["check"] != "inversion residual"]["passed"].all()


def test_cli_validate(tmp_path):
    from typer.testing import CliRunner

    from ftlens.cli import app

    out = tmp_path / "validate.csv"
    r = CliRunner().invoke(app, ["validate", "ftlens:vit-micro", "--data", "digits", "--images", "16", "--seeds", "1",
                                 "--steps", "2", "--layers", "blocks.0,blocks.1", "--no-cache", "--out", str(out)])
    assert r.exit_code == 1, r.output  # 2 steps cannot converge: a failed check
    assert "exact copy" in r.output and "FAIL" in r.output and "checks passed" in r.output
    table = pd.read_csv(out)
    assert set(table["check"]) == {"exact copy", "random init", "shuffled order", "inversion residual"}
    bad = CliRunner().invoke(app, ["validate", "ftlens:vit-micro", "--data", "digits", "--images", "100000"])
    assert bad.exit_code == 2 and "only" in bad.output


def test_smoke_sized_runs_are_named():
    from ftlens.experiment import builtin_config, quick
    from ftlens.findings import is_smoke

    assert is_smoke(builtin_config("demo")) == [] and is_smoke(builtin_config("demo-real")) == []
    why = is_smoke(quick(builtin_config("demo")))
    assert any("images per seed" in w for w in why)
    # the step cap is no criterion (the convergence gate judges the inversions); epochs only with dynamics
    assert is_smoke({"analysis": {"images": 500, "seeds": 3, "steps": 5}}) == []
    assert is_smoke({"analysis": {"images": 500, "seeds": 3}, "defaults": {"epochs": 2}}) == []
    assert is_smoke({"analysis": {"images": 500, "seeds": 3, "dynamics": ["ft"]}, "defaults": {"epochs": 2}})
    assert is_smoke({"analysis": {"images": "<b>x</b>"}}) == []  # unreadable values are not numbers


def test_the_report_names_the_verdict_a_reason_belongs_to():
    from ftlens.report.sections.findings import _numbers

    base = {"statistic": 0.001, "interval": [-0.002, 0.004], "test": "t", "n_points": 3, "numbers": {}}
    assert "did not hold because: within" in _numbers({**base, "verdict": "did not hold", "reason": "within"})
    assert "inconclusive because: too few" in _numbers({**base, "verdict": "inconclusive", "reason": "too few"})
