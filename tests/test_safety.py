"""Files from other people: nothing in them runs code (no pickle), nothing the user has is deleted.

Every malicious file carries a pickle payload that would create a marker file when unpickled;
the tests assert that the marker never appears.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ftlens.errors import CheckpointError, DatasetError
from ftlens.finetune import finetune
from ftlens.models import load_model, save_checkpoint

MODEL = "ftlens:vit-micro"


class Payload:
    """Unpickling this creates (opens for writing) ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a payload in a received file was executed"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-epoch LP run on a small digits subset (copied by the tests that damage it)."""
    work = tmp_path_factory.mktemp("safety")
    torch.manual_seed(5)
    start = save_checkpoint(load_model(MODEL), work / "pretrained.safetensors")
    opts = dict(pretrained_from=str(start), data="digits", data_dir=str(work / "data"), batch_size=64,
                warmup_steps=2, train_size=128, test_size=64, progress=False, strategy="ft", epochs=2, lr=0.01)
    run = finetune(out=str(work / "run"), stop_after=1, **opts)
    return run.run_dir, opts


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- pickle payloads


def test_malicious_state_file_is_not_executed(tiny_run, tmp_path, marker):
    run_dir, opts = tiny_run
    run = _copy(run_dir, tmp_path / "run")
    (state,) = sorted((run / "state").glob("epoch_*.pt"))
    torch.save({"metrics": [], "epoch": 1, "evil": Payload(marker)}, state)
    with pytest.raises(CheckpointError, match="training state"):
        finetune(out=str(run), **opts)


def test_malicious_pt_checkpoint_is_not_executed(tmp_path, marker):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "evil": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(str(path), arch=MODEL)


def test_malicious_cache_entry_is_not_executed(tmp_path, marker):
    from ftlens.store import Cache, cached_inversion

    torch.manual_seed(0)
    model = load_model(MODEL)
    images = torch.rand(2, 3, 16, 16)
    cache = Cache(tmp_path / "cache")
    layer = model.layers[1]
    first = cached_inversion(model, layer, images, steps=2, cache=cache)
    (entry,) = cache.entries()
    entry.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.warns(UserWarning, match="cache entry"):
        again = cached_inversion(model, layer, images, steps=2, cache=cache)
    assert not again.cached
    assert torch.equal(again.images, first.images)


def _fake_cifar(root: Path, payload=None) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"labels": [int(v) for v in rng.integers(0, 10, 3)],
                 "data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "batch_label": name}
        if payload is not None and name == "test_batch":
            entry["filenames"] = payload
        for protocol in (2,):
            (base / name).write_bytes(pickle.dumps(entry, protocol=protocol))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return base


def test_malicious_cifar_batch_is_not_executed(tmp_path, marker):
    from ftlens.data import get_dataset

    _fake_cifar(tmp_path, payload=Payload(marker))
    with pytest.raises(DatasetError, match="could not be read"):
        get_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    # the same files without the payload read fine, in every pickle protocol numpy arrays use
    import shutil

    shutil.rmtree(tmp_path / "cifar-10-batches-py")
    _fake_cifar(tmp_path)
    ds = get_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert len(ds) == 3 and ds.classes[3] == "c3"


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_reader_reads_every_protocol_and_refuses_objects(tmp_path, protocol, marker):
    from ftlens.data.torchvision_sets import read_cifar_pickle

    data = np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3072)
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"data": data, "labels": [1, 2], "name": b"x"}, protocol=protocol))
    got = read_cifar_pickle(path)
    assert np.array_equal(got["data"], data) and got["labels"] == [1, 2]
    path.write_bytes(pickle.dumps({"data": data, "evil": Payload(marker)}, protocol=protocol))
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        read_cifar_pickle(path)
    path.write_bytes(pickle.dumps({"data": np.array([Payload(marker)], dtype=object)}, protocol=protocol))
    with pytest.raises(pickle.UnpicklingError):
        read_cifar_pickle(path)


