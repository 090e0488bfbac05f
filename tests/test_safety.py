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

    from ftlens.finetune.run import _save_state

    old = os.umask(0o027)
    try:
        ckpt = save_checkpoint(load_model(MODEL), tmp_path / "m.safetensors")
        _save_state(tmp_path / "s.pt", {"metrics": []})
    finally:
        os.umask(old)
    assert {(p.stat().st_mode & 0o777) for p in (ckpt, tmp_path / "s.pt")} == {0o640}
