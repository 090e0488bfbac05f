"""One numbering of layers (ftlens.layers): a layer's 1-based position in its model, for every
family, also for a subset; the same number with and without the model where the name carries it."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ftlens.invariance import compare
from ftlens.layers import layer_label, layer_number, layer_numbers, layer_title
from ftlens.models import load_model

pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

SWIN = dict(image_size=56, depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 1, 1, 1))


def _plain() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten())


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    """``{family: (spec, load_model kwargs)}``: the tiny random-weight models of test_model_families
    (HF ViT and CLIP vision from small configs), an open_clip tower as in test_clip, a plain module."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTForImageClassification

    root = tmp_path_factory.mktemp("layer-numbers")
    small = dict(patch_size=4, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(image_size=16, num_labels=5, **small)).save_pretrained(root / "hf-vit")
    CLIPVisionModel(CLIPVisionConfig(image_size=16, **small)).save_pretrained(root / "hf-clip")
    cfg = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16,
                                             mlp_ratio=2.0),
               text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2))
    path = root / "ftlens-test-layer-numbers.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return {
        "ftlens-vit": ("ftlens:vit-micro", {}),
        "timm-resnet": ("timm:resnet10t", dict(image_size=24)),
        "timm-efficientnet": ("timm:efficientnet_b0", dict(image_size=32)),
        "timm-convnext": ("timm:convnext_atto", dict(image_size=32)),
        "timm-swin": ("timm:swin_tiny_patch4_window7_224", SWIN),
        "torchvision-resnet18": ("torchvision:resnet18", dict(image_size=32)),
        "hf-vit": (f"hf:{root / 'hf-vit'}", {}),
        "hf-clip-vision": (f"hf:{root / 'hf-clip'}", {}),
        "open_clip": ("open_clip:ftlens-test-layer-numbers", {}),
        "plain-module": (_plain(), dict(input_size=(3, 8, 8))),
    }


# (family, {layer name: expected number}): the default layers first, then modules inside them and
# pseudo-layers. EfficientNet's default layers are the stages where the resolution changes, so
# they keep their place in its block list (1, 2, 3, 5, 7); timm's ResNet starts with its stem (act1).
TABLE = [
    ("ftlens-vit", {"blocks.0": 1, "blocks.1": 2, "blocks.2": 3, "blocks.3": 4, "blocks.2.attn": 3,
                    "blocks.3.mlp.fc1": 4, "pre_logits": 5}),
    ("timm-resnet", {"act1": 1, "layer1": 2, "layer2": 3, "layer3": 4, "layer4": 5, "layer3.0.conv1": 4,
                     "pre_logits": 6}),
    ("timm-efficientnet", {"blocks.0": 1, "blocks.1": 2, "blocks.2": 3, "blocks.4": 5, "blocks.6": 7,
                           "blocks.3": 4, "blocks.5.0": 6, "pre_logits": 8}),
    ("timm-convnext", {"stages.0": 1, "stages.1": 2, "stages.2": 3, "stages.3": 4, "stages.2.blocks.1": 3,
                       "pre_logits": 5}),
    ("timm-swin", {"layers.0": 1, "layers.1": 2, "layers.2": 3, "layers.3": 4, "layers.1.blocks.0": 2,
                   "pre_logits": 5}),
    ("torchvision-resnet18", {"body.layer1": 1, "body.layer2": 2, "body.layer3": 3, "body.layer4": 4,
                              "body.layer2.1.conv2": 2, "pre_logits": 5}),
    ("hf-vit", {"body.layers.0": 1, "body.layers.1": 2, "body.layers.2": 3, "body.layers.1.mlp": 2,
                "pre_logits": 4}),
    ("hf-clip-vision", {"body.encoder.layers.0": 1, "body.encoder.layers.1": 2, "body.encoder.layers.2": 3,
                        "pre_logits": 4}),
    ("open_clip", {"body.transformer.resblocks.0": 1, "body.transformer.resblocks.1": 2, "pre_logits": 3}),
    ("plain-module", {"0": 1, "1": 2, "2": 3, "3": 4}),
]


@pytest.mark.parametrize(("family", "expected"), TABLE, ids=[f for f, _ in TABLE])
def test_every_family_numbers_its_layers_by_their_position(family, expected, specs):
    spec, kwargs = specs[family]
    model = load_model(spec, **kwargs)
    defaults = model.layers
    assert defaults == [n for n in expected if n in defaults], "the table lists the default layers first"
    names = model.resolve_layers(list(expected))
    assert dict(zip(names, layer_numbers(names, model), strict=True)) == expected
    # the default layers are 1..L in their own list, except where a block list skips (EfficientNet)
    numbers = layer_numbers(defaults, model)
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    # a subset keeps its numbers, asked for in compare or fixed when the model is loaded
    subset = defaults[1::2]
    assert layer_numbers(subset, model) == [expected[n] for n in subset]
    if not isinstance(spec, nn.Module):
        narrowed = load_model(spec, layers=subset, **kwargs)
        assert narrowed.layers == subset and narrowed.default_layers == defaults
        assert layer_numbers(subset, narrowed) == [expected[n] for n in subset]
        assert [layer_number(n, narrowed) for n in subset] == [expected[n] for n in subset]
    # a name that carries its number gives it without the model (plots and tables read back)
    for name, n in expected.items():
        if layer_number(name) is not None:
            assert layer_number(name) == n and layer_label(name) == str(n), name


def test_name_only_numbering():
    assert [layer_number(n) for n in ["blocks.11", "vit.encoder.layer.3", "body.transformer.resblocks.0",
                                      "stages.2.blocks.5", "layers.0.blocks.1.attn", "features.4"]] == [12, 4, 1, 3, 1, 5]
    assert layer_number("blocks.0.0") == 1 and layer_number("pre_logits") is None and layer_number("layer2") is None
    assert layer_numbers(["blocks.1", "blocks.3", "pre_logits"]) == [2, 4, 5]
    assert layer_numbers(["stem", "head"]) == [1, 2]
    assert layer_title("blocks.3") == "4 (blocks.3)" and layer_title("layer2", 3) == "3 (layer2)"
    assert layer_title("pre_logits") == "pre_logits" and layer_label("layer2") == "layer2"


def test_a_subset_keeps_its_true_numbers_in_a_comparison(specs):
    """Layers 2 and 4 of a 4-stage ConvNeXt and of a plain module stay 2 and 4 in every table."""
    for family in ("timm-convnext", "plain-module"):
        spec, kwargs = specs[family]
        pt = load_model(spec, **kwargs)
        torch.manual_seed(1)
        ft = pt.copy()
        with torch.no_grad():
            for p in ft.module.parameters():
                p.add_(0.1 * torch.randn_like(p))
        subset = pt.layers[1::2]
        assert len(subset) == 2
        pool = torch.rand(8, *pt.input_size, generator=torch.Generator().manual_seed(0))
        cmp = compare(pt, ft, pool, layers=subset, seeds=1, n_images=4, steps=2, cache=None, progress=False)
        numbers = dict(zip(subset, [2, 4], strict=True))
        assert cmp.per_layer["layer_number"].to_dict() == numbers
        assert dict(zip(cmp.stir["target_layer"], cmp.stir["target_layer_number"], strict=True)) == numbers
        assert dict(zip(cmp.cka["pretrained_layer"], cmp.cka["pretrained_layer_number"], strict=True)) == numbers
        html = cmp._repr_html_()
        assert all(f"{n} ({name})" in html for name, n in numbers.items()), family
