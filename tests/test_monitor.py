"""The live forgetting monitor (``ftlens finetune --monitor-forgetting``): its values are a cheap
``compare`` of each epoch with epoch 0, it leaves the training as it was, resumes, logs, and keeps
the checkpoint its signal prefers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import ftlens
from ftlens.cli import app
from ftlens.finetune import ConfigError, finetune
from ftlens.finetune.monitor import forgetting_spread
from ftlens.models import load_model, save_checkpoint

MONITOR = dict(monitor_forgetting=True, monitor_images=8, monitor_steps=5)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    torch.manual_seed(123)
    pretrained = save_checkpoint(load_model("ftlens:vit-micro"), root / "pretrained.safetensors")
    return root, dict(pretrained_from=str(pretrained), data="digits", batch_size=64, warmup_steps=2, train_size=128,
                      test_size=64, epochs=2, lr=0.05, progress=False)


@pytest.fixture(scope="module")
def runs(small):
    root, kw = small
    plain = finetune(out=str(root / "plain"), **kw)
    monitored = finetune(out=str(root / "monitored"), monitor_keep=True, **MONITOR, **kw)
    return plain, monitored


def test_the_monitor_changes_nothing_in_the_training(runs):
    plain, monitored = runs
    cols = [c for c in plain.metrics.columns if c in monitored.metrics.columns]
    pd.testing.assert_frame_equal(plain.metrics[cols], monitored.metrics[cols])
    for epoch in (1, 2):
        a = load_file(str(plain.run_dir / "checkpoints" / f"epoch_{epoch:03d}.safetensors"))
        b = load_file(str(monitored.run_dir / "checkpoints" / f"epoch_{epoch:03d}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_monitor_is_a_cheap_compare_against_epoch_zero(runs):
    _, run = runs
    table = pd.read_csv(run.run_dir / "monitor.csv")
    assert sorted(table["epoch"].unique()) == [0, 1, 2] and table["layer_number"].tolist()[:4] == [1, 2, 3, 4]
    zero = table[table["epoch"] == 0]
    assert (zero[["learning", "forgetting"]] == 0.0).all().all()  # epoch 0 against itself: exactly 0
    # the same numbers as a compare of the two checkpoints on the monitor's images and settings
    from ftlens.data import get_dataset
    from ftlens.invariance.pool import image_pool

    ref = load_model(f"{run.run_dir}@0")
    x = image_pool(get_dataset("digits", split="test", image_size=(16, 16)), 8, 1).images
    cmp = ftlens.compare(ref, load_model(f"{run.run_dir}@2"), x, seeds=1, n_images=None, steps=5, bootstrap=0,
                         cache=None, progress=False)
    two = table[table["epoch"] == 2].set_index("layer")
    np.testing.assert_allclose(two["forgetting"], cmp.per_layer["forgetting"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(two["learning"], cmp.per_layer["learning"], rtol=1e-10, atol=1e-12)
    assert two["forgetting"].abs().max() > 0
    # the signal: std of forgetting over layers 2..L, beside accuracy in metrics.csv
    metrics = pd.read_csv(run.run_dir / "metrics.csv").set_index("epoch")
    for epoch in (1, 2):
        f = table[table["epoch"] == epoch]["forgetting"].to_numpy()
        assert metrics.loc[epoch, "monitor_forgetting_spread"] == pytest.approx(np.std(f[1:]), abs=1e-15)
        assert metrics.loc[epoch, "monitor_forgetting_mean"] == pytest.approx(f.mean(), abs=1e-15)
        assert metrics.loc[epoch, "monitor_seconds"] > 0 and "test_acc" in metrics.columns
    assert math.isnan(forgetting_spread(pd.Series([0.3])))  # one layer: no spread over layers 2..L
    assert forgetting_spread(pd.Series([9.0, 1.0, 3.0])) == pytest.approx(1.0)  # layer 1 is left out


def test_the_preferred_checkpoint_is_kept(runs):
    _, run = runs
    summary = ftlens.io.read_json(run.run_dir / "monitor.json")
    signal = {int(e): v for e, v in summary["signal"].items()}
    best = max((e for e in signal if e >= 1), key=lambda e: signal[e])
    assert summary["preferred_epoch"] == best == run.monitor["preferred_epoch"] and summary["kept_epoch"] == best
    kept = (run.run_dir / "preferred.safetensors").read_bytes()
    assert kept == (run.run_dir / "checkpoints" / f"epoch_{best:03d}.safetensors").read_bytes()
    assert summary["signal_name"] == "forgetting_spread" and summary["images"] == 8 and summary["steps"] == 5


def test_a_resumed_run_monitors_the_same(small, runs):
    root, kw = small
    _, full = runs
    out = str(root / "resumed")
    first = finetune(out=out, stop_after=1, monitor_keep=True, **MONITOR, **kw)
    assert not first.completed
    finetune(out=out, monitor_keep=True, **MONITOR, **kw)
    pd.testing.assert_frame_equal(pd.read_csv(f"{out}/monitor.csv"), pd.read_csv(full.run_dir / "monitor.csv"))
    a, b = pd.read_csv(f"{out}/metrics.csv"), pd.read_csv(full.run_dir / "metrics.csv")
    pd.testing.assert_frame_equal(a.drop(columns="monitor_seconds"), b.drop(columns="monitor_seconds"))


def test_the_monitor_logs_to_the_tracker(small, monkeypatch):
    import ftlens.tracking as tracking

    logged: list[tuple[str, int]] = []

    class Recording(tracking.Tracker):
        active = True

        def log(self, values, step, prefix=""):
            tags = {(prefix + k) if prefix else tracking._tag(k) for k, v in values.items() if k != "epoch"}
            logged.extend((tag, step) for tag in tags)

    monkeypatch.setattr(tracking, "Tracker", Recording)
    root, kw = small
    finetune(out=str(root / "tracked"), **MONITOR, **{**kw, "epochs": 1})
    tags = {tag for tag, _ in logged}
    assert {"monitor/forgetting_spread", "monitor/forgetting_mean", "test/acc"} <= tags
    assert {f"monitor/forgetting/layer_{n}" for n in (1, 2, 3, 4)} <= tags
    assert ("monitor/forgetting_spread", 1) in logged and ("monitor/forgetting_spread", 0) in logged


def test_bad_monitor_options_are_one_clear_error(small, tmp_path):
    _, kw = small
    with pytest.raises(ConfigError, match="monitor_keep.*monitor_forgetting"):
        finetune(out=str(tmp_path / "x"), monitor_keep=True, **kw)
    with pytest.raises(ConfigError, match="monitor_images must be >= 4"):
        finetune(out=str(tmp_path / "y"), monitor_forgetting=True, monitor_images=2, **kw)
    result = CliRunner().invoke(app, ["finetune", "--model", "ftlens:vit-micro", "--data", "digits", "--monitor-keep",
                                      "--out", str(tmp_path / "z")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "--monitor-forgetting" in lines[0], result.output
