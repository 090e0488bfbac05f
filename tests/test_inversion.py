"""Representation inversion (ALGORITHMS.md §2): values, determinism, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ftlens.errors import ImageError, LayerError, NumericalError
from ftlens.inversion import Inversion, InversionSettings, invert, invert_many, start_images
from ftlens.models import load_model

N_IMAGES = 24
STEPS = 12



@pytest.fixture(scope="module")
def model(make_vit):
    return make_vit(0)


@pytest.fixture(scope="module")
def images(make_pool):
    return make_pool(N_IMAGES, 123)


def _residual(model, layer, x, x_prime):
    with torch.no_grad():
        a = model.forward_layers(x, [layer])[layer]
        b = model.forward_layers(x_prime, [layer])[layer]
    return (b - a).norm(dim=1) / a.norm(dim=1)


def test_result_in_range_and_residual_is_that_of_the_returned_images(model, images):
    inv = invert(model, "blocks.1", images, steps=STEPS, seed=0)
    assert isinstance(inv, Inversion)
    assert inv.images.shape == images.shape and inv.residual.shape == (N_IMAGES,)
    assert float(inv.images.min()) >= 0.0 and float(inv.images.max()) <= 1.0
    # the stored residual is the relative L2 distance of the returned (best) images
    torch.testing.assert_close(inv.residual, _residual(model, "blocks.1", images, inv.images), atol=2e-5, rtol=1e-4)
    # the inversion makes progress from the noise start
    assert float(inv.best_history[-1]) < 0.5 * float(inv.history[0])


def test_best_residual_never_increases_with_steps(model, images):
    short = invert(model, "blocks.2", images, steps=4, seed=3)
    long = invert(model, "blocks.2", images, steps=STEPS, seed=3)
    # same trajectory, more iterates considered: per image, never worse
    assert bool((long.residual <= short.residual).all())
    assert float(long.residual.mean()) < float(short.residual.mean())
    # the running best is non-increasing step by step
    assert bool((long.best_history[1:] <= long.best_history[:-1] + 1e-7).all())
    assert long.history.shape == (STEPS + 1,)


def test_same_seed_identical_different_seed_differs(model, images):
    a = invert(model, "blocks.0", images, steps=5, seed=7)
    b = invert(model, "blocks.0", images, steps=5, seed=7)
    c = invert(model, "blocks.0", images, steps=5, seed=8)
    assert torch.equal(a.images, b.images) and torch.equal(a.residual, b.residual)
    assert float((a.images - c.images).abs().max()) > 0.1


def test_start_noise_does_not_depend_on_batch_size(model, images):
    full = start_images(images, "noise", seed=5)
    part = start_images(images, "noise", seed=5, indices=range(8, 16))
    assert torch.equal(full[8:16], part)
    assert full.std() > 0.9 and full.min() < -1  # raw N(0, 1), not clamped at the start
    small = invert(model, "blocks.1", images, steps=4, seed=5, batch_size=5)
    big = invert(model, "blocks.1", images, steps=4, seed=5, batch_size=N_IMAGES)
    torch.testing.assert_close(small.images, big.images, atol=1e-4, rtol=0)


def test_starts_mixed_and_uniform(model, images):
    mixed = start_images(images, "mixed", seed=1)
    for i in range(N_IMAGES):
        matches = [j for j in range(N_IMAGES) if torch.equal(mixed[i], images[j])]
        assert matches and i not in matches  # another image of the set, never itself
    uni = start_images(images, "uniform", seed=1)
    assert 0.0 <= float(uni.min()) and float(uni.max()) <= 1.0
    inv = invert(model, "blocks.0", images, steps=3, start="mixed", seed=1)
    assert inv.settings.start == "mixed"
    with pytest.raises(ValueError, match="start"):
        invert(model, "blocks.0", images, steps=3, start="zeros")


def test_only_the_input_gets_a_gradient_and_forward_stops_at_the_layer(model, images):
    net = model.module
    net.blocks[0].mlp.fc1.weight.requires_grad_(True)  # even a trainable parameter gets no .grad
    calls = {"deeper": 0, "training": []}
    h1 = net.blocks[3].register_forward_hook(lambda *a: calls.__setitem__("deeper", calls["deeper"] + 1))
    h2 = net.blocks[0].register_forward_hook(lambda m, i, o: calls["training"].append(m.training))
    net.train()
    try:
        invert(model, "blocks.1", images[:4], steps=3)
        assert net.blocks[0].mlp.fc1.weight.grad is None
        assert calls["deeper"] == 0  # blocks.3 never ran: the forward stops after blocks.1
        assert calls["training"] and not any(calls["training"])  # eval() during the inversion
        assert net.training  # mode restored afterwards
    finally:
        h1.remove()
        h2.remove()
        net.eval()
        net.blocks[0].mlp.fc1.weight.requires_grad_(False)


def test_invert_many_and_settings(model, images):
    out = invert_many(model, ["blocks.0", "blocks.2"], images[:6], steps=2)
    assert list(out) == ["blocks.0", "blocks.2"]
    assert out["blocks.2"].layer == "blocks.2"
    s = InversionSettings(steps=3, autocast="bf16")
    assert s.autocast == "bfloat16" and s.effective_autocast("cpu") is None
    with pytest.raises(ValueError, match="steps"):
        InversionSettings(steps=-1)
    with pytest.raises(ValueError, match="step_size"):
        InversionSettings(step_size=0)


def test_errors_images_and_layers(model, images):
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        invert(model, "blocks.0", images * 2.0, steps=1)
    with pytest.raises(ImageError, match="shape"):
        invert(model, "blocks.0", torch.rand(2, 3, 8, 8), steps=1)
    with pytest.raises(LayerError, match="blocks.9"):
        invert(model, "blocks.9", images, steps=1)


class _NaNAfter(nn.Linear):
    """A linear layer whose output turns NaN from its ``k``-th call on (a diverging model)."""

    def __init__(self, k: int) -> None:
        super().__init__(16, 8)
        self.k, self.calls = k, 0

    def forward(self, x):
        self.calls += 1
        y = super().forward(x)
        return y * float("nan") if self.calls >= self.k else y


def test_nan_during_inversion_names_layer_and_step():
    net = nn.Sequential(nn.Flatten(), _NaNAfter(k=5))
    m = load_model(net, layers=["1"], input_size=(1, 4, 4))
    net[1].calls = 0  # call 1: the target; calls 2, 3, 4: steps 0, 1, 2; call 5: step 3
    x = torch.rand(3, 1, 4, 4)
    with pytest.raises(NumericalError, match=r"layer '1'.*step 3"):
        invert(m, "1", x, steps=6)
