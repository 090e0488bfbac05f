"""Finetuning text models: FT, LP, LP-FT, scratch and the others on a tiny BERT and a small
local text dataset; run folders, checkpoints, resumption, corrupted-text accuracy."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch

pytest.importorskip("transformers", reason="needs the 'hf' extra")

import _text_models as tm  # noqa: E402

from ftlens.errors import ConfigError, RandomWeightsWarning  # noqa: E402
from ftlens.finetune import finetune  # noqa: E402
from ftlens.finetune.config import FinetuneConfig  # noqa: E402
from ftlens.models import load_model  # noqa: E402

#: three classes told apart by their words
CLASS_WORDS = {"pets": "cat dog sleeps sofa bed", "money": "stock market fell rose sharply",
               "tech": "code program computer bug fix"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A CSV of 150 short texts, 50 per class, each mixing its class's words with common ones."""
    root = tmp_path_factory.mktemp("text-task")
    g = torch.Generator().manual_seed(0)
    common = "the a is on of and to in it".split()
    rows = []
    for label, words in CLASS_WORDS.items():
        words = words.split()
        for _ in range(50):
            n = int(torch.randint(3, 7, (1,), generator=g))
            picks = [words[int(i)] for i in torch.randint(len(words), (n,), generator=g)]
            picks += [common[int(i)] for i in torch.randint(len(common), (n,), generator=g)]
            order = torch.randperm(len(picks), generator=g).tolist()
            rows.append((" ".join(picks[i] for i in order), label))
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(root / "task.csv", index=False)
    return f"csv:{root / 'task.csv'}"


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return f"hf:{tm.save(tmp_path_factory.mktemp('bert') / 'bert', 'bert', pooling='mean')}"


def _run(model, data, out, **kw):
    kw.setdefault("epochs", 2)
    kw.setdefault("max_length", 12)
    kw.setdefault("batch_size", 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # the tiny model's weights are random
        return finetune(model=model, data=data, out=str(out), device="cpu", progress=False, **kw)


def test_text_defaults_are_the_transformer_recipe():
    text = FinetuneConfig(model="ftlens:minilm-l6", data="fortunes-topics")
    images = FinetuneConfig(model="ftlens:vit-micro", data="digits")
    assert (text.optimizer, text.batch_size, text.weight_decay) == ("adamw", 32, 0.01)
    assert (images.optimizer, images.batch_size, images.weight_decay) == ("sgd", 128, 1e-4)
    assert FinetuneConfig(model="ftlens:minilm-l6", data="fortunes-topics", optimizer="sgd").optimizer == "sgd"


@pytest.mark.parametrize("strategy", ["ft", "lp", "lp-ft", "hp-ft", "l2-sp"])
def test_strategies_train_a_head_on_pooled_features(bert, data, tmp_path, strategy):
    kw = {"lr": 3e-3} if strategy != "lp" else {}
    result = _run(bert, data, tmp_path / strategy, strategy=strategy, **kw)
    m = result.metrics
    assert list(m["epoch"]) == list(range(len(m))) and "test_acc" in m
    assert m["test_acc"].iloc[-1] >= 0.8, m  # the classes are separable in the mean-pooled words
    back = load_model(f"{result.run_dir}@last")
    assert type(back).__name__ == "TextWrapper" and back.max_length == 12 and back.module.num_classes == 3
    saved = FinetuneConfig.from_yaml(result.run_dir / "config.yaml")
    assert saved.optimizer == "adamw" and saved.augment is False


def test_a_killed_text_run_resumes_to_the_same_weights(bert, data, tmp_path):
    whole = _run(bert, data, tmp_path / "whole", strategy="ft", epochs=3, lr=1e-3)
    _run(bert, data, tmp_path / "split", strategy="ft", epochs=3, lr=1e-3, stop_after=1)
    resumed = _run(bert, data, tmp_path / "split", strategy="ft", epochs=3, lr=1e-3)
    assert resumed.completed
    a, b = load_model(f"{whole.run_dir}@last"), load_model(f"{resumed.run_dir}@last")
    assert a.fingerprint == b.fingerprint
    pd.testing.assert_frame_equal(whole.metrics.drop(columns=[c for c in whole.metrics if "second" in c]),
                                  resumed.metrics.drop(columns=[c for c in resumed.metrics if "second" in c]))


def test_corrupted_text_accuracy_is_logged(bert, data, tmp_path):
    result = _run(bert, data, tmp_path / "rob", strategy="ft", epochs=1, lr=1e-3,
                  corruptions=["typos", "word_dropout"], severities=[1, 5])
    m = result.metrics
    for col in ("acc_typos_s1", "acc_typos_s5", "acc_word_dropout_s1", "acc_word_dropout_s5", "corrupted_acc_mean"):
        assert col in m and m[col].notna().all()
    assert m["corrupted_acc_mean"].iloc[-1] <= m["test_acc"].iloc[-1] + 0.1


def test_scratch_keeps_the_word_table_and_redraws_the_rest(bert, data, tmp_path):
    result = _run(bert, data, tmp_path / "scratch", strategy="scratch", epochs=1, lr=1e-3)
    pt, start = load_model(bert, max_length=12), load_model(f"{result.run_dir}@0")
    assert torch.equal(start.module.word_embeddings, pt.module.word_embeddings)
    block = "body.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(start.module.state_dict()[block], pt.module.state_dict()[block])


def test_random_text_weights_are_warned_about_and_kinds_must_match(data, tmp_path):
    d = tm.save(tmp_path / "config-only", "bert", weights=False)
    with pytest.warns(RandomWeightsWarning, match="random weights"):
        finetune(model=f"hf:{d}", data=data, out=str(tmp_path / "r"), epochs=1, max_length=8, progress=False)
    with pytest.raises(ConfigError, match="text model"):
        finetune(model=f"hf:{d}", data="digits", out=str(tmp_path / "d"), epochs=1, progress=False)
    with pytest.raises(ConfigError, match="max_length applies to text models"):
        finetune(model="ftlens:vit-micro", data="digits", out=str(tmp_path / "v"), epochs=1, max_length=8,
                 progress=False)


def test_wise_ft_interpolates_text_runs_with_exact_endpoints(bert, data, tmp_path):
    src = _run(bert, data, tmp_path / "ft", strategy="ft", epochs=1, lr=3e-3)
    wise = finetune(strategy="wise-ft", wise_to=f"{src.run_dir}@last", wise_alphas="0,1", data=data,
                    out=str(tmp_path / "wise"), device="cpu", progress=False, max_length=12)
    m, s = wise.metrics, src.metrics
    assert list(m["alpha"]) == [0.0, 1.0]
    assert m["test_acc"].iloc[0] == s["test_acc"].iloc[0] and m["test_acc"].iloc[1] == s["test_acc"].iloc[-1]
    a, b = load_model(f"{wise.run_dir}@last"), load_model(f"{src.run_dir}@last")
    assert a.fingerprint == b.fingerprint and type(a).__name__ == "TextWrapper"
