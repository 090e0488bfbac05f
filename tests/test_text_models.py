"""Language transformers as a model family (hf:DIR of BERT, RoBERTa, DistilBERT, GPT-2): layers,
numbering, the two input forms, the attention mask, checkpoints, CKA on texts, bad inputs."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("transformers", reason="needs the 'hf' extra")

import _text_models as tm  # noqa: E402

from ftlens import CKA  # noqa: E402
from ftlens.errors import ConfigError, LayerError, RandomWeightsWarning, TextError  # noqa: E402
from ftlens.layers import layer_number, layer_numbers  # noqa: E402
from ftlens.models import load_model, rebuild, save_checkpoint  # noqa: E402

KINDS = ("bert", "roberta", "distilbert", "gpt2")
TEXTS = ["the cat sleeps on the sofa .", "a man plays guitar", "stock market fell sharply today !",
         "rain", "the dog and the cat sleeps in the bed", "people love a song and a poem"]
BLOCKS = {"bert": "body.encoder.layer", "roberta": "body.encoder.layer", "distilbert": "body.transformer.layer",
          "gpt2": "body.h"}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-models")
    return {kind: tm.save(root / kind, kind, seed=i) for i, kind in enumerate(KINDS)}


def _load(dirs, kind, **kwargs):
    kwargs.setdefault("max_length", 16)
    return load_model(f"hf:{dirs[kind]}", **kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_layers_are_the_embeddings_and_the_blocks(dirs, kind):
    m = _load(dirs, kind)
    assert type(m).__name__ == "TextWrapper" and m.family == "text" and not m.random_init
    blocks = [f"{BLOCKS[kind]}.{i}" for i in range(tm.TINY["layers"])]
    assert m.layers == ["embeddings", *blocks]
    assert layer_numbers(m.layers + ["pre_logits"], m) == [0, 1, 2, 3, 4]
    assert [layer_number(n) for n in m.layers] == [0, 1, 2, 3]  # read back without the model
    assert m.input_size == (16, tm.TINY["hidden"] + 1)
    shapes = m.layer_shapes(m.layers + ["pre_logits"])
    assert shapes["embeddings"] == (16, tm.TINY["hidden"]) and shapes["pre_logits"] == (tm.TINY["hidden"],)


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_and_word_vectors_give_the_same_outputs(dirs, kind):
    m = _load(dirs, kind)
    tokens = m.tokenize(TEXTS)
    assert tokens.dtype == torch.long and tokens.shape == (len(TEXTS), 16, 2)
    vectors = m.embed(tokens)
    assert vectors.shape == (len(TEXTS), 16, tm.TINY["hidden"] + 1)
    assert torch.equal(vectors[..., :-1], m.module.word_embeddings.detach()[tokens[..., 0]])
    layers = m.layers + ["pre_logits"]
    a, b = m.representations(tokens, layers), m.representations(vectors, layers)
    for layer in layers:
        torch.testing.assert_close(a[layer], b[layer], rtol=0, atol=1e-6)
    c = m.representations(TEXTS, layers)  # strings: the same tokens
    assert all(torch.equal(a[k], c[k]) for k in layers)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["all", "mean", "cls"])
def test_the_mask_is_respected_like_unpadded_forwards(dirs, kind, mode):
    """Each layer of each text, reduced by the token mode, against a forward of that text alone
    (no padding, no mask) read from the model's own ``hidden_states``."""
    if kind == "gpt2" and mode == "cls":
        with pytest.raises(LayerError, match="CLS"):
            _load(dirs, kind, tokens=mode).representations(TEXTS[:2])
        return
    m = _load(dirs, kind, tokens=mode)
    reps = m.representations(TEXTS, m.layers)
    tokens = m.tokenize(TEXTS)
    d = tm.TINY["hidden"]
    for i in range(len(TEXTS)):
        n_real = int(tokens[i, :, 1].sum())
        ids = tokens[i, :n_real, 0][None]
        last: list[torch.Tensor] = []  # GPT-2's last hidden state is after its final norm: read the block

        def keep(_mod, _inp, out, last=last):
            last.append(out[0] if isinstance(out, tuple) else out)

        hook = m.module.get_submodule(m.layers[-1]).register_forward_hook(keep)
        with torch.no_grad():
            hidden = m.module.body(input_ids=ids, output_hidden_states=True).hidden_states
        hook.remove()
        hidden = (*hidden[:len(m.layers) - 1], last[0])
        for k, layer in enumerate(m.layers):
            h = hidden[k][0]  # (n_real, d): hidden state k is the output of layer k (0: the embeddings)
            if mode == "all":
                want = torch.zeros(16, d)
                want[:n_real] = h
                want = want.flatten()
            elif mode == "mean":
                want = h.mean(0)
            else:
                want = h[0]
            torch.testing.assert_close(reps[layer][i], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_the_fixed_length_does_not_change_pooled_features(dirs, kind):
    short, long = _load(dirs, kind, max_length=16, tokens="mean"), _load(dirs, kind, max_length=40, tokens="mean")
    a, b = short.representations(TEXTS), long.representations(TEXTS)
    for layer in short.layers:
        torch.testing.assert_close(a[layer], b[layer], rtol=1e-4, atol=1e-5)
    pa, pb = short.representations(TEXTS, "pre_logits"), long.representations(TEXTS, "pre_logits")
    torch.testing.assert_close(pa["pre_logits"], pb["pre_logits"], rtol=1e-4, atol=1e-5)


def test_a_tokenised_batch_reads_like_the_strings(dirs):
    m = _load(dirs, "bert")
    batch = m.tokenizer(TEXTS, padding=True, return_tensors="pt")  # padded to the longest, not to 16
    a, b = m.representations(batch), m.representations(TEXTS)
    assert all(torch.equal(a[k], b[k]) for k in m.layers)
    lists = {"input_ids": [m.tokenizer("a man plays guitar")["input_ids"]]}  # no mask: every token is real
    assert torch.equal(m.representations(lists)["embeddings"], m.representations(["a man plays guitar"])["embeddings"])


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_checkpoints_rebuild_the_model_and_its_tokenizer(dirs, kind, tmp_path):
    m = _load(dirs, kind, pooling="mean")
    path = save_checkpoint(m, tmp_path / "m.safetensors")
    back = load_model(path)
    assert type(back).__name__ == "TextWrapper" and back.max_length == 16 and back.module.pool.mode == "mean"
    assert back.fingerprint == m.fingerprint
    a, b = m.representations(TEXTS, m.layers + ["pre_logits"]), back.representations(TEXTS, m.layers + ["pre_logits"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(123)  # not the seed the saved weights were drawn from
    fresh = rebuild(m)  # scratch: the architecture with new random weights
    assert fresh.random_init and fresh.layers == m.layers and fresh.fingerprint != m.fingerprint


def test_a_config_without_weights_is_random_and_warned_about(dirs, tmp_path):
    from ftlens.finetune.build import warn_if_random
    from ftlens.finetune.config import FinetuneConfig

    d = tm.save(tmp_path / "bert-config", "bert", weights=False)
    m = load_model(f"hf:{d}", max_length=16)
    assert m.random_init
    assert not _load(dirs, "bert").random_init
    cfg = FinetuneConfig(model=f"hf:{d}", data="digits", strategy="ft", out=str(tmp_path / "run"))
    with pytest.warns(RandomWeightsWarning, match="random weights"):
        warn_if_random(cfg, m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_random(cfg, _load(dirs, "bert"))


def test_a_decoder_has_no_cls_pooling(dirs):
    with pytest.raises(ConfigError, match="CLS"):
        _load(dirs, "gpt2", pooling="cls")


def test_bad_text_inputs_are_one_clear_error(dirs):
    m = _load(dirs, "bert")
    tokens = m.tokenize(TEXTS[:2])
    bad = {
        "shape": torch.zeros(2, 15, 2, dtype=torch.long),
        "float tokens": tokens.float(),
        "vocabulary": tokens.clone().index_put_((torch.tensor([0]), torch.tensor([1]), torch.tensor([0])),
                                               torch.tensor(10_000)),
        "first token": tokens.clone().index_put_((torch.tensor([1]), torch.tensor([0]), torch.tensor([1])),
                                                torch.tensor(0)),
        "NaN": m.embed(tokens).index_put_((torch.tensor([0]), torch.tensor([0]), torch.tensor([0])),
                                          torch.tensor(float("nan"))),
        "mask": m.embed(tokens).index_put_((torch.tensor([0]), torch.tensor([3]), torch.tensor([-1])),
                                           torch.tensor(0.5)),
        "image": torch.rand(2, 3, 16, 16),
        "numbers": [1, 2, 3],
    }
    for what, x in bad.items():
        with pytest.raises(TextError) as info:
            m.representations(x)
        assert "\n" not in str(info.value), what


def test_cka_on_texts_across_tokenizers_and_families(dirs):
    bert, roberta = _load(dirs, "bert", tokens="mean"), _load(dirs, "roberta", tokens="mean", max_length=20)
    self_cka = CKA(bert, bert.copy()).compare(TEXTS).matrix.to_numpy()
    assert self_cka.diagonal() == pytest.approx(1.0, abs=1e-9)
    cross = CKA(bert, roberta).compare(TEXTS)
    assert cross.matrix.shape == (4, 4) and cross.config["images"] == len(TEXTS)
    assert (cross.matrix.to_numpy() < 1 - 1e-6).all()  # different random models