# --------------------------------------------------------------------------- nothing deleted


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_folder_without_config_is_refused_and_kept(tiny_run, tmp_path):
    from ftlens.errors import OutputError

    run_dir, opts = tiny_run
    run = _copy(run_dir, tmp_path / "run")
    (run / "config.yaml").unlink()
    before = _snapshot(run)
    with pytest.raises(OutputError, match="no config.yaml") as ei:
        finetune(out=str(run), **opts)
    assert "--overwrite" in str(ei.value) and "checkpoints/" in str(ei.value)
    assert _snapshot(run) == before
    # someone else's folder
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="thesis.tex"):
        finetune(out=str(other), **opts)
    assert (other / "thesis.tex").read_text() == "years of work"


def test_unfinished_run_without_state_is_refused_and_kept(tiny_run, tmp_path):
    from ftlens.errors import OutputError

    run_dir, opts = tiny_run
    run = _copy(run_dir, tmp_path / "run")
    import shutil

    shutil.rmtree(run / "state")
    before = _snapshot(run)
    with pytest.raises(OutputError, match="training state") as ei:
        finetune(out=str(run), **opts)
    assert "--pretrained-from" in str(ei.value) and "--overwrite" in str(ei.value)
    assert _snapshot(run) == before
    # usable for analysis and as a starting point
    assert load_model(f"{run}@last").name
    start = finetune(out=str(tmp_path / "next"), **{**opts, "pretrained_from": f"{run}@1", "epochs": 1})
    assert start.completed
    # --overwrite trains it again
    again = finetune(out=str(run), overwrite=True, **opts)
    assert again.completed and again.last_epoch == 2


def test_finished_run_without_state_is_reused_not_retrained(tiny_run, tmp_path):
    run_dir, opts = tiny_run
    full = finetune(out=str(tmp_path / "full"), **opts)
    import shutil

    shutil.rmtree(full.run_dir / "state")
    before = _snapshot(full.run_dir)
    again = finetune(out=str(full.run_dir), **opts)
    assert _snapshot(full.run_dir) == before
    assert again.completed and again.last_epoch == 2
    assert again.metrics["test_acc"].tolist() == pytest.approx(full.metrics["test_acc"].tolist(), abs=0, rel=1e-12)
    for (k, v), (k2, v2) in zip(again.model.module.state_dict().items(), full.model.module.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_checkpoints_and_states_respect_the_umask(tmp_path):
    import os

    from ftlens.finetune.rundir import save_state as _save_state

    old = os.umask(0o027)
    try:
        ckpt = save_checkpoint(load_model(MODEL), tmp_path / "m.safetensors")
        _save_state(tmp_path / "s.pt", {"metrics": []})
    finally:
        os.umask(old)
    assert {(p.stat().st_mode & 0o777) for p in (ckpt, tmp_path / "s.pt")} == {0o640}


# --------------------------------------------------------------------------- moved folders, random bytes


def test_moved_run_folder_resumes_bit_identical(tmp_path):
    import shutil

    from safetensors.torch import load_file

    from ftlens.models import checkpoint_path

    def opts(root):
        return dict(pretrained_from=str(root / "pre.safetensors"), data="digits", data_dir=str(tmp_path / "data"),
                    batch_size=64, warmup_steps=2, train_size=128, test_size=64, progress=False, strategy="ft",
                    epochs=2, lr=0.01, out=str(root / "run"))

    torch.manual_seed(5)
    first = tmp_path / "first"
    save_checkpoint(load_model(MODEL), first / "pre.safetensors")
    full = finetune(**{**opts(first), "out": str(first / "full")})
    finetune(stop_after=1, **opts(first))
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))
    done = finetune(**opts(moved))  # the recorded paths name the old place; the run resumes
    assert done.completed and done.last_epoch == 2
    for epoch in range(3):
        a = load_file(str(checkpoint_path(moved / "full", epoch)))
        b = load_file(str(checkpoint_path(done.run_dir, epoch)))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert done.metrics["test_acc"].tolist() == full.metrics["test_acc"].tolist()
    # another starting point is still another configuration
    other = moved / "other.safetensors"
    shutil.copy(moved / "pre.safetensors", other)
    from ftlens.errors import ConfigError

    with pytest.raises(ConfigError, match="another configuration"):
        finetune(**{**opts(moved), "pretrained_from": str(other)})


