"""A researcher's own models, as in a notebook: wrapping never changes them, results are always of
their current weights (train between two calls: cached == uncached), CNNs take any image size."""

from __future__ import annotations

import pandas as pd
import pytest
import timm
import torch
from torch import nn

import ftlens
from ftlens.errors import ImageError
from ftlens.models import load_model, weights_fingerprint

KW = {"seeds": 1, "n_images": 6, "steps": 3, "layers": ["layer1", "layer2"], "progress": False, "bootstrap": 0}


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", num_classes=5)


def _snapshot(m: nn.Module) -> dict:
    """Everything about a module that ftlens must leave as it was."""
    return {
        "modes": [(n, x.training) for n, x in m.named_modules()],
        "grad": [(n, p.requires_grad) for n, p in m.named_parameters()],
        "storage": [(n, t.data_ptr(), t.stride(), t.device) for n, t in m.state_dict().items()],
        "values": {n: t.clone() for n, t in m.state_dict().items()},
    }


def _same(a: dict, b: dict) -> bool:
    return (a["modes"] == b["modes"] and a["grad"] == b["grad"] and a["storage"] == b["storage"]
            and all(torch.equal(a["values"][k], b["values"][k]) for k in a["values"]))


def _train_step(m: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    loss = nn.functional.cross_entropy(m(x), torch.arange(x.shape[0]) % 5)
    opt.zero_grad()
    loss.backward()  # fails with "does not require grad" if ftlens froze the parameters
    opt.step()


def _tables(c) -> tuple[pd.DataFrame, ...]:
    return c.stir, c.cka, c.per_layer


def test_notebook_wrap_compare_train_compare(tmp_path):
    """Wrap a model in train mode, compare, train one step, compare again: the model still trains
    and every result equals a fresh uncached run on the weights as they are."""
    pool = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pretrained = _cnn(0)
    model = _cnn(0)  # the model being finetuned, in the middle of training
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    _train_step(model, opt, pool[:8])

    before = _snapshot(model)
    wrapped = ftlens.load_model(model)
    assert wrapped.module is model and _same(before, _snapshot(model))
    pt = ftlens.load_model(pretrained)
    cache = tmp_path / "cache"

    first = ftlens.compare(pt, wrapped, pool, cache=cache, **KW)
    assert _same(before, _snapshot(model))  # mode, flags, storage and values as they were
    assert model.training and all(p.requires_grad for p in model.parameters())

    _train_step(model, opt, pool[:8])  # one more step of training, in place
    second = ftlens.compare(pt, wrapped, pool, cache=cache, **KW)
    fresh = ftlens.compare(load_model(pretrained, copy=True), load_model(model, copy=True), pool, cache=None, **KW)
    for got, want in zip(_tables(second), _tables(fresh), strict=True):
        pd.testing.assert_frame_equal(got, want)
    assert not _tables(second)[0].equals(_tables(first)[0])  # the step changed the answer

    # a write through .data bypasses version counters; the session's value probe still sees it
    with torch.no_grad():
        model.layer1[0].conv1.weight.data.mul_(1.5)
    third = ftlens.compare(pt, wrapped, pool, cache=cache, **KW)
    fresh = ftlens.compare(load_model(pretrained, copy=True), load_model(model, copy=True), pool, cache=None, **KW)
    for got, want in zip(_tables(third), _tables(fresh), strict=True):
        pd.testing.assert_frame_equal(got, want)
    _train_step(model, opt, pool[:8])  # and it still trains


def test_fingerprint_follows_the_weights_at_use_time():
    m = _cnn(1)
    w = load_model(m)
    fp = w.fingerprint
    assert fp == weights_fingerprint(m, extra=(w.mean, w.std, w.input_size))
    layer_fp = w.layer_fingerprint("layer2")
    m.load_state_dict(_cnn(2).state_dict())  # in place: version counters move
    assert w.fingerprint != fp and w.layer_fingerprint("layer2") != layer_fp
    m.load_state_dict(_cnn(1).state_dict())  # the same values again: the same fingerprint
    assert w.fingerprint == fp and w.layer_fingerprint("layer2") == layer_fp
    with torch.no_grad():
        m.fc.weight.add_(1.0)  # after layer2: the whole-model fingerprint moves, layer2's does not
    assert w.fingerprint != fp and w.layer_fingerprint("layer2") == layer_fp


def test_representations_restore_mode_flags_format_and_device():
    m = _cnn(3).train()
    m.layer1.requires_grad_(False)  # a partly frozen model: each flag comes back as it was
    m.layer2.eval()
    before = _snapshot(m)
    w = load_model(m)
    x = torch.rand(4, 3, 24, 24)
    reps = w.representations(x, ["layer1", "layer4"])
    assert _same(before, _snapshot(m))
    # the values are those of eval mode (BatchNorm's running statistics), computed on the user's weights
    mean = torch.tensor(w.mean).view(1, 3, 1, 1)
    std = torch.tensor(w.std).view(1, 3, 1, 1)
    with torch.no_grad():
        m.eval()
        direct = m.layer1(m.maxpool(m.act1(m.bn1(m.conv1((x - mean) / std)))))
        m.train()
        m.layer2.eval()
    torch.testing.assert_close(reps["layer1"], direct.flatten(1), rtol=1e-4, atol=1e-5)
    assert _same(before, _snapshot(m))


def test_copy_option_and_owned_models_keep_their_state():
    m = _cnn(4).train()
    w = load_model(m, copy=True)
    assert w.module is not m and w.owned and not w.module.training
    assert not any(p.requires_grad for p in w.module.parameters())
    with torch.no_grad():
        m.fc.weight.add_(1.0)
    assert w.fingerprint == load_model(_cnn(4), copy=True).fingerprint  # frozen at the copy
    assert not load_model(m).owned and load_model("timm:resnet10t").owned


def test_cnn_takes_the_images_size_and_vit_error_names_image_size():
    w = load_model(_cnn(5))
    for size in (32, 48, 32):
        reps = w.representations(torch.rand(3, 3, size, size), ["layer4"])
        assert reps["layer4"].shape == (3, 512 * ((size + 31) // 32) ** 2)
        assert w.input_size == (3, size, size)
    vit = load_model("ftlens:vit-micro")
    with pytest.raises(ImageError, match=r"image_size=32 .*--image-size 32"):
        vit.representations(torch.rand(2, 3, 32, 32))
    assert load_model("ftlens:vit-micro", image_size=32).representations(torch.rand(2, 3, 32, 32))


def test_user_vit_resampled_on_a_copy_and_torchvision_shares_weights():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=3)
    pos = vit.pos_embed.detach().clone()
    w = load_model(vit, image_size=64)
    assert w.input_size == (3, 64, 64) and w.owned
    assert torch.equal(vit.pos_embed, pos) and vit.patch_embed.img_size == (32, 32)  # the user's ViT as it was

    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.resnet18(num_classes=4).train()
    before = _snapshot(tv)
    wt = load_model(tv)
    assert not wt.owned and isinstance(tv.fc, nn.Linear)  # the user's head is still there
    fp = wt.fingerprint
    wt.representations(torch.rand(2, 3, 32, 32), ["body.layer1"])
    assert _same(before, _snapshot(tv))
    with torch.no_grad():
        tv.layer1[0].conv1.weight.mul_(0.5)  # training the user's model changes the wrapper's
    assert wt.fingerprint != fp
