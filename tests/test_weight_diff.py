"""Weight-space diff (``ftlens.weight_diff``, ``ftlens weights``): exact zeros for a copy, changes only
where the weights changed, closed forms of the spectrum, a LoRA adapter's own ΔW, the relation to
forgetting, the CLI and the report; on a timm ViT and a torchvision CNN."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

import ftlens
from ftlens.analysis.weight_space import (
    effective_rank,
    load_weight_diff,
    moved_vs_forgetting,
    numerical_rank,
    singular_values,
    stable_rank,
    weight_diff,
)
from ftlens.analysis.weight_space.spectrum import rank_rtol
from ftlens.analysis.weight_space.tables import diff_tables
from ftlens.cli import app
from ftlens.models import load_model, save_checkpoint
from ftlens.stats import correlation_interval

runner = CliRunner()


@pytest.fixture(scope="module")
def cnn():
    """torchvision ResNet-18 (random weights, BatchNorm statistics moved away from their init)."""
    torch.manual_seed(0)
    model = load_model("torchvision:resnet18", input_size=(3, 32, 32))
    with torch.no_grad():  # running statistics as a trained network has them (not the 0 / 1 init)
        for m in model.module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def vit(make_vit):
    return make_vit(0)


def _slow_layer_change(pt, ft, prefix: str) -> tuple[float, float]:
    """``(||Δ|| / ||W_pt||, cosine)`` over the parameters under ``prefix``, concatenated (the obvious way)."""
    a = torch.cat([p.detach().double().flatten() for n, p in pt.module.named_parameters() if n.startswith(prefix + ".")])
    b = torch.cat([p.detach().double().flatten() for n, p in ft.module.named_parameters() if n.startswith(prefix + ".")])
    return float((b - a).norm() / a.norm()), float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("family", ["vit", "cnn"])
def test_an_exact_copy_gives_exactly_zero(family, request):
    model = request.getfixturevalue(family)
    before = model.fingerprint
    d = weight_diff(model, model.copy())
    pl = d.per_layer
    assert list(pl.index) == model.layers and pl["layer_number"].tolist() == ftlens.layers.layer_numbers(model.layers, model)
    assert (pl["relative_change"] == 0.0).all() and (pl["norm_delta"] == 0.0).all()
    assert (pl["cosine"] == 1.0).all()  # exactly, not approximately
    assert (pl["effective_rank"] == 0.0).all() and (pl["stable_rank"] == 0.0).all()
    same = d.tensors[d.tensors["status"] == "same shape"]
    assert (same["norm_delta"] == 0.0).all() and len(same) == len(d.tensors)
    assert d.spectrum.empty and d.config["total"]["relative_change"] == 0.0 and d.config["total"]["cosine"] == 1.0
    if family == "cnn":
        assert (pl["bn_mean_shift"] == 0.0).all() and (pl["bn_log_var_ratio"] == 0.0).all()
    else:
        assert pl["bn_mean_shift"].isna().all()  # a ViT has no BatchNorm
    model.refresh_fingerprint()
    assert model.fingerprint == before  # the user's model is unchanged


def test_a_vit_changed_in_one_block_differs_only_there(vit):
    ft = vit.copy()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in ft.module.blocks[2].parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    d = weight_diff(vit, ft)
    pl = d.per_layer
    assert (pl.drop("blocks.2")["relative_change"] == 0.0).all() and (pl.drop("blocks.2")["cosine"] == 1.0).all()
    assert pl.loc["blocks.2", "relative_change"] > 0.01
    rel, cos = _slow_layer_change(vit, ft, "blocks.2")
    assert pl.loc["blocks.2", "relative_change"] == pytest.approx(rel, rel=1e-12)
    assert pl.loc["blocks.2", "cosine"] == pytest.approx(cos, rel=1e-12)
    moved = d.tensors[d.tensors["norm_delta"] > 0]
    assert set(moved["layer"]) == {"blocks.2"} and d.config["total"]["outside_layers_relative_change"] == 0.0
    # random noise on a matrix: a full-rank ΔW; the table's spectrum is the SVD of that difference
    qkv = "blocks.2.attn.qkv.weight"
    delta = (ft.module.state_dict()[qkv].double() - vit.module.state_dict()[qkv].double())
    np.testing.assert_allclose(d.singular_values(qkv).to_numpy(), torch.linalg.svdvals(delta).numpy(), rtol=1e-12)
    row = d.tensors.set_index("tensor").loc[qkv]
    assert row["rank"] == min(delta.shape) and row["effective_rank"] > 0.8 * min(delta.shape)


def test_a_cnn_changed_in_one_stage_differs_only_there(cnn):
    ft = cnn.copy()
    with torch.no_grad():
        stage = ft.module.body.layer3
        stage[0].conv1.weight.mul_(1.1)  # a scaled weight: ΔW = 0.1 W
        stage[1].bn2.running_mean.add_(0.3)
        stage[1].bn2.running_var.mul_(2.0)
    d = weight_diff(cnn, ft)
    pl = d.per_layer
    others = pl.drop("body.layer3")
    assert (others["relative_change"] == 0.0).all() and (others["bn_mean_shift"] == 0.0).all()
    assert (others["bn_log_var_ratio"] == 0.0).all()
    rel, _ = _slow_layer_change(cnn, ft, "body.layer3")
    assert pl.loc["body.layer3", "relative_change"] == pytest.approx(rel, rel=1e-12) and rel > 0
    # BatchNorm: the mean of 256 of the stage's 1280 channels moved by 0.3 / sqrt(var + eps), var doubled there
    bn = cnn.module.body.layer3[1].bn2
    z = 0.3 / torch.sqrt(bn.running_var.double() + bn.eps)
    channels = sum(m.num_features for m in cnn.module.body.layer3.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert channels == 1280
    assert pl.loc["body.layer3", "bn_mean_shift"] == pytest.approx(math.sqrt(float((z**2).sum()) / channels), rel=1e-6)
    v = bn.running_var.double()
    ratio = torch.log((2 * v.float().double() + bn.eps) / (v + bn.eps))
    assert pl.loc["body.layer3", "bn_log_var_ratio"] == pytest.approx(math.sqrt(float((ratio**2).sum()) / channels),
                                                                      rel=1e-5)
    conv = d.tensors.set_index("tensor").loc["body.layer3.0.conv1.weight"]
    assert conv["relative_change"] == pytest.approx(0.1, rel=1e-6) and conv["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert conv["shape"] == "256x128x3x3"  # read as a 256 x 1152 matrix: ΔW = 0.1 W has W's spectrum / 10
    w = cnn.module.body.layer3[0].conv1.weight.detach().double().reshape(256, -1)
    np.testing.assert_allclose(d.singular_values("body.layer3.0.conv1.weight").to_numpy(),
                               0.1 * torch.linalg.svdvals(w).numpy(), rtol=1e-5)


def _with_spectrum(s: list[float], shape=(6, 9), seed=0) -> torch.Tensor:
    """``U diag(s) V^T`` (float64) with random orthonormal U, V."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0], generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=g, dtype=torch.float64))
    k = len(s)
    return u[:, :k] @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v[:, :k].T


