"""Model loading and layer capture: values, not shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ftlens.errors import CheckpointError, ImageError, LayerError, NumericalError, OfflineError
from ftlens.models import load_model, resolve_run_checkpoint, save_checkpoint

ATOL = 1e-6


def test_block_outputs_equal_timm_forward_intermediates(make_vit):
    w = make_vit()
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    reps = w.representations(x)
    normed = (x - 0.5) / 0.5  # timm's ViT mean/std
    with torch.no_grad():
        inter = w.module.forward_intermediates(
            normed, indices=len(w.layers), return_prefix_tokens=True, output_fmt="NLC", intermediates_only=True
        )
    assert len(inter) == len(w.layers) == 4
    for layer, out in zip(w.layers, inter, strict=False):
        patches, prefix = out
        tokens = torch.cat([prefix, patches], dim=1)  # CLS first, as in the residual stream
        torch.testing.assert_close(reps[layer], tokens.reshape(6, -1), atol=ATOL, rtol=0)


def test_pre_logits_is_cls_after_norm(make_vit):
    w = make_vit()
    x = torch.rand(3, 3, 16, 16)
    r = w.representations(x, ["pre_logits"])["pre_logits"]
    with torch.no_grad():
        ref = w.module.forward_head(w.module.forward_features((x - 0.5) / 0.5), pre_logits=True)
    torch.testing.assert_close(r, ref, atol=ATOL, rtol=0)
    assert w.num_features == r.shape[1] == 32


def test_forward_stops_after_deepest_requested_layer(make_vit):
    w = make_vit()
    ran: list[str] = []
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, b in enumerate(w.module.blocks)]
    try:
        w.representations(torch.rand(2, 3, 16, 16), ["blocks.1"])
    finally:
        for h in hooks:
            h.remove()
    assert ran == [0, 1]  # blocks 2 and 3 never ran: an early layer costs less
    # and no hook of ours is left behind
    assert all(len(m._forward_hooks) == 0 for m in w.module.modules())


def test_forward_layers_is_differentiable_and_clamps_before_normalising(make_vit):
    w = make_vit()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    out = w.forward_layers(x, ["blocks.0"])["blocks.0"]
    (g,) = torch.autograd.grad(out.square().sum(), x)
    assert g.abs().sum() > 0
    # values outside [0, 1] are clamped to the same pixels as their clamp
    y = torch.rand(2, 3, 16, 16) * 3 - 1
    a = w.forward_layers(y, "blocks.0")["blocks.0"]
    b = w.forward_layers(y.clamp(0, 1), "blocks.0")["blocks.0"]
    torch.testing.assert_close(a, b)


def test_copy_and_different_models(make_vit):
    a = make_vit(0)
    b = make_vit(1)
    assert a.fingerprint != b.fingerprint
    c = a.copy()
    assert c.fingerprint == a.fingerprint
    x = torch.rand(4, 3, 16, 16)
    ra, rb, rc = a.representations(x), b.representations(x), c.representations(x)
    assert all(torch.equal(ra[k], rc[k]) for k in ra)
    assert any(not torch.allclose(ra[k], rb[k]) for k in ra)


def test_unknown_layer_lists_close_matches(make_vit):
    w = make_vit()
    with pytest.raises(LayerError, match="blocks.1"):
        w.resolve_layers(["blocks.l"])
    with pytest.raises(LayerError, match="matches no module"):
        w.resolve_layers(["decoder.*"])


def test_glob_layers_in_execution_order(make_vit):
    w = make_vit()
    assert w.resolve_layers(["blocks.3", "blocks.?"]) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert w.resolve_layers(["blocks.*.mlp"]) == [f"blocks.{i}.mlp" for i in range(4)]


def test_images_of_wrong_shape_or_range(make_vit):
    w = make_vit()
    with pytest.raises(ImageError, match="pass image_size=32"):
        w.representations(torch.rand(2, 3, 32, 32))
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        w.representations(torch.rand(2, 3, 16, 16) * 255)
    with pytest.raises(ImageError, match="floating"):
        w.representations(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))


def test_nan_weights_are_reported_with_the_layer(make_vit):
    w = make_vit()
    with torch.no_grad():
        w.module.blocks[2].mlp.fc1.weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match="blocks.2"):
        w.representations(torch.rand(2, 3, 16, 16))


def test_generic_module_with_named_layers_and_reuse_error():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.ReLU()
            self.fc = nn.Linear(4 * 8 * 8, 5)

        def forward(self, x):
            x = self.act(self.conv(x))
            x = self.act(x)  # the same module twice
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    net = Net()
    w = load_model(net, layers=["conv", "fc"], input_size=(3, 8, 8))
    x = torch.rand(3, 3, 8, 8)
    reps = w.representations(x)
    # 4-D maps are flattened, never averaged
    with torch.no_grad():
        ref = net.conv(x).reshape(3, -1)
    torch.testing.assert_close(reps["conv"], ref)
    assert reps["fc"].shape == (3, 5)
    with pytest.raises(LayerError, match="more than once"):
        w.representations(x, ["act"])
    # without input_size the size comes from the first images (issue 14: no longer refused)
    lazy = load_model(net, layers=["conv"])
    assert lazy.input_size is None
    torch.testing.assert_close(lazy.representations(x)["conv"], ref)
    assert lazy.input_size == (3, 8, 8) and lazy.mean == (0.0,) * 3 and lazy.std == (1.0,) * 3
    with pytest.raises(ImageError, match="shape"):
        lazy.representations(torch.rand(2, 3, 10, 10))


def test_checkpoint_roundtrip_and_run_spec(tmp_path, make_vit):
    w = make_vit(3)
    path = tmp_path / "run" / "checkpoints" / "epoch_002.safetensors"
    save_checkpoint(w, path, extra_tensors={"decoder.weight": torch.ones(2)})
    back = load_model(str(path))
    assert back.fingerprint == w.fingerprint
    assert torch.equal(back.extra_state["task_head.decoder.weight"], torch.ones(2))
    run = tmp_path / "run"
    assert resolve_run_checkpoint(f"{run}@2") == path
    assert resolve_run_checkpoint(f"{run}@last") == path
    assert load_model(f"{run}@2").fingerprint == w.fingerprint
    with pytest.raises(CheckpointError, match="epochs present"):
        resolve_run_checkpoint(f"{run}@5")


def test_checkpoint_mismatch_lists_keys(tmp_path, make_vit):
    w = make_vit()
    path = save_checkpoint(w, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="missing keys: blocks.4"):
        load_model(str(path), arch="ftlens:vit-tiny-16")  # 12 blocks, other width
    pt = tmp_path / "m.pt"
    torch.save({"state_dict": {"nonsense": torch.zeros(1)}}, pt)
    with pytest.raises(CheckpointError, match="unexpected keys: nonsense"):
        load_model(str(pt), arch="ftlens:vit-micro")


def test_truncated_checkpoint_is_a_clear_error(tmp_path, make_vit):
    path = save_checkpoint(make_vit(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(str(path))


def test_pretrained_offline_names_the_alternatives(monkeypatch):
    import timm

    def offline(*a, **k):
        raise OSError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(OfflineError, match="pretrained=False"):
        load_model("timm:vit_base_patch32_224", pretrained=True)


def test_timm_kwargs_build_a_small_vit():
    w = load_model("timm:vit_base_patch32_224", img_size=32, patch_size=4, depth=3, embed_dim=24, num_heads=2)
    assert w.input_size == (3, 32, 32)
    assert w.layers == ["blocks.0", "blocks.1", "blocks.2"]
    assert w.layer_shapes()["blocks.0"] == (65, 24)


def test_layer_fingerprint_covers_exactly_the_weights_before_the_layer(make_vit):
    a = make_vit(0)
    b = a.copy()
    with torch.no_grad():
        b.module.blocks[2].mlp.fc1.weight.add_(1.0)
        b.module.head = nn.Linear(32, 7)  # a new head changes nothing up to the blocks
    b.refresh_fingerprint()
    assert a.fingerprint != b.fingerprint
    assert a.layer_fingerprint("blocks.0") == b.layer_fingerprint("blocks.0")
    assert a.layer_fingerprint("blocks.1") == b.layer_fingerprint("blocks.1")
    assert a.layer_fingerprint("blocks.2") != b.layer_fingerprint("blocks.2")
    assert a.layer_fingerprint("blocks.3") != b.layer_fingerprint("blocks.3")
    # root parameters (position embedding) reach every layer
    c = a.copy()
    with torch.no_grad():
        c.module.pos_embed.add_(0.1)
    c.refresh_fingerprint()
    assert all(a.layer_fingerprint(layer) != c.layer_fingerprint(layer) for layer in a.layers)
    # preprocessing is part of it
    d = load_model("ftlens:vit-micro", mean=(0.4, 0.4, 0.4))
    d.module.load_state_dict(a.module.state_dict())
    assert d.layer_fingerprint("blocks.0") != a.layer_fingerprint("blocks.0")


def test_gradient_reaches_pixels_on_the_bounds(make_vit):
    # the clamp before normalising is straight-through for inputs that need a gradient:
    # torch.clamp's own gradient is 0 at exactly 0 and 1, which would freeze inversions
    w = make_vit()
    x = torch.rand(2, 3, 16, 16)
    x[:, :, :4] = 0.0
    x[:, :, -4:] = 1.0
    x.requires_grad_(True)
    out = w.forward_layers(x, "blocks.0")["blocks.0"]
    (g,) = torch.autograd.grad(out.square().sum(), x)
    assert (g[:, :, :4] != 0).float().mean() > 0.9
    assert (g[:, :, -4:] != 0).float().mean() > 0.9
