"""Feature distortion: trivial values for identical models, a slow reference, hand-built vectors."""

from __future__ import annotations

import io
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from ftlens.analysis import distortion as dist
from ftlens.errors import NumericalError

ATOL = 1e-10  # float64 arithmetic on float32 features: identical inputs give ~1e-16
RTOL = 1e-9


def _slow(z0: torch.Tensor, zt: torch.Tensor) -> dict[str, float]:
    """Reference: explicit Python loops over examples and elements, no vectorisation."""
    a = z0.double().tolist()
    b = zt.double().tolist()
    n, d = len(a), len(a[0])
    sq = cos_d = dot_s = norm_s = euc_s = 0.0
    for i in range(n):
        dot = sum(a[i][k] * b[i][k] for k in range(d))
        na = math.sqrt(sum(v * v for v in a[i]))
        nb = math.sqrt(sum(v * v for v in b[i]))
        diff2 = sum((b[i][k] - a[i][k]) ** 2 for k in range(d))
        sq += diff2
        if na == 0 and nb == 0:
            cos = 1.0
        elif na == 0 or nb == 0:
            cos = 0.0
        else:
            cos = dot / (na * nb)
        cos_d += 1.0 - cos
        dot_s += dot
        norm_s += nb
        euc_s += math.sqrt(diff2)
    return {
        "mean_squared_difference": sq / (n * d),
        "cosine_distance": cos_d / n,
        "dot_product": dot_s / n,
        "norm": norm_s / n,
        "euclidean_distance": euc_s / n,
    }


@pytest.fixture(scope="module")
def models(make_vit):
    return make_vit(0), make_vit(0), make_vit(1)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(7)
    x = torch.rand(12, 3, 16, 16, generator=g)
    return {"id": x, "ood": (x + 0.3 * torch.rand(x.shape, generator=g)).clamp(0, 1)}


# ----------------------------------------------------------------------------- hand-built


def test_known_values_on_hand_built_vectors():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert dist.cosine_distance(e1, e2) == pytest.approx(1.0)  # orthogonal
    assert dist.cosine_distance(e1, -e1) == pytest.approx(2.0)  # opposite
    assert dist.cosine_distance(e1, 5 * e1) == pytest.approx(0.0)  # same direction
    m = dist.distortion_measures(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 2.0]]))
    assert m == pytest.approx(
        {
            "mean_squared_difference": 2.0,  # (4 + 0) / 2 elements
            "cosine_distance": 1 - 7 / (math.sqrt(5) * math.sqrt(13)),
            "dot_product": 7.0,
            "norm": math.sqrt(13),
            "euclidean_distance": 2.0,
        }
    )
    zero = torch.zeros(1, 2)
    assert dist.cosine_distance(zero, zero) == 0.0  # two zero vectors: identical
    assert dist.cosine_distance(e1, zero) == 1.0  # zero vs non-zero: orthogonal by convention
    # means over examples: mixing an orthogonal and an identical pair
    assert dist.cosine_distance(torch.cat([e1, e1]), torch.cat([e2, e1])) == pytest.approx(0.5)


def test_matches_slow_implementation_on_random_features():
    g = torch.Generator().manual_seed(0)
    for n, d in [(1, 3), (7, 5), (16, 33)]:
        z0 = torch.randn(n, d, generator=g)
        zt = 0.5 * z0 + torch.randn(n, d, generator=g)
        zt[0] = 0 if n > 1 else zt[0]  # a zero row exercises the convention
        got, ref = dist.distortion_measures(z0, zt), _slow(z0, zt)
        for k in dist.MEASURES:
            assert got[k] == pytest.approx(ref[k], rel=RTOL, abs=ATOL), (n, d, k)


