"""The language-transformer demo (configs/demo-text.yaml, `ftlens demo text`), quick variant, end
to end: the real MiniLM weights finetuned on the real fortunes topics by FT, LP-FT and from
scratch, compared layer by layer in the word-vector space, findings decided, report written."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ftlens.data.fortunes import DEBIAN_DIR
from ftlens.experiment import Experiment, builtin_config, quick
from ftlens.models import load_model

pytestmark = pytest.mark.slow
pytest.importorskip("all_minilm_l6_v2", reason="needs the 'real' extra")
if not DEBIAN_DIR.is_dir():
    pytest.skip("needs Debian's fortunes package (apt-get install fortunes)", allow_module_level=True)

LAYERS = ["embeddings", "body.encoder.layer.1", "body.encoder.layer.3", "body.encoder.layer.5"]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-text")
    config = quick(builtin_config("demo-text"))
    assert config.model == "ftlens:minilm-l6"  # the real weights stay in the quick variant
    report = Experiment(config, out, cache=None).run()
    assert report.exists()
    return out


def _metrics(run_dir) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv")


def test_runs_train_on_the_real_topics(text_dir):
    runs = text_dir / "runs"
    ft = _metrics(runs / "ft")
    # four topics: the largest class is a third; 256 training texts for 2 epochs (quick) already beat it
    assert ft["test_acc"].iloc[-1] > 0.4 and ft["test_acc"].iloc[-1] > ft["test_acc"].iloc[0]
    assert {"acc_typos_s1", "acc_word_dropout_s5", "corrupted_acc_mean"} <= set(ft.columns)
    pt = load_model("ftlens:minilm-l6", max_length=24)
    scratch0 = load_model(f"{runs / 'scratch'}@0")
    assert torch.equal(scratch0.module.word_embeddings, pt.module.word_embeddings)
    assert scratch0.max_length == 24


def test_every_run_is_compared_in_the_word_vector_space(text_dir):
    for name in ("ft", "lp-ft", "scratch"):
        d = text_dir / "compare" / name
        per_layer = pd.read_csv(d / "per_layer.csv", index_col=0)
        assert list(per_layer.index) == LAYERS and list(per_layer["layer_number"]) == [0, 2, 4, 6]
        assert np.isfinite(per_layer[["learning", "forgetting", "cka_divergence"]].to_numpy()).all()
        config = json.loads((d / "comparison.json").read_text())
        assert config["config"]["inputs"]["texts_embedded_by"] == "minilm-l6" if "config" in config else True
    scratch = pd.read_csv(text_dir / "compare" / "scratch" / "per_layer.csv", index_col=0)
    ft = pd.read_csv(text_dir / "compare" / "ft" / "per_layer.csv", index_col=0)
    # a transformer drawn afresh shares nothing with MiniLM past the word vectors; one short FT does
    assert (scratch["cka_divergence"].iloc[1:] > ft["cka_divergence"].iloc[1:]).all()


def test_the_findings_are_decided_and_reported(text_dir):
    findings = json.loads((text_dir / "findings.json").read_text())
    ids = {f["id"]: f for f in findings}
    for fid in ("early-layers-reused", "cka-misses-forgetting", "compression-ft"):
        assert ids[fid]["verdict"] in ("held", "did not hold", "inconclusive")
        assert ids[fid]["interval"] is not None or ids[fid]["reason"]
    html = (text_dir / "report.html").read_text()
    assert "minilm" in html.lower() and "fortunes" in html.lower()