def test_closed_forms_of_the_spectrum():
    three = singular_values(_with_spectrum([2.0, 2.0, 2.0]))
    assert effective_rank(three) == pytest.approx(3.0, abs=1e-12) and stable_rank(three) == pytest.approx(3.0, abs=1e-12)
    assert numerical_rank(three, rank_rtol((6, 9), torch.float64)) == 3
    two = singular_values(_with_spectrum([2.0, 1.0]))
    h = -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)
    assert effective_rank(two) == pytest.approx(math.exp(h), abs=1e-12)
    assert stable_rank(two) == pytest.approx(1.25, abs=1e-12)
    one = singular_values(_with_spectrum([5.0]))
    assert effective_rank(one) == pytest.approx(1.0, abs=1e-9) and stable_rank(one) == pytest.approx(1.0, abs=1e-12)
    zero = torch.zeros(4)
    assert effective_rank(zero) == 0.0 and stable_rank(zero) == 0.0 and numerical_rank(zero, 1e-10) == 0
    with pytest.raises(ValueError, match="no singular spectrum"):
        singular_values(torch.ones(5))
    # through the tables: a linear weight and a convolution (out, in, kh, kw) = (6, 1, 3, 3) -> a 6 x 9 matrix
    base = {"f.weight": torch.randn(6, 9, dtype=torch.float64), "c.weight": torch.randn(6, 1, 3, 3, dtype=torch.float64),
            "c.bias": torch.randn(6, dtype=torch.float64)}
    moved = {"f.weight": base["f.weight"] + _with_spectrum([2.0, 1.0]),
             "c.weight": base["c.weight"] + _with_spectrum([1.0, 1.0, 1.0, 1.0], seed=1).reshape(6, 1, 3, 3),
             "c.bias": base["c.bias"].clone()}
    per_layer, tensors, spectrum = diff_tables(base, moved, [("f", 1, "f"), ("c", 2, "c")],
                                               parameters=set(base))
    t = tensors.set_index("tensor")
    assert t.loc["f.weight", "effective_rank"] == pytest.approx(math.exp(h), abs=1e-9) and t.loc["f.weight", "rank"] == 2
    assert t.loc["c.weight", "effective_rank"] == pytest.approx(4.0, abs=1e-9) and t.loc["c.weight", "rank"] == 4
    assert t.loc["c.bias", "norm_delta"] == 0.0 and np.isnan(t.loc["c.bias", "effective_rank"])  # a vector
    np.testing.assert_allclose(spectrum[spectrum["tensor"] == "f.weight"]["singular_value"].to_numpy()[:2], [2.0, 1.0],
                               atol=1e-12)
    # a layer's effective rank: the matrices' values weighted by ||ΔW||^2 (one matrix: its own)
    assert per_layer.loc["c", "effective_rank"] == pytest.approx(4.0, abs=1e-9)
    assert per_layer.loc["c", "relative_change"] == pytest.approx(
        2.0 / math.sqrt(float(base["c.weight"].square().sum() + base["c.bias"].square().sum())), rel=1e-12)
    # a tensor whose shape changed (a new head) is listed, not compared
    _, shapes, _ = diff_tables({"h.weight": torch.ones(3, 4)}, {"h.weight": torch.ones(5, 4)}, [("h", 1, "h")],
                               parameters={"h.weight"})
    assert shapes.loc[0, "status"] == "shape differs" and shapes.loc[0, "shape"] == "3x4 -> 5x4"


