"""Inversion schedules: the paper's fixed schedule bit for bit, the adaptive schedule against a
per-image reference, early stopping's image-step count, cache keys, STIR against the fixed path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ftlens.inversion import (
    CODE_VERSION,
    SCHEDULE_PRESETS,
    STOP_RESIDUAL,
    InversionSettings,
    cached_inversion,
    inversion_key,
    invert,
    schedule_fields,
    start_images,
)
from ftlens.models import load_model
from ftlens.settings import PAPER
from ftlens.store import content_key, tensor_hash

N = 12


@pytest.fixture(scope="module")
def vit(make_vit):
    return make_vit(0)


class _SmallCNN(nn.Module):
    """Conv -> depthwise conv -> conv: a second model family (BatchNorm in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x):
        return self.head(self.dw(self.stem(x)))


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(1)
    module = _SmallCNN()
    with torch.no_grad():
        module.stem[1].running_mean.uniform_(-0.2, 0.2)
        module.stem[1].running_var.uniform_(0.5, 2.0)
    return load_model(module, layers=["stem", "dw", "head"], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                      input_size=(3, 16, 16))


@pytest.fixture(scope="module")
def images(make_pool):
    return make_pool(N, 5)


def _rep(model, x, layer):
    return model.forward_layers(x, [layer], clone=False)[layer]


def _reference_fixed(model, layer, images, steps, step_size, seed):
    """The paper's loop written out (the code before schedules existed): the same operations."""
    x_true = images.float()
    with torch.no_grad():
        target = _rep(model, x_true, layer).float()
    tnorm = target.norm(dim=1).clamp_min(1e-30)
    x = start_images(images, "noise", seed).clone()
    best_x = x.clamp(0.0, 1.0)
    best = torch.full((x.shape[0],), math.inf)
    hist = torch.empty(steps + 1)
    view = (x.shape[0], 1, 1, 1)
    for t in range(steps + 1):
        last = t == steps
        if not last:
            x.requires_grad_(True)
        with torch.set_grad_enabled(not last):
            rep = _rep(model, x, layer)
        residual = (rep.float() - target).norm(dim=1) / tnorm
        r = residual.detach()
        improved = r < best
        torch.where(improved, r, best, out=best)
        candidate = x.detach() if t else x.detach().clamp(0.0, 1.0)
        torch.where(improved.view(view), candidate, best_x, out=best_x)
        hist[t] = r.mean()
        if not last:
            (grad,) = torch.autograd.grad(residual.sum(), x)
            gn = grad.flatten(1).norm(dim=1).clamp_min(1e-30).view(view)
            x = x.detach()
            x.addcdiv_(grad, gn, value=-step_size).clamp_(0.0, 1.0)
    return best_x, best, hist


def _reference_adaptive(model, layer, images, settings: InversionSettings, seed):
    """The adaptive schedule for each image on its own, decisions in plain Python.

    Float32 arithmetic as in the library (step length a float32 scalar), so that with batches
    of one image the results agree bit for bit. Returns (best images, best residuals,
    evaluations per image)."""
    x0 = start_images(images, "noise", seed)
    out_x, out_r, evals = [], [], []
    f32 = torch.float32
    max_size = torch.tensor(settings.max_step_size or 8 * settings.step_size, dtype=f32)
    for i in range(images.shape[0]):
        with torch.no_grad():
            target = _rep(model, images[i : i + 1].float(), layer).float()
        tnorm = target.norm(dim=1).clamp_min(1e-30)
        x = x0[i : i + 1].clone()
        best, best_x, stale, n_eval = torch.tensor(math.inf), x.clamp(0, 1), 0, 0
        size = torch.tensor(settings.step_size, dtype=f32)
        for t in range(settings.steps + 1):
            n_eval += 1
            x.requires_grad_(t < settings.steps)
            with torch.set_grad_enabled(t < settings.steps):
                residual = (_rep(model, x, layer).float() - target).norm(dim=1) / tnorm
            r, prev = residual.detach()[0], best
            if bool(r < best):
                best, best_x = r, (x.detach() if t else x.detach().clamp(0, 1)).clone()
            if t == settings.steps:
                break
            (g,) = torch.autograd.grad(residual.sum(), x)
            if settings.schedule == "adaptive" and t:
                size = (size * settings.grow).clamp_max(max_size) if bool(r < prev) else size * settings.decay
            gn = g.flatten(1).norm(dim=1).clamp_min(1e-30)
            x = x.detach().addcmul_(g, (size / gn).view(1, 1, 1, 1), value=-1.0).clamp_(0, 1)
            stale = 0 if bool(r < prev * (1 - settings.min_improvement)) else stale + 1
            if (settings.patience is not None and stale >= settings.patience) or (
                settings.stop_residual is not None and float(best) <= settings.stop_residual
            ):
                break
        out_x.append(best_x)
        out_r.append(best)
        evals.append(n_eval)
    return torch.cat(out_x), torch.stack(out_r), evals


