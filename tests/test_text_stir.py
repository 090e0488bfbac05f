"""STIR for text models: inversions in the word-vector space both models read (the mask fixed,
no clamp, steps in units of the table's spread), and the properties of the image version: an
exact copy gives exactly 0, changes confined to the last blocks leave earlier layers at exactly
0, the convergence gate and the intervals apply, the inversions are seeded and cached."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("transformers", reason="needs the 'hf' extra")

import _text_models as tm  # noqa: E402

from ftlens import compare, invert  # noqa: E402
from ftlens.inversion import rules  # noqa: E402
from ftlens.inversion.settings import InversionSettings  # noqa: E402
from ftlens.inversion.starts import start_images  # noqa: E402
from ftlens.models import load_model  # noqa: E402
from ftlens.models.domain import PIXELS, InputDomain  # noqa: E402

TEXTS = ["the cat sleeps on the sofa", "a man plays guitar", "stock market fell sharply today", "rain in the sky",
         "the dog and the cat sleeps in the bed", "people love a song and a poem", "code program bug fix",
         "war and peace", "the sun is blue", "a woman plays piano fast", "people work in science", "it is slow"]
#: few, short inversions: far from the original inputs, so that changed layers show
KW = dict(seeds=1, n_images=8, steps=6, cache=None, progress=False)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stir-text")
    return {kind: tm.save(root / kind, kind, seed=i, pooling="mean")
            for i, kind in enumerate(("bert", "distilbert", "gpt2"))}


def _load(dirs, kind, tokens="mean"):
    return load_model(f"hf:{dirs[kind]}", max_length=12, tokens=tokens)


def _perturb_last_two(model):
    ft = model.copy()
    with torch.no_grad():
        for layer in model.layers[-2:]:
            for p in ft.module.get_submodule(layer).parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 3 * (p.abs().mean() + 0.5))
    ft.refresh_fingerprint()
    return ft


def test_inversions_run_in_the_word_vector_space(dirs):
    m = _load(dirs, "bert")
    x = m.embed(TEXTS[:6])
    layer = "body.encoder.layer.1"
    inv = invert(m, layer, TEXTS[:6], steps=20, seed=3)
    assert inv.images.shape == x.shape
    assert torch.equal(inv.images[..., -1], x[..., -1])  # the mask is the texts' own, untouched
    assert float(inv.images[..., :-1].min()) < 0  # word vectors are not clamped to [0, 1]
    assert float(inv.best_history[-1]) < float(inv.best_history[0])
    target = m.representations(x, layer)[layer].double()
    got = m.representations(inv.images, layer)[layer].double()
    np.testing.assert_allclose(inv.residual.double(), ((got - target).norm(dim=1) / target.norm(dim=1)), rtol=1e-4,
                               atol=1e-5)
    # the start: the seeded noise in units of the table's spread around its mean, with the texts' mask
    d = m.domain
    table = m.module.word_embeddings.detach().double()
    assert (d.low, d.high, d.fixed_last) == (None, None, True)
    assert d.scale == pytest.approx(float(table.std())) and d.centre == pytest.approx(float(table.mean()))
    start = invert(m, layer, x, steps=0, seed=3, schedule="fixed").images
    want = start_images(x, "noise", 3) * d.scale + d.centre
    want[..., -1] = x[..., -1]
    torch.testing.assert_close(start, want)
    again = invert(m, layer, x, steps=20, seed=3)
    assert torch.equal(again.images, inv.images)  # seeded: texts and their word vectors alike
    assert not torch.equal(invert(m, layer, x, steps=20, seed=4).images, inv.images)


@pytest.mark.parametrize("schedule", ["adam", "adaptive", "fixed"])
def test_steps_are_in_units_of_the_domain(schedule):
    settings = InversionSettings(schedule=schedule, step_size=0.3, lr=0.05)
    g = torch.Generator().manual_seed(0)
    x, grad = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    improved = torch.tensor([True, False, True])
    unit = rules.step(settings, x.clone(), grad, rules.init_rows(settings, x), improved, 0,
                      InputDomain(None, None))
    scaled = rules.step(settings, x.clone(), grad, rules.init_rows(settings, x), improved, 0,
                        InputDomain(None, None, scale=0.05))
    torch.testing.assert_close(scaled - x, 0.05 * (unit - x))
    pixels = rules.step(settings, x.clone(), grad, rules.init_rows(settings, x), improved, 0, PIXELS)
    assert torch.equal(pixels, unit.clamp(0.0, 1.0))  # images: the same step, then the clamp


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
@pytest.mark.parametrize("tokens", ["mean", "all"])
def test_an_exact_copy_gives_exactly_zero(dirs, kind, tokens):
    m = _load(dirs, kind, tokens)
    pl = compare(m, m.copy(), TEXTS, **KW).per_layer
    assert (pl["learning"] == 0).all() and (pl["forgetting"] == 0).all()
    assert np.abs(pl["cka_divergence"].to_numpy()).max() < 1e-12


@pytest.mark.parametrize("kind", ["bert", "distilbert", "gpt2"])
def test_changes_in_the_last_two_blocks_show_from_them_on(dirs, kind):
    pt = _load(dirs, kind)
    ft = _perturb_last_two(pt)
    pl = compare(pt, ft, TEXTS, **KW).per_layer
    before, after = pt.layers[:-2], pt.layers[-2:]
    assert before[0] == "embeddings"
    assert (pl.loc[before, "forgetting"] == 0).all() and (pl.loc[before, "learning"] == 0).all()
    assert (pl.loc[after, "forgetting"] > 0.05).all(), pl[["learning", "forgetting"]]


def test_gate_intervals_cache_and_what_is_compared(dirs, tmp_path):
    pt = _load(dirs, "bert")
    ft = _perturb_last_two(pt)
    kw = dict(KW, seeds=2, n_images=5, cache=tmp_path / "cache", bootstrap=20)
    first = compare(pt, ft, TEXTS, **kw)
    assert first.config["n_inversions_computed"] == first.config["n_inversions"] > 0
    second = compare(pt, ft, TEXTS, **kw)
    assert second.config["n_inversions_computed"] == 0  # every inversion from the cache
    pd.testing.assert_frame_equal(first.per_seed, second.per_seed)
    pl = first.per_layer
    assert pl["converged"].dtype == bool and {"residual_pretrained", "residual_finetuned"} <= set(pl.columns)
    lows = [c for c in pl.columns if c.endswith(("_lo", "_hi"))]
    assert lows and all(pl[c].notna().all() for c in lows)
    strict = compare(pt, ft, TEXTS, **dict(kw, residual_threshold=1e-9)).per_layer
    assert not strict["converged"].any()  # the gate reads the same residuals
    note = first.config["inputs"]
    assert note["texts_embedded_by"] == pt.name and note["word_table_change"] == {"finetuned": 0.0}
    other = pt.copy()
    with torch.no_grad():
        other.module.word_embeddings[5:9] += 0.1
    other.refresh_fingerprint()
    changed = compare(pt, other, TEXTS, **KW)
    assert changed.config["inputs"]["word_table_change"]["finetuned"] > 0


def test_compare_command_on_a_finetuned_text_run(dirs, tmp_path):
    import warnings

    from ftlens.cli import app
    from ftlens.errors import RandomWeightsWarning
    from ftlens.finetune import finetune

    rows = [(t, f"c{i % 3}") for i, t in enumerate(TEXTS * 3)]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(tmp_path / "d.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        run = finetune(model=f"hf:{dirs['bert']}", data=f"csv:{tmp_path / 'd.csv'}", epochs=1, max_length=12,
                       batch_size=8, out=str(tmp_path / "run"), progress=False)
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", "--pretrained", f"{run.run_dir}@0", "--finetuned",
                                      f"{run.run_dir}@last", "--data", f"csv:{tmp_path / 'd.csv'}", "--images", "4",
                                      "--seeds", "1", "--steps", "4", "--tokens", "mean", "--no-plots",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    from ftlens import load_comparison

    cmp = load_comparison(out)
    assert list(cmp.per_layer.index) == load_model(f"{run.run_dir}@0").layers
    assert cmp.config["inputs"]["max_length"] == 12
    # the pretrained model by its own spec (128 tokens by default) against the run at 12 tokens:
    # compare reads the run's length for both, or the one --max-length names
    for extra, length in (([], 12), (["--max-length", "10"], 10)):
        out = tmp_path / f"cmp-spec-{length}"
        result = CliRunner().invoke(app, ["compare", "--pretrained", f"hf:{dirs['bert']}", "--finetuned",
                                          f"{run.run_dir}@last", "--data", f"csv:{tmp_path / 'd.csv'}", "--images",
                                          "4", "--seeds", "1", "--steps", "2", "--no-plots", "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        assert load_comparison(out).config["inputs"]["max_length"] == length
    from ftlens.errors import ImageSizeError

    with pytest.raises(ImageSizeError, match="max_length"):
        compare(load_model(f"hf:{dirs['bert']}", max_length=12), load_model(f"hf:{dirs['bert']}", max_length=10),
                TEXTS[:4], steps=1, seeds=1, cache=None, progress=False)