@pytest.fixture(scope="module")
def lora(tmp_path_factory, vit):
    peft = pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("lora")
    base_path = save_checkpoint(vit, root / "base.safetensors")
    torch.manual_seed(1)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=r"blocks\.2\.(attn\.qkv|mlp\.fc1)",
                             init_lora_weights=False)
    model = peft.get_peft_model(copy.deepcopy(vit.module), config)
    model.save_pretrained(root / "adapter")
    return base_path, model, root / "adapter"


def test_a_lora_finetune_contributes_its_adapters_own_delta(vit, lora):
    from safetensors.torch import load_file

    base_path, peft_model, adapter = lora
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}
    d = weight_diff(str(base_path), f"peft:{adapter}")
    t = d.tensors.set_index("tensor")
    assert set(t.index[t["source"] == "adapter"]) == {"blocks.2.attn.qkv.weight", "blocks.2.mlp.fc1.weight"}
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    for module in ("attn.qkv", "mlp.fc1"):
        a = next(v for k, v in weights.items() if f"blocks.2.{module}.lora_A" in k).double()
        b = next(v for k, v in weights.items() if f"blocks.2.{module}.lora_B" in k).double()
        expected = b @ a * (4 / 2)  # scale alpha / r
        name = f"blocks.2.{module}.weight"
        assert t.loc[name, "rank"] == 2  # exactly rank r, no rounding noise from merging
        np.testing.assert_allclose(d.singular_values(name).to_numpy(), torch.linalg.svdvals(expected).numpy(),
                                   rtol=1e-10)
        w = vit.module.state_dict()[name].double()
        assert t.loc[name, "relative_change"] == pytest.approx(float(expected.norm() / w.norm()), rel=1e-12)
    assert (d.per_layer.drop("blocks.2")["relative_change"] == 0.0).all()
    assert d.config["adapter"]["r"] == 2 and d.config["adapter"]["merged"]
    # the PeftModel object gives the same numbers and is left as it was
    same = weight_diff(vit, peft_model)
    pd.testing.assert_series_equal(same.per_layer["relative_change"], d.per_layer["relative_change"], rtol=1e-12)
    assert all(torch.equal(v, peft_model.state_dict()[k]) for k, v in before.items())