def test_errors_name_the_problem():
    with pytest.raises(dist.DistortionError, match="differ in shape"):
        dist.distortion_measures(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(dist.DistortionError, match="one row per example"):
        dist.distortion_measures(torch.zeros(4), torch.zeros(4))
    with pytest.raises(NumericalError):
        dist.distortion_measures(torch.tensor([[float("nan")]]), torch.zeros(1, 1))


# ----------------------------------------------------------------------------- models


def _check_trivial(df: pd.DataFrame, reps: dict[str, dict[str, torch.Tensor]]) -> None:
    for (split, layer), g in df.groupby(["split", "layer"]):
        v = g.set_index("measure")["value"]
        z = reps[split][layer].double()
        assert v["mean_squared_difference"] == 0.0
        assert v["euclidean_distance"] == 0.0
        assert v["cosine_distance"] == pytest.approx(0.0, abs=ATOL)
        assert v["dot_product"] == pytest.approx(float((z * z).sum(1).mean()), rel=RTOL)
        assert v["norm"] == pytest.approx(float(z.norm(dim=1).mean()), rel=RTOL)


def test_identical_models_give_zero_distortion(models, images):
    a, a_again, _ = models
    layers = [*a.layers, "pre_logits"]
    reps = {s: a.representations(x, layers) for s, x in images.items()}
    same = dist.feature_distortion(a, a, images)
    assert set(same["layer"]) == set(layers) and set(same["split"]) == {"id", "ood"}
    assert len(same) == 2 * len(layers) * len(dist.MEASURES)
    _check_trivial(same, reps)
    assert a.fingerprint == a_again.fingerprint
    _check_trivial(dist.feature_distortion(a, a_again, images), reps)


def test_different_models_match_slow_implementation(models, images):
    a, _, b = models
    df = dist.feature_distortion(a, b, images, layers=["blocks.0", "blocks.3", "pre_logits"])
    assert list(pd.unique(df["layer"])) == ["blocks.0", "blocks.3", "pre_logits"]
    for split, x in images.items():
        z0 = a.representations(x, ["blocks.3", "pre_logits"])
        zt = b.representations(x, ["blocks.3", "pre_logits"])
        for layer in ("blocks.3", "pre_logits"):
            got = df[(df.split == split) & (df.layer == layer)].set_index("measure")["value"]
            ref = _slow(z0[layer], zt[layer])
            for k in dist.MEASURES:
                assert got[k] == pytest.approx(ref[k], rel=RTOL), (split, layer, k)
            assert got["mean_squared_difference"] > 0 and got["cosine_distance"] > 0


# ----------------------------------------------------------------------------- energy


def _sweep(values: dict[str, list[float]], losses: list[float]) -> pd.DataFrame:
    runs = []
    for i, loss in enumerate(losses):
        table = pd.DataFrame(
            [{"split": "id", "layer": "pre_logits", "measure": m, "value": v[i]} for m, v in values.items()]
        )
        runs.append(({"train_acc": 1 - loss / 3, "train_loss": loss, "hp_epochs": 10 - i}, table))
    return dist.energy_vs_distortion(runs)


def test_energy_trend_check_is_computed_not_assumed():
    losses = [0.1, 0.5, 1.0, 1.5, 2.0]  # energy grows run by run
    held = _sweep(
        {
            "euclidean_distance": [1, 2, 3, 4, 5],
            "cosine_distance": [0.1, 0.2, 0.25, 0.3, 0.4],
            "dot_product": [1, 3, 4, 2, 0],
            "norm": [2, 3, 3.5, 3, 2.5],
            "mean_squared_difference": [1, 1, 1, 1, 1],
        },
        losses,
    )
    assert {"run", "train_acc", "train_loss", "energy", "hp_epochs", "value"} <= set(held.columns)
    check = dist.energy_trend_check(held).set_index("measure")
    assert set(check.index) == {"euclidean_distance", "cosine_distance", "dot_product", "norm"}
    assert check["held"].all()
    assert check.loc["euclidean_distance", "spearman_rho"] == pytest.approx(1.0)
    assert check.loc["dot_product", "energy_at_max"] == 1.0 and check.loc["dot_product", "quad_coef"] < 0

    broken = _sweep(
        {"euclidean_distance": [5, 4, 3, 2, 1], "norm": [1, 2, 3, 4, 5]}, losses
    )
    check = dist.energy_trend_check(broken).set_index("measure")
    assert not check.loc["euclidean_distance", "held"]  # shrinks with energy
    assert not check.loc["norm", "held"]  # monotone: no interior maximum

    few = dist.energy_trend_check(_sweep({"norm": [1, 2]}, [0.1, 0.2]))
    assert few["held"].isna().all() and "need at least 3" in few["note"].iloc[0]
    with pytest.raises(dist.DistortionError, match="lacks"):
        dist.energy_vs_distortion([({"train_acc": 0.5}, held)])


# ----------------------------------------------------------------------------- plots


def test_distortion_plots(models, images):
    from ftlens.report import analysis_plots as ap

    a, _, b = models
    df = dist.feature_distortion(a, b, images, layers=["pre_logits"])
    ev = _sweep({"euclidean_distance": [1, 2, 3], "norm": [1, 3, 2]}, [0.2, 0.6, 1.2])
    for fig in (
        ap.plot_distortion({"FT": df, "LP-FT": df.assign(value=df["value"] / 2)}),
        ap.plot_energy_vs_distortion(ev),
    ):
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
            assert ax.get_legend() is not None
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=50)
        plt.close(fig)
        assert len(buf.getvalue()) > 1000
    assert np.isfinite(df["value"]).all()
