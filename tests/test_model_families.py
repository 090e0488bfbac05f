"""Every model family through the same path (issue 14's matrix): load -> representations ->
invert -> compare -> finetune (ft, lp, surgical by pattern) -> checkpoint round trip at a
non-default input size. Small random-weight models, a few images and steps.

Families: timm ResNet (BatchNorm), EfficientNet, ConvNeXt, Swin; torchvision ResNet-18; Hugging
Face ViT (ViTForImageClassification) and CLIP vision, from tiny configs saved with
``save_pretrained``; a LoRA finetune of a timm ViT (PEFT adapter, merged for analysis).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ftlens.finetune import finetune
from ftlens.invariance import compare
from ftlens.inversion import invert
from ftlens.models import checkpoint_path, load_model, save_checkpoint

pytest.importorskip("transformers")
pytest.importorskip("peft")


@dataclass
class Case:
    spec: str  # what load_model gets
    kwargs: dict  # its keyword arguments
    middle: str  # a middle layer: perturbed for compare, trained alone by surgical
    other_size: int  # a non-default input size for the checkpoint round trip
    head: str = "head."  # state-dict prefix of the classifier
    bn: bool = False


def _hf_dirs(root: Path) -> dict[str, Path]:
    from transformers import CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTForImageClassification

    small = dict(patch_size=4, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    vit, clip = root / "hf-vit", root / "hf-clip"
    ViTForImageClassification(ViTConfig(image_size=16, num_labels=5, **small)).save_pretrained(vit)
    CLIPVisionModel(CLIPVisionConfig(image_size=16, **small)).save_pretrained(clip)
    return {"vit": vit, "clip": clip}


def _lora_dir(root: Path, base_ckpt: Path) -> Path:
    """A LoRA adapter on blocks.2 of vit-micro (random, non-zero B so that it changes the model)."""
    from peft import LoraConfig, get_peft_model

    base = load_model(base_ckpt)
    torch.manual_seed(1)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=r"blocks\.2\.(attn\.qkv|mlp\.fc1)", init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(base.module), config)
    out = root / "lora"
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


@pytest.fixture(scope="module")
def cases(root):
    hf = _hf_dirs(root)
    torch.manual_seed(0)
    vit_base = save_checkpoint(load_model("ftlens:vit-micro"), root / "vit-base.safetensors")
    lora = _lora_dir(root, vit_base)
    return {
        "timm-resnet": Case("timm:resnet10t", dict(image_size=24), "layer2", 32, head="fc.", bn=True),
        "timm-efficientnet": Case("timm:efficientnet_b0", dict(image_size=32), "blocks.2", 40, head="classifier.",
                                  bn=True),
        "timm-convnext": Case("timm:convnext_atto", dict(image_size=32), "stages.1", 40, head="head.fc."),
        "timm-swin": Case("timm:swin_tiny_patch4_window7_224",
                          dict(image_size=56, depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 1, 1, 1)),
                          "layers.1", 28, head="head.fc."),
        "torchvision-resnet18": Case("torchvision:resnet18", dict(image_size=32), "body.layer2", 48, bn=True),
        "hf-vit": Case(f"hf:{hf['vit']}", {}, "body.layers.1", 24),
        "hf-clip-vision": Case(f"hf:{hf['clip']}", {}, "body.encoder.layers.1", 24),
        "peft-lora-vit": Case(f"peft:{lora}", dict(base=str(vit_base)), "blocks.2", 24),
    }


NAMES = ["timm-resnet", "timm-efficientnet", "timm-convnext", "timm-swin", "torchvision-resnet18", "hf-vit",
         "hf-clip-vision", "peft-lora-vit"]


def _load(case: Case):
    torch.manual_seed(0)
    return load_model(case.spec, **case.kwargs)


def _images(model, n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *model.input_size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_family_end_to_end(name, cases, root):
    case = cases[name]
    pt = _load(case)
    x = _images(pt)

    # representations: one (n, features) per default layer, in execution order, deterministic
    layers = pt.layers
    assert case.middle in layers and 0 < layers.index(case.middle) < len(layers) - 1, layers
    reps = pt.representations(x)
    assert list(reps) == layers and all(r.shape[0] == len(x) and torch.isfinite(r).all() for r in reps.values())
    again = _load(case).representations(x)
    assert all(torch.equal(reps[k], again[k]) for k in layers)
    feats = pt.representations(x, ["pre_logits"])["pre_logits"]
    assert feats.shape == (len(x), pt.num_features)

    # inversion through the middle layer: the reported residual is the recomputed one, and it fell
    inv = invert(pt, case.middle, x[:4], steps=6, step_size=0.1)
    assert float(inv.best_history[-1]) < float(inv.best_history[0])
    target = pt.representations(x[:4], [case.middle])[case.middle].double()
    got = pt.representations(inv.images, [case.middle])[case.middle].double()
    recomputed = (got - target).norm(dim=1) / target.norm(dim=1)
    np.testing.assert_allclose(inv.residual.double().numpy(), recomputed.numpy(), rtol=1e-4, atol=1e-5)

    # compare: an exact copy gives exactly 0; a perturbed middle layer gives 0 before it, > 0 from it on
    kw = dict(seeds=1, n_images=8, steps=6, step_size=0.2, cache=None, progress=False)
    pool = _images(pt, 16, seed=1)
    same = compare(pt, pt.copy(), pool, **kw).per_layer
    assert (same["learning"] == 0).all() and (same["forgetting"] == 0).all()
    ft = pt.copy()
    with torch.no_grad():
        for p in ft.module.get_submodule(case.middle).parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 3 * (p.abs().mean() + 0.5))
    pl = compare(pt, ft, pool, **kw).per_layer
    i = layers.index(case.middle)
    before, after = layers[:i], layers[i:]
    assert (pl.loc[before, "forgetting"] == 0).all() and (pl.loc[before, "learning"] == 0).all()
    assert (pl.loc[after, "forgetting"] > 0).all(), pl[["learning", "forgetting"]]

    # finetuning from a checkpoint: ft trains, lp keeps the backbone bit-identical, surgical by pattern
    start = save_checkpoint(pt, root / name / "start.safetensors")
    small = dict(pretrained_from=str(start), data="digits", data_dir=str(root / "data"), batch_size=16,
                 warmup_steps=1, train_size=32, test_size=16, epochs=1, augment=False, lr=0.05, lp_grid=[1.0],
                 corruptions=[], progress=False)
    before_w = load_file(str(start))
    backbone = [k for k in before_w if not k.startswith(case.head)]
    ft_run = finetune(strategy="ft", out=str(root / name / "ft"), **small)
    after_w = load_file(str(checkpoint_path(ft_run.run_dir, 1)))
    assert any(not torch.equal(before_w[k], after_w[k]) for k in backbone)
    lp_run = finetune(strategy="lp", out=str(root / name / "lp"), **small)
    after_w = load_file(str(checkpoint_path(lp_run.run_dir, 1)))
    assert all(torch.equal(before_w[k], after_w[k]) for k in backbone)  # BN running statistics included
    if case.bn:
        assert any(k.endswith("running_mean") for k in backbone)
    surg = finetune(strategy="surgical", surgical_layers=case.middle, out=str(root / name / "surgical"), **small)
    after_w = load_file(str(checkpoint_path(surg.run_dir, 1)))
    changed = {k for k in backbone if not torch.equal(before_w[k], after_w[k])}
    assert changed and all(k.startswith(case.middle + ".") for k in changed), sorted(changed)

    # checkpoint round trip at a non-default input size
    torch.manual_seed(0)
    other = load_model(case.spec, **{**case.kwargs, "image_size": case.other_size})
    assert other.input_size == (3, case.other_size, case.other_size)
    path = save_checkpoint(other, root / name / "other.safetensors")
    back = load_model(path)
    assert back.input_size == other.input_size and back.mean == other.mean and back.std == other.std
    assert back.fingerprint == other.fingerprint and back.layers == other.layers
    xo = _images(other, 4)
    a, b = other.representations(xo), back.representations(xo)
    assert all(torch.equal(a[k], b[k]) for k in a)