def test_moved_vs_forgetting_is_a_rank_correlation_with_an_interval():
    layers = [f"blocks.{i}" for i in range(8)]
    moved = pd.DataFrame({"relative_change": np.linspace(0.1, 0.8, 8)}, index=layers)
    forgetting = pd.DataFrame({"forgetting": [0.0, 0.05, 0.03, 0.1, 0.12, 0.2, 0.18, 0.3], "converged": True},
                              index=layers)  # two neighbours swapped: rho = 1 - 6 * 4 / (8 * 63)
    rel = moved_vs_forgetting(moved, forgetting)
    rho = stats.spearmanr(moved["relative_change"], forgetting["forgetting"])[0]
    assert rho == pytest.approx(1 - 24 / 504) and rel["rho"] == pytest.approx(rho) and rel["n_layers"] == 8 and rel["verdict"] == "held"
    se = math.sqrt((1 + rho**2 / 2) / 5)
    assert rel["lo"] == pytest.approx(math.tanh(math.atanh(rho) - 1.959963984540054 * se))
    assert moved_vs_forgetting(moved, forgetting.assign(forgetting=-forgetting["forgetting"]))["verdict"] == "did not hold"
    few = moved_vs_forgetting(moved.iloc[:3], forgetting)
    assert few["verdict"] == "inconclusive" and "at least 4" in few["reason"] and np.isnan(few["lo"])
    unconverged = forgetting.assign(converged=[True] * 7 + [False])
    assert "did not converge" in moved_vs_forgetting(moved, unconverged)["reason"]
    # Pearson: Fisher's z with 1 / sqrt(n - 3)
    r, lo, hi, n = correlation_interval([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [2, 1, 4, 3, 6, 5, 8, 7, 10, 9], method="pearson")
    assert r == pytest.approx(np.corrcoef(range(10), [2, 1, 4, 3, 6, 5, 8, 7, 10, 9])[0, 1]) and n == 10
    assert (lo, hi) == pytest.approx((math.tanh(math.atanh(r) - 1.959963984540054 / math.sqrt(7)),
                                      math.tanh(math.atanh(r) + 1.959963984540054 / math.sqrt(7))))


def test_cli_writes_a_result_the_report_sets_beside_forgetting(vit, tmp_path, make_pool):
    ft = vit.copy()
    with torch.no_grad():
        for k, block in enumerate(ft.module.blocks):
            for p in block.parameters():
                p.mul_(1.0 + 0.05 * (k + 1))  # later blocks move more
    a, b = save_checkpoint(vit, tmp_path / "a.safetensors"), save_checkpoint(ft, tmp_path / "b.safetensors")
    out = tmp_path / "w"
    result = runner.invoke(app, ["weights", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    loaded = load_weight_diff(out)
    direct = ftlens.weight_diff(str(a), str(b))
    pd.testing.assert_frame_equal(loaded.per_layer, direct.per_layer, check_dtype=False)
    np.testing.assert_allclose(loaded.per_layer["relative_change"], [0.05, 0.10, 0.15, 0.20], rtol=1e-6)
    assert (out / "weights.png").is_file() and "4 (blocks.3)" in result.output
    bad = runner.invoke(app, ["weights", str(a), str(tmp_path / "missing.safetensors")])
    lines = [line for line in bad.output.splitlines() if line.strip() and not line.startswith("[ftlens")]
    assert bad.exit_code == 2 and len(lines) == 1 and "Traceback" not in bad.output, bad.output
    # a comparison folder with its weights: the report answers the question for the run
    cmp_dir = tmp_path / "cmp"
    cmp = ftlens.compare(vit, ft, make_pool(16, 0), seeds=1, n_images=8, steps=3, cache=None, progress=False)
    cmp.save(cmp_dir)
    loaded.save(cmp_dir / "weights")
    page = ftlens.build_report(cmp_dir).read_text()
    assert "What changed in the weights" in page and "Spearman rho = " in page
    rel = moved_vs_forgetting(loaded.per_layer, cmp.per_layer)
    assert f"over {rel['n_layers']} layers" in page and rel["n_layers"] == 4
    assert "weights (failed)" not in page and page.count("What changed in the weights") == 2  # contents + section
