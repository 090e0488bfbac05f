"""Experiment configs (the demo and the paper's) and the findings rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ftlens import findings as findings_mod
from ftlens.experiment import Experiment, ExperimentConfig, builtin_config, quick
from ftlens.finetune.config import FinetuneConfig

PAPER = sorted((Path(__file__).parents[1] / "configs" / "paper").glob("*.yaml"))


def test_paper_configs_exist_for_every_experiment():
    names = {p.stem for p in PAPER}
    assert {"in1k_cifar10", "in1k_cifar100", "in1k_pets", "in1k_eurosat", "cifar100_cifar10", "cifar10_cifar100",
            "in1k_cifar10_optimizers"} <= names


@pytest.mark.parametrize("path", PAPER + ["demo", "demo-real"], ids=lambda p: getattr(p, "stem", p))
def test_config_parses_and_every_run_is_a_valid_finetune_config(path, tmp_path):
    config = builtin_config(path) if isinstance(path, str) else ExperimentConfig.from_yaml(path)
    exp = Experiment(config, tmp_path)
    for run in config.runs:
        kwargs = exp.run_config(run)
        cfg = FinetuneConfig.coerce(model=config.model, data=config.data, out=str(tmp_path / run["name"]), **kwargs)
        assert cfg.strategy == run.get("strategy", "ft")
    if config.pretrain:
        FinetuneConfig.coerce(model=config.model, out=str(tmp_path / "p"), **config.pretrain)
    names = {r["name"] for r in config.runs}
    a = config.analysis
    assert set(a.dynamics) <= names and set(a.distortion) <= names and set(a.compare or []) <= names


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="unknown experiment config keys"):
        ExperimentConfig.from_dict({"name": "x", "model": "m", "data": "d", "runs": [], "epochz": 3})
    with pytest.raises(ValueError, match="unique name"):
        ExperimentConfig.from_dict({"name": "x", "model": "m", "data": "d", "runs": [{"name": "a"}, {"name": "a"}]})


def test_quick_variant_is_small():
    q = quick(builtin_config("demo"))
    assert q.model == "ftlens:vit-micro" and q.analysis.steps <= 10 and q.defaults["epochs"] == 2
    real = quick(builtin_config("demo-real"))  # real weights stay: they are the point of that part
    assert real.model == "ftlens:efficientnet-lite0-in1k" and real.image_size == 32 and real.analysis.steps <= 10


def test_findings_are_computed_from_the_numbers(monkeypatch, tmp_path, synthetic_comparison):
    lower = [[0, -1, -1, -1], [1, 0, -1, -1], [1, 1, 0, -1], [1, 1, 1, 0]]
    runs = {  # 3 seeds each, small seed-to-seed noise: enough evidence for a verdict
        "ft": synthetic_comparison([0.01, 0.02, 0.2, 0.3], [0.05, 0.06, 0.3, 0.4], [0.001, 0.002, 0.1, 0.2], lower),
        "scratch": synthetic_comparison([0.3, 0.3, 0.3, 0.3], [0.4, 0.4, 0.4, 0.4], [0.5] * 4, -np.asarray(lower)),
        "reconstruction": synthetic_comparison([0.0] * 4, [0.1] * 4, [0.1] * 4, -np.asarray(lower)),
    }
    monkeypatch.setattr(findings_mod, "_load", lambda out, name: runs.get(name))
    got = {f["id"]: f for f in findings_mod.compute_findings(tmp_path)}
    assert got["early-layers-reused"]["held"] is True
    assert got["cka-misses-forgetting"]["held"] is True
    assert got["compression-ft"]["held"] is True
    assert got["compression-reconstruction"]["held"] is False  # its flow is mirrored: expansion
    assert got["reconstruction-learns-more"]["held"] is False  # 0.0 < mean(ft) = 0.1325
    assert got["reconstruction-learns-more"]["numbers"]["learning_classification"] == pytest.approx(0.1325)
    json.dumps(list(got.values()))  # serialisable as written to findings.json


def test_findings_without_runs_are_not_testable(tmp_path):
    got = {f["id"]: f for f in findings_mod.compute_findings(tmp_path)}
    assert got["early-layers-reused"]["held"] is None


def test_ood_rows_are_corrupted_copies_of_the_id_rows(tmp_path):
    """Feature distortion compares ID and OOD pairwise: OOD row i is ID image i under corruption
    i mod k, each of the k corruptions on an equal share of the images."""
    import torch

    from ftlens.data.base import float_to_uint8, uint8_to_float
    from ftlens.data.corruptions.generate import corrupt

    cfg = builtin_config("demo")
    exp = Experiment(cfg, tmp_path)
    exp.load_pretrained = lambda: type("Stub", (), {"input_size": (3, 16, 16)})()  # no pretraining needed
    splits, sources = exp._distortion_splits(None)
    clean, ood = splits["ID"], splits["OOD"]
    assert len(clean) == len(ood) == cfg.analysis.distortion_images
    assert (sources["ID"] == np.arange(len(clean))).all() and (sources["OOD"] == sources["ID"]).all()
    names, severity = cfg.defaults["corruptions"], max(cfg.defaults["severities"])
    raw = float_to_uint8(clean)
    for i in (0, 1, 2, 3, 4, len(clean) - 1):
        expected = uint8_to_float(corrupt(raw, names[i % len(names)], severity, seed=0))[i]
        assert torch.equal(ood[i], expected)
    assert not torch.equal(ood[0], clean[0])
