"""Intervals of the feature distortion: a bootstrap over images, and Kumar et al.'s findings decided from it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from ftlens.analysis import distortion as dist
from ftlens.findings import compute_findings
from ftlens.layout import ExperimentLayout
from ftlens.stats import HELD, INCONCLUSIVE, NOT_HELD

LEVEL = 0.95
# the runs differ only in the strategy: the comparison of FT with LP-FT is not confounded
CONFIG = {"runs": [{"name": "pt-start", "strategy": "ft"}, {"name": "lpft", "strategy": "lp-ft"}],
          "defaults": {"lr": 0.03}}


def _normal_interval(v: np.ndarray) -> tuple[float, float]:
    half = stats.norm.ppf(0.5 + LEVEL / 2) * v.std(ddof=1) / np.sqrt(len(v))
    return v.mean() - half, v.mean() + half


# ----------------------------------------------------------------------------- the bootstrap


def test_bootstrap_interval_of_a_mean_matches_the_normal_interval_and_shrinks_like_root_n():
    v = np.random.default_rng(1).exponential(2.0, size=4000)
    lo, hi = dist.mean_interval(v, dist.bootstrap_indices(len(v), 2000, seed=3), LEVEL)
    clo, chi = _normal_interval(v)
    width = chi - clo
    assert abs(lo - clo) < 0.1 * width and abs(hi - chi) < 0.1 * width
    assert lo < v.mean() < hi
    small = v[:1000]
    slo, shi = dist.mean_interval(small, dist.bootstrap_indices(len(small), 2000, seed=3), LEVEL)
    assert (shi - slo) / (hi - lo) == pytest.approx(2.0, rel=0.15)  # 4x the images, half the width


def test_bootstrap_is_deterministic_for_a_seed():
    v = np.random.default_rng(2).normal(size=300)
    one = dist.mean_interval(v, dist.bootstrap_indices(300, 200, seed=5))
    assert one == dist.mean_interval(v, dist.bootstrap_indices(300, 200, seed=5))
    assert one != dist.mean_interval(v, dist.bootstrap_indices(300, 200, seed=6))
    a, b = v + 1, v + np.random.default_rng(3).normal(size=300)
    assert dist.difference_interval(a, b, paired=False, seed=4) == dist.difference_interval(a, b, paired=False, seed=4)


def test_paired_bootstrap_is_narrower_than_unpaired_for_correlated_runs():
    rng = np.random.default_rng(4)
    base = rng.exponential(1.0, size=500)  # how hard each image is: shared by both runs
    a = 2.0 * base + 0.05 * rng.normal(size=500)
    b = 1.8 * base + 0.05 * rng.normal(size=500)
    diff, plo, phi = dist.difference_interval(a, b, paired=True, resamples=1000)
    diff2, ulo, uhi = dist.difference_interval(a, b, paired=False, resamples=1000)
    assert diff == pytest.approx(a.mean() - b.mean()) and diff2 == pytest.approx(diff)
    assert (phi - plo) < 0.3 * (uhi - ulo)
    assert plo > 0  # the paired bootstrap sees the shift
    # the paired interval is the interval of the mean of the per-image differences
    dlo, dhi = _normal_interval(a - b)
    assert abs(plo - dlo) < 0.15 * (dhi - dlo) and abs(phi - dhi) < 0.15 * (dhi - dlo)
    with pytest.raises(dist.DistortionError, match="paired=False"):
        dist.difference_interval(a, b[:10], paired=True)


def test_per_example_values_average_to_the_measures():
    g = torch.Generator().manual_seed(0)
    z0, zt = torch.randn(40, 7, generator=g), torch.randn(40, 7, generator=g)
    zt[3] = 0.0
    per = dist.per_example_measures(z0, zt)
    whole = dist.distortion_measures(z0, zt)
    for m in dist.MEASURES:
        assert per[m].shape == (40,) and per[m].dtype == np.float64
        assert per[m].mean() == pytest.approx(whole[m], rel=1e-12), m
    assert per["cosine_distance"][3] == 1.0 and per["norm"][3] == 0.0


# ----------------------------------------------------------------------------- models


def _cnn(seed: int):
    from torch import nn

    from ftlens.models import load_model

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    return load_model(net, layers=["1", "3"], input_size=(3, 16, 16))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(7)
    x = torch.rand(24, 3, 16, 16, generator=g)
    return {"ID": x, "OOD": (x + 0.3 * torch.rand(x.shape, generator=g)).clamp(0, 1)}


@pytest.mark.parametrize("family", ["vit", "cnn"])
def test_identical_models_give_a_zero_interval_and_different_ones_bracket_the_value(family, images, make_vit):
    make = (lambda s: make_vit(s)) if family == "vit" else _cnn
    layers = ["blocks.0", "pre_logits"] if family == "vit" else ["1", "3"]
    a, b = make(0), make(1)
    same, per = dist.feature_distortion(a, a, images, layers=layers, examples=True)
    for measure in ("mean_squared_difference", "euclidean_distance"):
        rows = same[same["measure"] == measure]
        assert (rows["ci_low"] == 0).all() and (rows["ci_high"] == 0).all()
    df, per = dist.feature_distortion(a, b, images, layers=layers, examples=True, resamples=500, seed=1)
    assert set(per) == {(s, layer, m) for s in images for layer in layers for m in dist.MEASURES}
    for r in df.itertuples():
        v = per[(r.split, r.layer, r.measure)]
        assert v.mean() == pytest.approx(r.value, rel=1e-12)
        assert r.ci_low <= r.value <= r.ci_high and r.ci_high > r.ci_low
        # the same resample as a direct computation
        assert (r.ci_low, r.ci_high) == dist.mean_interval(v, dist.bootstrap_indices(len(v), 500, seed=1))
    again = dist.feature_distortion(a, b, images, layers=layers, resamples=500, seed=1)
    pd.testing.assert_frame_equal(df, again)


def test_per_example_values_round_trip_without_pickle(tmp_path):
    values = {("ft", "ID", "pre_logits", "norm"): np.arange(5.0), ("lp", "OOD", "blocks.0", "norm"): np.ones(3)}
    sources = {"ID": np.arange(5), "OOD": np.array([0, 1, 2])}
    dist.write_examples(tmp_path / "e.npz", values, sources)
    got_values, got_sources = dist.read_examples(tmp_path / "e.npz")
    assert set(got_values) == set(values) and set(got_sources) == set(sources)
    for k in values:
        np.testing.assert_array_equal(got_values[k], values[k])
    np.testing.assert_array_equal(got_sources["OOD"], sources["OOD"])


# ----------------------------------------------------------------------------- findings


def _experiment(tmp_path, shift_ft: float, shift_lpft: float, *, ood_sources=None, n: int = 64):
    """distortion.csv + per-example values of runs 'pt-start' (FT) and 'lpft' built from shifted features."""
    g = torch.Generator().manual_seed(11)
    z0 = {s: torch.randn(n, 16, generator=g) for s in ("ID", "OOD")}
    noise = {s: torch.randn(n, 16, generator=g) for s in ("ID", "OOD")}
    rows, values = [], {}
    for run, shift in (("pt-start", shift_ft), ("lpft", shift_lpft)):
        for split in ("ID", "OOD"):
            scale = shift * (1.0 if split == "ID" else 0.5)  # FT moves the ID features more
            per = dist.per_example_measures(z0[split], z0[split] + scale * noise[split])
            for m in dist.MEASURES:
                values[(run, split, "pre_logits", m)] = per[m]
                rows.append({"run": run, "split": split, "layer": "pre_logits", "layer_number": 5, "measure": m,
                             "value": float(per[m].mean())})
    layout = ExperimentLayout(tmp_path)
    pd.DataFrame(rows).to_csv(layout.distortion, index=False)
    sources = {"ID": np.arange(n), "OOD": np.arange(n) if ood_sources is None else ood_sources}
    dist.write_examples(layout.distortion_examples, values, sources)
    return {f["id"]: f for f in compute_findings(tmp_path, CONFIG)}


def test_lpft_distorts_less_held_swapped_did_not_hold_equal_inconclusive(tmp_path):
    f = _experiment(tmp_path, 2.0, 0.3)["lpft-distorts-less"]
    assert f["verdict"] == HELD and f["reason"] is None and f["held"] is True
    assert f["statistic"] == pytest.approx(f["numbers"]["pt-start_ID"] - f["numbers"]["lpft_ID"])
    assert 0 < f["interval"][0] < f["statistic"] < f["interval"][1]
    assert f["numbers"]["ci_low_OOD"] > 0 and f["n_points"] == 128 and "paired bootstrap" in f["test"]

    f = _experiment(tmp_path, 0.3, 2.0)["lpft-distorts-less"]
    assert f["verdict"] == NOT_HELD and f["interval"][1] < 0

    f = _experiment(tmp_path, 1.0, 1.0)["lpft-distorts-less"]
    assert f["verdict"] == INCONCLUSIVE and f["interval"] == [0.0, 0.0] and "contains 0" in f["reason"]


def test_lpft_finding_with_confounded_runs_stays_inconclusive(tmp_path):
    _experiment(tmp_path, 2.0, 0.3)
    confounded = {**CONFIG, "runs": [CONFIG["runs"][0], {**CONFIG["runs"][1], "lr": 0.01}]}
    f = {x["id"]: x for x in compute_findings(tmp_path, confounded)}["lpft-distorts-less"]
    assert f["verdict"] == INCONCLUSIVE and "lr: 0.03 vs 0.01" in f["reason"]
    assert f["interval"][0] > 0  # the interval is still reported


def test_ft_distorts_id_more_paired_when_ood_rows_are_copies_else_unpaired(tmp_path):
    f = _experiment(tmp_path, 2.0, 0.3)["ft-distorts-id-more"]
    assert f["verdict"] == HELD and f["interval"][0] > 0 and f["test"].startswith("paired bootstrap")
    other = np.r_[np.arange(32), np.arange(32)]  # two corruptions of the first 32 images
    f = _experiment(tmp_path, 2.0, 0.3, ood_sources=other)["ft-distorts-id-more"]
    assert f["test"].startswith("unpaired bootstrap") and f["verdict"] == HELD
    assert "corrupted copies of 32 of the 64 ID images" in f["test"]
    f = _experiment(tmp_path, 2.0, 0.3, ood_sources=np.arange(64) + 1000)["ft-distorts-id-more"]
    assert "other images than the 64 ID images" in f["test"] and f["verdict"] == HELD
    f = _experiment(tmp_path, 0.0, 0.3)["ft-distorts-id-more"]
    assert f["verdict"] == INCONCLUSIVE and f["interval"] == [0.0, 0.0]


def test_without_per_example_values_the_findings_say_so(tmp_path):
    _experiment(tmp_path, 2.0, 0.3)
    ExperimentLayout(tmp_path).distortion_examples.unlink()
    got = {x["id"]: x for x in compute_findings(tmp_path, CONFIG)}
    for fid in ("lpft-distorts-less", "ft-distorts-id-more"):
        assert got[fid]["verdict"] == INCONCLUSIVE and "no per-image values" in got[fid]["reason"]
        assert got[fid]["interval"] is None
