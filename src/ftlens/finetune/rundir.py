"""A run directory: its files, which epochs are complete, and what may be resumed.

A run directory holds::

    config.yaml                      the resolved configuration
    checkpoints/epoch_000.safetensors the starting point (before any training)
    checkpoints/epoch_001.safetensors ... one per epoch (models.save_checkpoint, atomic)
    state/epoch_NNN.pt               optimiser + scheduler state, metrics so far (latest epoch)
    metrics.csv                      one row per epoch, rewritten atomically every epoch
    energy.json                      hp-ft / lp-ft: train accuracy and loss at the start of FT
    linear_probe.json                lp / lp-ft: the chosen C and the validation scores
    run.json                         versions, device, seconds per epoch (not part of results)
    monitor.csv, monitor.json        --monitor-forgetting: learning / forgetting per epoch and layer,
                                     the signal per epoch and the epoch it prefers
    preferred.safetensors            --monitor-keep: the checkpoint of that epoch

    .ftlens.lock                     held (flock) by the process training the run: a second process
                                     asked to train the same folder waits, then resumes, which
                                     returns the first one's finished run instead of training again

Epoch ``e`` is complete once its state file and its checkpoint both exist (the state is written
first, then the checkpoint, then the previous state is removed; every write is atomic).

Nothing a user has is deleted without ``overwrite``: a folder that is not empty and holds no
``config.yaml``, a run of another configuration, and checkpoints that have no training state
(a run shared without ``state/``) are errors.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import safe_open

from ftlens import io
from ftlens.checks import check_writable_dir
from ftlens.errors import CheckpointError, ConfigError, FtlensError, OutputError
from ftlens.finetune.config import RESUME_FREE_FIELDS, FinetuneConfig
from ftlens.models import checkpoint_path

STATE_DIR = "state"
LOCK_NAME = ".ftlens.lock"


def run_lock(path: str | Path) -> Any:
    """The run folder's lock (:func:`ftlens.io.file_lock` on ``path/.ftlens.lock``): held while a
    process trains the run; another one waits (saying so on stderr) and then finds the run done."""
    import sys

    def say() -> None:
        print(f"another process is training {path}; waiting for it to finish (then its run is reused)",
              file=sys.stderr, flush=True)

    return io.file_lock(Path(path) / LOCK_NAME, on_wait=say)


class RunDir:
    """Files of a run directory (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.csv")
    energy = property(lambda self: self.path / "energy.json")
    probe = property(lambda self: self.path / "linear_probe.json")
    info = property(lambda self: self.path / "run.json")
    monitor_table = property(lambda self: self.path / "monitor.csv")
    monitor_summary = property(lambda self: self.path / "monitor.json")
    preferred = property(lambda self: self.path / "preferred.safetensors")
    checkpoints = property(lambda self: self.path / "checkpoints")
    states = property(lambda self: self.path / STATE_DIR)

    def checkpoint(self, epoch: int) -> Path:
        return checkpoint_path(self.path, epoch)

    def state(self, epoch: int) -> Path:
        return self.states / f"epoch_{epoch:03d}.pt"

    def _epochs(self, folder: Path, suffix: str) -> set[int]:
        out = set()
        for p in folder.glob(f"epoch_*{suffix}"):
            m = re.fullmatch(r"epoch_(\d+)" + re.escape(suffix), p.name)
            if m:
                out.add(int(m.group(1)))
        return out

    def last_complete(self) -> int | None:
        """The last epoch with both its state and its checkpoint, or None."""
        both = self._epochs(self.states, ".pt") & self._epochs(self.checkpoints, ".safetensors")
        return max(both) if both else None

    def checkpoint_epochs(self) -> set[int]:
        return self._epochs(self.checkpoints, ".safetensors")

    def clean_after(self, epoch: int | None) -> None:
        """Remove training states after ``epoch`` (an epoch killed before its checkpoint was
        written) and temporary files. Checkpoints are never removed here."""
        for folder in (self.states, self.checkpoints):
            if not folder.is_dir():
                continue
            for p in folder.glob(".*.tmp"):
                p.unlink(missing_ok=True)
        for e in self._epochs(self.states, ".pt"):
            if epoch is None or e > epoch:
                self.state(e).unlink(missing_ok=True)

    def check_no_stray_checkpoints(self, last: int | None) -> None:
        """OutputError when checkpoints after ``last`` exist (training would overwrite them), except
        the one of epoch ``last + 1``: the epoch a killed process was writing, which is retrained."""
        beyond = sorted(e for e in self.checkpoint_epochs() if last is None or e > last)
        if last is not None and beyond == [last + 1]:
            self.checkpoint(last + 1).unlink(missing_ok=True)
        elif beyond:
            has = f"up to epoch {last}" if last is not None else "for no epoch"
            raise OutputError(
                f"{self.path} holds checkpoints of epochs {beyond[0]}-{beyond[-1]} but a training state ({STATE_DIR}/) "
                f"{has}, so the run cannot continue exactly and training would overwrite them. Nothing was "
                f"changed: analyse them as they are ({self.path}@{beyond[-1]}), start a new run from them "
                f"(--pretrained-from {self.path}@{beyond[-1]} --out NEW_DIR), or pass --overwrite to train again"
            )

    def is_complete_without_state(self, epochs: int) -> bool:
        """True when checkpoints 0..epochs and metrics.csv are there (a finished run shared without state/)."""
        return self.checkpoint_epochs() >= set(range(epochs + 1)) and self.metrics.is_file()

    def wipe(self) -> None:
        for p in (self.config, self.metrics, self.energy, self.probe, self.info, self.monitor_table,
                  self.monitor_summary, self.preferred):
            p.unlink(missing_ok=True)
        for d in (self.checkpoints, self.states):
            if d.is_dir():
                shutil.rmtree(d)

    def prepare(self, cfg: FinetuneConfig, *, resume: bool, overwrite: bool) -> None:
        """Create the directory, or check that the run in it is this run (same config)."""
        if overwrite:
            self.wipe()
        if self.config.exists():
            try:
                old = FinetuneConfig.from_yaml(self.config).to_dict()
            except FtlensError as exc:
                raise OutputError(
                    f"{self.path} holds a run whose config.yaml cannot be read ({exc}). Nothing was changed: "
                    "choose another --out, or pass --overwrite (overwrite=True) to replace that run"
                ) from None
            new = cfg.to_dict()
            diff = {k: (old.get(k), new.get(k)) for k in new if k not in RESUME_FREE_FIELDS and old.get(k) != new.get(k)
                    and not (k in PATH_FIELDS and same_place(old.get(k), new.get(k), old.get("out"), new.get("out")))}
            if diff:
                shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
                raise ConfigError(
                    f"{self.path} holds a run with another configuration ({shown}). Choose a new --out "
                    "directory, or pass --overwrite (overwrite=True) to replace that run"
                )
            if not resume and self.last_complete() is not None:
                raise ConfigError(
                    f"{self.path} already holds this run; pass resume=True (--resume) to continue it or "
                    "overwrite=True (--overwrite) to start again"
                )
        elif self.path.exists():
            check_output_dir(self.path)
            if any(p.name != LOCK_NAME for p in self.path.iterdir()):
                raise OutputError(
                    f"{self.path} is not empty ({describe_folder(self.path)}) and has no config.yaml, so it is "
                    "not a run ftlens can continue. Nothing was changed: choose another --out, or pass "
                    "--overwrite (overwrite=True) to replace the run files in it"
                )
        check_output_dir(self.path)
        self.path.mkdir(parents=True, exist_ok=True)


#: Options that name files or folders: a run folder moved or copied together with them still resumes.
PATH_FIELDS = frozenset({"model", "pretrained_from", "wise_from", "wise_to", "corruption_dir", "data"})


def same_place(a: Any, b: Any, old_out: Any, new_out: Any) -> bool:
    """Whether path specs ``a`` (recorded when the run was in ``old_out``) and ``b`` (given now for
    ``new_out``) name the same thing: the same file, or the same place relative to the run folder
    (``RUN@EPOCH`` suffixes and ``folder:`` prefixes must agree)."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    prefix = "folder:" if a.startswith("folder:") else ""
    if not b.startswith(prefix):
        return False
    a, b = a[len(prefix):], b[len(prefix):]
    (pa, _, ta), (pb, _, tb) = a.rpartition("@") if "@" in a else (a, "", ""), b.rpartition("@") if "@" in b else (b, "", "")
    if ta != tb or not pa or not pb:
        return False
    if os.path.abspath(pa) == os.path.abspath(pb):
        return True
    if not old_out or not new_out:
        return False
    return os.path.relpath(os.path.abspath(pa), os.path.abspath(old_out)) == \
        os.path.relpath(os.path.abspath(pb), os.path.abspath(new_out))


def describe_folder(path: Path, limit: int = 5) -> str:
    """``"it holds a.txt, b/, ... (12 entries)"`` for an error message."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(path).iterdir() if p.name != LOCK_NAME)
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")
    return f"it holds {shown}"


def check_output_dir(path: Path) -> None:
    """OutputError unless ``path`` is (or can be created as) a writable folder."""
    check_writable_dir(path, "--out")


def write_metrics(path: Path, rows: list[dict[str, Any]], energy: dict[str, Any] | None) -> pd.DataFrame:
    df = metrics_frame(rows, energy)
    with io.atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return df


def metrics_frame(rows: list[dict[str, Any]], energy: dict[str, Any] | None) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if energy is not None and len(df):
        df["energy_train_acc"] = energy.get("train_acc", float("nan"))
        df["energy_train_loss"] = energy.get("train_loss", float("nan"))
    return df


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors checkpoint; CheckpointError if unreadable."""
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); the file is corrupt or truncated. "
            "Delete it (a run resumes from its last complete epoch) or point to another checkpoint"
        ) from exc


def save_state(path: Path, state: dict[str, Any]) -> None:
    with io.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict[str, Any]:
    """A training state, read with torch's restricted unpickler (``weights_only=True``) only: a
    state file from someone else cannot run code (every state ftlens writes loads this way)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read the training state {path} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            f"it is damaged or was not written by ftlens. {STATE_ADVICE}"
        ) from exc
    if not isinstance(state, dict) or not isinstance(state.get("metrics"), list):
        raise CheckpointError(f"{path} is not an ftlens training state. {STATE_ADVICE}")
    return state



STATE_ADVICE = ("The checkpoints are untouched and usable for analysis (RUN@EPOCH) or as a starting point "
                "(--pretrained-from RUN@EPOCH); pass --overwrite (overwrite=True) to train the run again")