def _reference_adam(model, layer, images, settings: InversionSettings, seed):
    """Adam on the pixels for each image on its own, decisions in plain Python (the textbook
    update of Kingma & Ba, Algorithm 1, then the clamp; the windowed stall rule, which first
    lowers the image's step by ``decay`` ``lr_drops`` times, each with a fresh window).
    Returns (best images, best residuals, evaluations per image)."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    x0 = start_images(images, "noise", seed)
    out_x, out_r, evals = [], [], []
    for i in range(images.shape[0]):
        with torch.no_grad():
            target = _rep(model, images[i : i + 1].float(), layer).float()
        tnorm = target.norm(dim=1).clamp_min(1e-30)
        x = x0[i : i + 1].clone()
        m, v = torch.zeros_like(x), torch.zeros_like(x)
        best, best_x, bests, n_eval = torch.tensor(math.inf), x.clamp(0, 1), [], 0
        lr, drops, window_from = settings.lr, 0, 0  # the stall window starts at bests[window_from]
        for t in range(settings.steps + 1):
            n_eval += 1
            x.requires_grad_(t < settings.steps)
            with torch.set_grad_enabled(t < settings.steps):
                residual = (_rep(model, x, layer).float() - target).norm(dim=1) / tnorm
            r = residual.detach()[0]
            if bool(r < best):
                best, best_x = r, (x.detach() if t else x.detach().clamp(0, 1)).clone()
            bests.append(float(best))
            if t == settings.steps:
                break
            (g,) = torch.autograd.grad(residual.sum(), x)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
            x = (x.detach() - lr * m_hat / (v_hat.sqrt() + eps)).clamp(0, 1)
            k, j = settings.patience, len(bests) - 1
            stalled = j - k >= window_from and bests[j] > bests[j - k] * (1 - settings.min_improvement)
            if stalled and drops < settings.lr_drops:
                lr, drops, window_from, stalled = lr * settings.decay, drops + 1, j, False
            if stalled or float(best) <= settings.stop_residual:
                break
        out_x.append(best_x)
        out_r.append(best)
        evals.append(n_eval)
    return torch.cat(out_x), torch.stack(out_r), evals


@pytest.mark.parametrize("which", ["vit", "cnn"])
@pytest.mark.parametrize("batch_size", [1, N])
def test_adam_schedule_matches_the_textbook_update_per_image(which, batch_size, vit, cnn, images):
    model, layer, stop = (vit, "blocks.1", 0.1) if which == "vit" else (cnn, "head", 0.2)
    settings = InversionSettings(steps=40, stop_residual=stop, patience=5, min_improvement=0.05)
    assert settings.schedule == "adam"  # the default
    inv = invert(model, layer, images, steps=40, seed=1, batch_size=batch_size, schedule=schedule_fields(settings))
    with model.session():  # the model in the working state the library runs it in (channels-last CNN)
        ref_x, ref_r, evals = _reference_adam(model, layer, images, settings, seed=1)
    # the fused update rounds differently from the textbook one: close, not bit-equal
    torch.testing.assert_close(inv.residual, ref_r, atol=2e-3, rtol=2e-3)
    assert float((inv.images - ref_x).abs().mean()) < 2e-3
    assert abs(inv.extra["image_steps"] - sum(evals)) <= 2 * N  # a tie at the stop may round either way
    assert max(evals) < 41  # the stall rule stopped every image before the cap


@pytest.mark.parametrize("which", ["vit", "cnn"])
def test_fixed_schedule_is_the_papers_loop_bit_for_bit(which, vit, cnn, images):
    model, layer = (vit, "blocks.2") if which == "vit" else (cnn, "dw")
    inv = invert(model, layer, images, steps=7, step_size=0.5, seed=3, schedule="fixed")
    with model.session():  # the model in the working state the library runs it in (channels-last CNN)
        ref_x, ref_r, ref_h = _reference_fixed(model, layer, images, 7, 0.5, 3)
    assert torch.equal(inv.images, ref_x)
    assert torch.equal(inv.residual, ref_r)
    assert torch.equal(inv.history, ref_h)
    assert inv.extra["image_steps"] == N * 8
    assert inv.settings == InversionSettings.paper(steps=7)
    # a fixed-schedule run that cannot stop early takes the same path
    same = invert(model, layer, images, steps=7, seed=3, schedule={"schedule": "fixed", "patience": None,
                                                                     "stop_residual": None, "grow": 3.0})
    assert torch.equal(same.images, inv.images)


@pytest.mark.parametrize("which", ["vit", "cnn"])
@pytest.mark.parametrize("batch_size", [1, 5, N])
def test_adaptive_schedule_matches_a_per_image_reference(which, batch_size, vit, cnn, images):
    model, layer, stop = (vit, "blocks.1", 0.05) if which == "vit" else (cnn, "head", 0.2)
    settings = InversionSettings(steps=25, stop_residual=stop, schedule="adaptive", patience=3)
    inv = invert(model, layer, images, steps=25, seed=1, batch_size=batch_size,
                 schedule=schedule_fields(settings))
    with model.session():  # the model in the working state the library runs it in (channels-last CNN)
        ref_x, ref_r, evals = _reference_adaptive(model, layer, images, settings, seed=1)
    if batch_size == 1:  # the same operations on the same one-image batches
        assert torch.equal(inv.residual, ref_r) and torch.equal(inv.images, ref_x)
    else:  # other batch shapes round matmuls differently
        torch.testing.assert_close(inv.residual, ref_r, atol=1e-3, rtol=1e-3)
        assert float((inv.images - ref_x).abs().mean()) < 1e-3
    # the claimed image-steps are the evaluations the reference made, and fewer than the cap
    assert inv.extra["image_steps"] == sum(evals) < N * 26
    assert min(evals) < 26  # some images stopped early
    assert inv.settings == settings


def test_image_steps_count_the_forward_rows(vit, images):
    rows = []
    handle = vit.module.blocks[0].register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    try:
        inv = invert(vit, "blocks.0", images, steps=20, seed=0,
                     schedule={"patience": 3, "min_improvement": 0.15, "lr_drops": 0})
    finally:
        handle.remove()
    assert rows[0] == N  # the target forward
    assert sum(rows[1:]) == inv.extra["image_steps"] < N * 21
    assert rows[-1] < N  # the batch shrank as images stopped
    # the returned residual is that of the returned images (stopped images included)
    with torch.no_grad():
        a = _rep(vit, images, "blocks.0")
        b = _rep(vit, inv.images, "blocks.0")
    torch.testing.assert_close(inv.residual, (b - a).norm(dim=1) / a.norm(dim=1), atol=2e-5, rtol=1e-4)
    assert bool((inv.best_history[1:] <= inv.best_history[:-1] + 1e-7).all())
    assert inv.history.shape == (21,)


def test_threshold_stop_every_early_image_reached_it(cnn, images):
    inv = invert(cnn, "stem", images, steps=40, seed=2, schedule={"patience": None, "stop_residual": 0.2})
    assert bool((inv.residual <= 0.2).all())  # nothing stalls here: every image reaches the threshold
    assert inv.extra["image_steps"] < N * 41


def test_schedule_names_and_errors():
    assert schedule_fields(None) == {} and schedule_fields("adam") == {}
    assert InversionSettings().schedule == PAPER.schedule == "adam"
    assert InversionSettings(**schedule_fields("adaptive")).schedule == "adaptive"
    assert InversionSettings().stop_residual == STOP_RESIDUAL == PAPER.stop_fraction * PAPER.residual_threshold
    paper = InversionSettings(**schedule_fields("fixed"))
    assert paper == InversionSettings.paper() and not paper.adaptive and not paper.early_stop
    assert set(SCHEDULE_PRESETS) == {"adam", "adaptive", "fixed"}
    with pytest.raises(ValueError, match="schedule must be one of"):
        schedule_fields("fastest")
    with pytest.raises(ValueError, match="unknown schedule field"):
        schedule_fields({"patiense": 3})
    for bad in ({"decay": 1.0}, {"grow": 0.5}, {"patience": 0}, {"stop_residual": -1.0}, {"schedule": "sgd"},
                {"lr": 0.0}, {"lr": 2.0}, {"lr_drops": -1},
                {"min_improvement": 1.0}, {"max_step_size": 0.1}):
        with pytest.raises(ValueError):
            InversionSettings(**bad)


def test_cache_key_has_every_schedule_option_and_fixed_keys_are_unchanged(vit, images):
    h = tensor_hash(images)
    paper = InversionSettings.paper(steps=9)
    key, content = inversion_key(vit, "blocks.1", h, 0, paper, "cpu")
    old = {"kind": "inversion", "code_version": CODE_VERSION, "model": vit.layer_fingerprint("blocks.1"),
           "layer": "blocks.1", "images": h, "seed": 0, "steps": 9, "step_size": 0.5, "start": "noise",
           "autocast": None}
    assert content == old and key == content_key(old)  # caches of the fixed schedule stay valid
    base = InversionSettings(steps=9)
    keys = {inversion_key(vit, "blocks.1", h, 0, base, "cpu")[0], key}
    for change in ({"schedule": "fixed"}, {"decay": 0.25}, {"grow": 2.0}, {"max_step_size": 2.0},
                   {"patience": 5}, {"min_improvement": 0.05}, {"stop_residual": 0.01}, {"stop_residual": None},
                   {"lr": 0.1}, {"lr_drops": 0}, {"schedule": "adaptive"}):
        s = InversionSettings(**{**base.as_dict(), **change})
        keys.add(inversion_key(vit, "blocks.1", h, 0, s, "cpu")[0])
    assert len(keys) == 13
    # lr and lr_drops are Adam's alone: the other schedules' keys are those of earlier versions
    adaptive = InversionSettings(steps=9, schedule="adaptive")
    assert not {"lr", "lr_drops"} & set(inversion_key(vit, "blocks.1", h, 0, adaptive, "cpu")[1])
    assert inversion_key(vit, "blocks.1", h, 0, adaptive, "cpu")[0] == inversion_key(
        vit, "blocks.1", h, 0, InversionSettings(steps=9, schedule="adaptive", lr=0.2, lr_drops=0), "cpu")[0]


@pytest.mark.parametrize("which", ["vit", "cnn"])
def test_a_stalled_adam_image_lowers_its_step_and_only_gains(which, vit, cnn, images):
    """Up to its first stall an image takes the same steps with or without lowering the step;
    lowering it instead of stopping can only take it further: per image, a best residual at
    most that of the run without, from at least as many steps."""
    model, layer = (vit, "blocks.1") if which == "vit" else (cnn, "head")
    common = {"stop_residual": None, "patience": 3, "min_improvement": 0.05}
    runs = {d: invert(model, layer, images, steps=60, seed=2, schedule={**common, "lr_drops": d}) for d in (0, 2)}
    assert (runs[2].residual <= runs[0].residual).all()
    assert runs[2].extra["image_steps"] > runs[0].extra["image_steps"]  # some image stalled and went on
    assert float(runs[2].residual.mean()) < float(runs[0].residual.mean())


def test_cached_adaptive_inversion_round_trips(vit, images, tmp_path):
    s = InversionSettings(steps=6)
    a = cached_inversion(vit, "blocks.0", images, seed=0, settings=s, cache=tmp_path)
    b = cached_inversion(vit, "blocks.0", images, seed=0, settings=s, cache=tmp_path)
    assert b.cached and b.settings == s and b.extra["image_steps"] == a.extra["image_steps"]
    assert torch.equal(a.images, b.images)
    c = cached_inversion(vit, "blocks.0", images, seed=0, settings=InversionSettings.paper(steps=6), cache=tmp_path)
    assert not c.cached and c.settings.schedule == "fixed"


def test_adaptive_stir_within_002_of_the_fixed_path_with_fewer_image_steps(vit, images):
    from ftlens.invariance import compare

    torch.manual_seed(9)
    ft = load_model("ftlens:vit-micro")
    pool = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    kw = dict(seeds=1, n_images=24, steps=40, cache=None, progress=False)
    fixed = compare(vit, ft, pool, schedule="fixed", **kw)
    adaptive = compare(vit, ft, pool, schedule="adaptive", **kw)
    for t in ("pretrained", "finetuned"):
        for r in ("pretrained", "finetuned"):
            diff = np.abs(fixed.stir_matrix(t, r).to_numpy() - adaptive.stir_matrix(t, r).to_numpy())
            assert float(diff.max()) < 0.02
    assert adaptive.inversions["image_steps"].sum() < 0.8 * fixed.inversions["image_steps"].sum()
    assert (fixed.inversions["image_steps"] == 24 * 41).all()


def test_channels_last_runtime_gives_the_nchw_result_within_rounding(cnn, vit, images):
    from ftlens.inversion import runtime

    base = invert(cnn, "head", images, steps=6, seed=4, schedule="fixed")
    with runtime(channels_last=True):
        cl = invert(cnn, "head", images, steps=6, seed=4, schedule="fixed")
        same_vit = invert(vit, "blocks.0", images, steps=3, seed=4)  # no convolution stack: untouched
    torch.testing.assert_close(cl.residual, base.residual, atol=1e-4, rtol=1e-3)
    assert float((cl.images - base.images).abs().mean()) < 1e-3
    assert all(p.is_contiguous() for p in cnn.module.parameters())  # the model is given back as it was
    assert torch.equal(same_vit.images, invert(vit, "blocks.0", images, steps=3, seed=4).images)


def test_compare_stops_images_at_a_fraction_of_its_residual_threshold(vit):
    from ftlens.invariance import compare

    pool = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    kw = dict(layers=["blocks.0"], seeds=1, n_images=8, steps=2, cache=None, progress=False)
    got = compare(vit, vit, pool, residual_threshold=0.3, **kw).config["inversion"]
    assert got["stop_residual"] == pytest.approx(PAPER.stop_fraction * 0.3)
    assert compare(vit, vit, pool, schedule="fixed", residual_threshold=0.3, **kw).config["inversion"][
        "stop_residual"] is None