def _random_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    n = [0, 1, 17, 300, 5000][seed % 5]
    data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return data if seed % 2 else b"a: [" + data  # some start like YAML


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_give_clear_errors_or_recomputation(tiny_run, tmp_path, seed):
    import shutil

    from typer.testing import CliRunner

    from ftlens.cli import app
    from ftlens.errors import FtlensError
    from ftlens.report.build import build_report

    run_dir, opts = tiny_run
    junk = _random_bytes(seed)
    runner = CliRunner()

    def one_line_exit_2(args):
        result = runner.invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
        assert lines[0].startswith("error: ")

    # a checkpoint: CheckpointError from the API, one line from the CLI
    run = _copy(run_dir, tmp_path / "ckpt")
    (run / "checkpoints" / "epoch_001.safetensors").write_bytes(junk)
    with pytest.raises(CheckpointError):
        load_model(f"{run}@1")
    with pytest.raises(CheckpointError):
        finetune(out=str(run), **opts)  # resuming reads the damaged checkpoint
    one_line_exit_2(["layers", f"{run}@1"])
    pt = tmp_path / "model.pt"
    pt.write_bytes(junk)
    with pytest.raises(CheckpointError):
        load_model(str(pt), arch=MODEL)
    # a training state
    run = _copy(run_dir, tmp_path / "state")
    next((run / "state").glob("*.pt")).write_bytes(junk)
    with pytest.raises(CheckpointError, match="training state"):
        finetune(out=str(run), **opts)
    # config.yaml of a run: nothing is overwritten, a clear error
    run = _copy(run_dir, tmp_path / "config")
    (run / "config.yaml").write_bytes(junk)
    with pytest.raises(FtlensError, match="config.yaml"):
        finetune(out=str(run), **opts)
    assert (run / "config.yaml").read_bytes() == junk
    # config.yaml and metrics.csv of an experiment folder under `ftlens report`
    exp = tmp_path / "exp"
    shutil.copytree(run_dir, exp / "runs" / "ft")
    (exp / "runs" / "ft" / "metrics.csv").write_bytes(junk)
    page = build_report(exp).read_text()  # the broken part is reported on the page, the rest is built
    assert "Accuracy of every run" not in page or "(failed)" in page
    (exp / "config.yaml").write_bytes(junk)
    one_line_exit_2(["report", str(exp)])
    # metrics.csv of a finished run shared without state/
    run = _copy(run_dir, tmp_path / "shared")
    shutil.rmtree(run / "state")
    (run / "checkpoints" / "epoch_002.safetensors").write_bytes(
        (run / "checkpoints" / "epoch_001.safetensors").read_bytes())
    (run / "metrics.csv").write_bytes(junk)
    with pytest.raises(FtlensError, match="metrics.csv"):
        finetune(out=str(run), **opts)


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_as_cache_entry_are_recomputed(tmp_path, seed):
    from ftlens.inversion import cached_inversion
    from ftlens.store import Cache

    torch.manual_seed(0)
    model = load_model(MODEL)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    cache = Cache(tmp_path)
    first = cached_inversion(model, "blocks.0", images, steps=2, cache=cache)
    cache.path(first.extra["key"]).write_bytes(_random_bytes(seed))
    with pytest.warns(UserWarning, match="cache entry"):
        again = cached_inversion(model, "blocks.0", images, steps=2, cache=cache)
    assert not again.cached and torch.equal(again.images, first.images)
