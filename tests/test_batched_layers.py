"""Cross-layer batched inversion (:mod:`ftlens.inversion.batched`) against the per-layer path.

Every row of the staged batch keeps the per-layer path's state (start noise, step length, best
iterate, early stop), so results must equal it. Tolerance: float32 rounding only. A matrix
product over a batch of other size may be blocked differently by the BLAS and round differently,
so equality is asked within 1e-5 (residuals, histories) and 1e-4 (pixels), not bit for bit
(for these random-weight models it is bit for bit on this CPU). The steps can amplify such
rounding: on the real ImageNet EfficientNet-Lite0 at 32 px, 5 fixed steps, the per-layer path
itself moves by up to 9e-3 in residual between batch sizes 4 and 32, and the batched path
differs from it by the same amount; it is a property of the method, not of the batching.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ftlens.invariance import compare
from ftlens.inversion import InversionSettings, cached_inversion, invert, invert_many, runtime
from ftlens.inversion.batched import Job, invert_jobs, stageable
from ftlens.models import load_model

RESIDUAL_TOL = 1e-5
PIXEL_TOL = 1e-4


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return load_model("ftlens:vit-micro")


@pytest.fixture(scope="module")
def resnet():
    """A timm CNN with BatchNorm (eval mode) and residual blocks; its layers are stages."""
    torch.manual_seed(1)
    return load_model("timm:resnet10t", image_size=32)


def _pool(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_same(got, ref):
    assert got.layer == ref.layer and got.seed == ref.seed
    torch.testing.assert_close(got.residual, ref.residual, atol=RESIDUAL_TOL, rtol=0)
    assert float((got.images - ref.images).abs().max()) <= PIXEL_TOL
    torch.testing.assert_close(got.history, ref.history, atol=RESIDUAL_TOL, rtol=0)
    torch.testing.assert_close(got.best_history, ref.best_history, atol=RESIDUAL_TOL, rtol=0)
    assert got.extra["image_steps"] == ref.extra["image_steps"]


SCHEDULES = {
    "fixed": InversionSettings.paper(steps=6),
    "adaptive": InversionSettings(steps=6),
    # images stop early (threshold and patience), so the batch shrinks row by row
    "adaptive-stopping": InversionSettings(steps=25, stop_residual=0.6, patience=2, min_improvement=0.05),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_batched_equals_per_layer_for_every_layer_and_seed(name, family, vit, resnet):
    model, size = (vit, 16) if family == "vit" else (resnet, 32)
    settings = SCHEDULES[name]
    images = {0: _pool(5, size, 10), 3: _pool(4, size, 11)}  # seeds with their own images (and sizes)
    jobs = [Job(layer, seed, x) for seed, x in images.items() for layer in reversed(model.layers)]
    assert stageable(model, model.layers)
    got = invert_jobs(model, jobs, settings, batch_size=3)  # 3 images per job per batch: two chunks
    assert got is not None and len(got) == len(jobs)
    stopped = 0
    for job, inv in zip(jobs, got, strict=True):
        ref = invert(model, job.layer, job.images, settings.steps, seed=job.seed, schedule=settings)
        _assert_same(inv, ref)
        stopped += ref.extra["image_steps"] < job.images.shape[0] * (settings.steps + 1)
        assert inv.extra["batched_layers"] == len(model.layers)
    if name == "adaptive-stopping":
        assert stopped > 0  # the test exercises the shrinking batch


def test_a_layer_without_rows_in_a_batch_is_passed_through(vit):
    """Jobs of different sizes: the second chunk has no row of the shallow layer (and, with early
    stopping, whole layers run out of rows): the deeper rows still go through its block."""
    small, large = _pool(2, 16, 16), _pool(5, 16, 17)
    settings = InversionSettings(steps=12, stop_residual=0.9, patience=1, min_improvement=0.2)
    jobs = [Job("blocks.0", 0, small), Job("blocks.1", 0, large), Job("blocks.3", 1, large)]
    got = invert_jobs(vit, jobs, settings, batch_size=3)
    for job, inv in zip(jobs, got, strict=True):
        _assert_same(inv, invert(vit, job.layer, job.images, 12, seed=job.seed, schedule=settings))


def test_invert_many_uses_the_runtime_option(vit):
    x = _pool(6, 16, 12)
    ref = invert_many(vit, None, x, steps=4, seed=2)
    with runtime(batch_layers=True):
        got = invert_many(vit, None, x, steps=4, seed=2)
    assert list(got) == list(ref)
    for layer in ref:
        assert "batched_layers" in got[layer].extra and "batched_layers" not in ref[layer].extra
        _assert_same(got[layer], ref[layer])


class _SkipAcross(nn.Module):
    """``b(tanh(a(x)) + x)``: the input skips over layer ``a``, so the batch cannot shrink after it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)) + x)


