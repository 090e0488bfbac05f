"""Model families: token modes against slow references, LoRA merges and their records, offline
and missing-dependency errors, untraceable models and impossible image sizes (CLI: exit 2)."""

from __future__ import annotations

import copy
import sys
import time

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from ftlens.cli import app
from ftlens.errors import (
    ImageSizeError,
    LayerError,
    MissingDependencyError,
    ModelError,
    OfflineError,
)
from ftlens.invariance import compare
from ftlens.models import load_model, save_checkpoint

runner = CliRunner()


def _tokens(model, x, layer):
    """A layer's raw output (n, ...) by a hook of our own (the slow, obvious reference)."""
    out = {}
    h = model.module.get_submodule(layer).register_forward_hook(lambda m, i, o: out.setdefault("t", o))
    with torch.no_grad():
        model.module(model._normalize(x))
    h.remove()
    return out["t"]


def test_token_modes_match_slow_references():
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    vit = {}
    for mode in ("all", "cls", "mean"):
        torch.manual_seed(0)  # the same weights, three token modes
        vit[mode] = load_model("ftlens:vit-micro", tokens=mode)
    t = _tokens(vit["all"], x, "blocks.1")  # (n, 1 + 16, d)
    assert t.shape == (3, 17, 32)
    torch.testing.assert_close(vit["all"].representations(x, ["blocks.1"])["blocks.1"], t.reshape(3, -1))
    torch.testing.assert_close(vit["cls"].representations(x, ["blocks.1"])["blocks.1"], t[:, 0])
    torch.testing.assert_close(vit["mean"].representations(x, ["blocks.1"])["blocks.1"], t[:, 1:].mean(1))
    # the token mode is part of the fingerprints (the inversion cache keys) and of the record
    assert len({m.layer_fingerprint("blocks.1") for m in vit.values()}) == 3
    assert vit["cls"].describe()["tokens"] == "cls"

    cnn = load_model("timm:resnet10t", image_size=24, tokens="mean")
    y = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    fmap = _tokens(cnn, y, "layer1")  # (n, C, H, W)
    torch.testing.assert_close(cnn.representations(y, ["layer1"])["layer1"], fmap.mean((2, 3)))
    with pytest.raises(LayerError, match="no CLS"):
        load_model("timm:resnet10t", image_size=24, tokens="cls").representations(y, ["layer1"])
    swin = load_model("timm:swin_tiny_patch4_window7_224", image_size=56, depths=(1, 1, 1, 1), embed_dim=16,
                      num_heads=(1, 1, 1, 1), tokens="mean")
    z = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    nhwc = _tokens(swin, z, "layers.1")  # timm Swin stages are channels-last
    assert nhwc.shape[-1] == 32
    torch.testing.assert_close(swin.representations(z, ["layers.1"])["layers.1"], nhwc.mean((1, 2)))
    with pytest.raises(LayerError, match="tokens must be"):
        load_model("ftlens:vit-micro", tokens="pooled")


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    peft = pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    base = load_model("ftlens:vit-micro")
    base_path = save_checkpoint(base, root / "base.safetensors")
    torch.manual_seed(1)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=r"blocks\.2\.attn\.qkv", init_lora_weights=False)
    model = peft.get_peft_model(copy.deepcopy(base.module), config)
    model.save_pretrained(root / "adapter")
    return base, base_path, model, root / "adapter"


def test_lora_is_merged_recorded_and_compared_with_its_base(lora):
    base, base_path, peft_model, adapter = lora
    ft = load_model(f"peft:{adapter}", base=str(base_path))
    assert ft.info["lora"]["merged"] and ft.info["lora"]["r"] == 2 and ft.name.endswith("+lora")
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # merged weights compute what the model with adapters computes
        torch.testing.assert_close(ft.module(ft._normalize(x)), peft_model(base._normalize(x)), rtol=1e-5, atol=1e-5)
    from_object = load_model(peft_model)
    assert from_object.fingerprint != base.fingerprint and from_object.info["lora"]["merged"]
    assert any("lora" in n for n, _ in peft_model.named_modules())  # the caller's model keeps its adapters
    c = compare(base, ft, torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1)), seeds=1,
                n_images=8, steps=4, cache=None, progress=False)
    pl = c.per_layer
    assert (pl.loc[["blocks.0", "blocks.1"], ["learning", "forgetting"]] == 0).all().all()
    assert (pl.loc[["blocks.2", "blocks.3"], "cka_divergence"] > 0).all()
    assert c.config["finetuned"]["lora"]["merged"] is True  # the result (and the report) say so
    from ftlens.report.build import build_report

    c.save(adapter.parent / "cmp")
    page = build_report(adapter.parent / "cmp").read_text()
    assert "is a LoRA finetune (rank 2" in page and "adapters merged" in page
    saved = load_model(save_checkpoint(ft, adapter.parent / "merged.safetensors"))
    assert saved.fingerprint == ft.fingerprint and saved.info["lora"]["merged"]


def test_lora_adapter_for_another_base_is_a_clear_error(lora, tmp_path):
    _, _, _, adapter = lora
    torch.manual_seed(0)
    other = save_checkpoint(load_model("timm:vit_base_patch32_224", img_size=16, patch_size=4, depth=3, embed_dim=24,
                                       num_heads=2), tmp_path / "other.safetensors")
    with pytest.raises(ModelError, match="does not fit the base model"):
        load_model(f"peft:{adapter}", base=str(other))
    result = runner.invoke(app, ["layers", f"peft:{tmp_path}"])
    assert result.exit_code == 2 and "adapter_config.json" in result.output


def test_pretrained_offline_fails_fast(monkeypatch):
    import huggingface_hub.constants as constants

    from ftlens.models import hub

    monkeypatch.setattr(hub, "_probe", lambda host, timeout: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)
    for spec in ("timm:resnet18.a1_in1k", "hf:google/vit-base-patch16-224"):
        tic = time.perf_counter()
        with pytest.raises(OfflineError):
            load_model(spec, pretrained=True)
        assert time.perf_counter() - tic < 10, spec


@pytest.mark.parametrize(("package", "spec", "extra"), [
    ("transformers", "hf:some/model", "hf"),
    ("open_clip", "open_clip:ViT-B-32", "clip"),
    ("peft", "peft:some_dir", "peft"),
])
def test_missing_optional_dependency_names_the_extra(monkeypatch, package, spec, extra):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(MissingDependencyError, match=rf"ftlens\[{extra}\]"):
        load_model(spec)
    result = runner.invoke(app, ["layers", spec])
    assert result.exit_code == 2 and f"ftlens[{extra}]" in result.output


def test_untraceable_model_and_impossible_image_sizes():
    class NeedsText(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, batch):
            return self.fc(batch["text"])

    with pytest.raises(ImageSizeError, match="cannot be traced"):
        load_model(NeedsText(), input_size=(3, 8, 8))
    with pytest.raises(ImageSizeError, match="patch"):
        load_model("ftlens:vit-micro", image_size=2)
    with pytest.raises(ImageSizeError, match="224"):
        load_model("torchvision:vit_b_16", image_size=32)
    result = runner.invoke(app, ["layers", "ftlens:vit-micro", "--image-size", "2"])
    assert result.exit_code == 2 and "image" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["layers", "nosuchfamily:model"])
    assert result.exit_code == 2 and "prefixes" in result.output