def test_models_that_are_not_a_sequence_of_stages_fall_back_to_the_per_layer_path(vit):
    torch.manual_seed(3)
    skip = load_model(_SkipAcross(), layers=["a", "b"], input_size=(3, 8, 8))
    assert not stageable(skip, ["a", "b"])
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    assert invert_jobs(skip, [Job("a", 0, x), Job("b", 0, x)], InversionSettings(steps=3)) is None
    got = invert_many(skip, ["a", "b"], x, steps=3, batch_layers=True)  # the per-layer fallback
    ref = invert_many(skip, ["a", "b"], x, steps=3)
    for layer in ("a", "b"):
        assert "batched_layers" not in got[layer].extra
        assert torch.equal(got[layer].images, ref[layer].images)
    # nested layers (a block and a module inside it) are not stages either
    assert not stageable(vit, ["blocks.0", "blocks.0.mlp", "blocks.1"])
    assert stageable(vit, ["blocks.0", "blocks.2"])  # layers may skip blocks


@pytest.mark.parametrize("schedule", ["fixed", "adaptive"])
def test_compare_stir_is_unchanged_by_batching(schedule, vit):
    torch.manual_seed(5)
    ft = load_model("ftlens:vit-micro")
    pool = _pool(16, 16, 13)
    kw = dict(seeds=2, n_images=8, steps=8, cache=None, progress=False, schedule=schedule)
    ref = compare(vit, ft, pool, **kw)
    got = compare(vit, ft, pool, batch_layers=True, **kw)
    diff = (ref.stir["stir"] - got.stir["stir"]).abs().max()
    assert diff <= 1e-5, diff
    assert (ref.inversions["image_steps"].to_numpy() == got.inversions["image_steps"].to_numpy()).all()


def test_compare_stir_is_unchanged_by_batching_on_a_cnn(resnet):
    torch.manual_seed(6)
    ft = load_model("timm:resnet10t", image_size=32)
    pool = _pool(6, 32, 14)
    kw = dict(seeds=1, n_images=6, steps=3, cache=None, progress=False, bootstrap=0)
    ref = compare(resnet, ft, pool, **kw)
    got = compare(resnet, ft, pool, batch_layers=True, **kw)
    assert (ref.stir["stir"] - got.stir["stir"]).abs().max() <= 1e-5


def test_batching_computes_only_the_layers_missing_from_the_cache(vit, tmp_path):
    torch.manual_seed(7)
    ft = load_model("ftlens:vit-micro")
    pool = _pool(8, 16, 15)
    kw = dict(seeds=1, n_images=8, steps=4, progress=False, bootstrap=0)
    part = compare(vit, ft, pool, layers=["blocks.0", "blocks.2"], cache=tmp_path, **kw)
    assert part.config["n_inversions_computed"] == 4
    full = compare(vit, ft, pool, cache=tmp_path, batch_layers=True, **kw)
    assert full.config["n_inversions"] == 8 and full.config["n_inversions_computed"] == 4  # only the missing
    ref = compare(vit, ft, pool, cache=None, **kw)
    assert (ref.stir["stir"] - full.stir["stir"]).abs().max() <= 1e-5
    # what the batch stored is under the per-layer path's keys: read back as cached
    x = pool[full.config["samples"]["0"]]
    again = cached_inversion(vit, "blocks.3", x, seed=0, settings=InversionSettings(steps=4), cache=tmp_path)
    assert again.cached


def test_cli_batch_layers_gives_the_same_comparison(tmp_path):
    from typer.testing import CliRunner

    from ftlens.cli import app
    from ftlens.invariance import load_comparison

    args = ["compare", "--pretrained", "ftlens:vit-micro", "--finetuned", "ftlens:vit-tiny-16", "--data", "digits",
            "--images", "8", "--seeds", "1", "--steps", "3", "--no-cache", "--no-plots"]
    runner = CliRunner()
    for out, extra in (("plain", []), ("batched", ["--batch-layers"])):
        torch.manual_seed(0)  # the presets' random weights come from the global generator
        result = runner.invoke(app, [*args, "--out", str(tmp_path / out), *extra])
        assert result.exit_code == 0, result.output
    plain, batched = load_comparison(tmp_path / "plain"), load_comparison(tmp_path / "batched")
    assert len(plain.stir) == len(batched.stir) > 0
    assert (plain.stir["stir"] - batched.stir["stir"]).abs().max() <= 1e-5
