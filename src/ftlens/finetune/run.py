"""One finetuning run end to end: run directory, starting point, epochs, resumption.

A run directory holds::

    config.yaml                      the resolved configuration
    checkpoints/epoch_000.safetensors the starting point (before any training)
    checkpoints/epoch_001.safetensors ... one per epoch (models.save_checkpoint, atomic)
    state/epoch_NNN.pt               optimiser + scheduler state, metrics so far (latest epoch)
    metrics.csv                      one row per epoch, rewritten atomically every epoch
    energy.json                      hp-ft / lp-ft: train accuracy and loss at the start of FT
    linear_probe.json                lp / lp-ft: the chosen C and the validation scores
    run.json                         versions, device, seconds per epoch (not part of results)

Epoch ``e`` is complete once its state file and its checkpoint both exist (the state is written
first, then the checkpoint, then the previous state is removed; every write is atomic). A run
that was killed resumes from its last complete epoch and ends bit-identical (CPU) to a run that
was never interrupted, because each epoch's randomness is seeded by ``(seed, epoch)``.

Nothing a user has is deleted without ``overwrite``: a folder that is not empty and holds no
``config.yaml``, a run of another configuration, and checkpoints that have no training state
(a run shared without ``state/``) are errors. A complete run without ``state/`` is returned as it
is (usable for analysis and as a starting point), never retrained.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ftlens import io
from ftlens.errors import CheckpointError, FtlensError, OutputError, RandomWeightsWarning
from ftlens.finetune.config import (
    PAPER_WARMUP_STEPS,
    RESUME_FREE_FIELDS,
    STRATEGY_MODULES,
    ConfigError,
    FinetuneConfig,
    default_lr,
)
from ftlens.finetune.linear_probe import LinearProbe, fit_linear_probe
from ftlens.finetune.loop import (
    DataSource,
    EpochSettings,
    Runtime,
    augment_batch,
    epoch_seed,
    evaluate,
    make_optimizer,
    make_scheduler,
    train_epoch,
)
from ftlens.finetune.strategies import (
    HEAD_ONLY_PHASES,
    ft_start_epoch,
    initial_phase,
    interpolate_state_dicts,
    l2sp_penalty,
    l2sp_reference,
    plan_phases,
    set_train_mode,
    set_trainable,
    trainable_names,
)
from ftlens.finetune.tasks import TaskModel, make_decoder, reset_classifier
from ftlens.models import (
    PRE_LOGITS,
    ModelWrapper,
    checkpoint_path,
    load_model,
    rebuild,
    resolve_run_checkpoint,
    save_checkpoint,
    takes_pretrained,
)

STATE_DIR = "state"
_SEED_HEAD, _SEED_TRAIN_SUBSET, _SEED_TEST_SUBSET, _SEED_CORRUPT = 7, 11, 12, 13


@dataclass
class RunResult:
    """What :func:`finetune` returns.

    Attributes:
        run_dir: the run directory (its epochs are specs: ``f"{run_dir}@last"``).
        metrics: one row per epoch (the content of ``metrics.csv``).
        model: the final model (loaded from the last checkpoint; decoder weights of a
            reconstruction run in ``model.extra_state``).
        config: the resolved configuration.
        energy: ``{"train_acc", "train_loss", "epoch"}`` at the start of FT (hp-ft, lp-ft).
        linear_probe: the probe's summary (lp, lp-ft).
        completed: False when the call stopped early (``stop_after``).
    """

    run_dir: Path
    metrics: pd.DataFrame
    model: ModelWrapper
    config: FinetuneConfig
    energy: dict[str, Any] | None = None
    linear_probe: dict[str, Any] | None = None
    completed: bool = True

    @property
    def last_epoch(self) -> int:
        return int(self.metrics["epoch"].iloc[-1])


def finetune(
    config: FinetuneConfig | dict | str | Path | None = None,
    /,
    *,
    resume: bool = True,
    overwrite: bool = False,
    stop_after: int | None = None,
    progress: bool | None = None,
    **options: Any,
) -> RunResult:
    """Finetune a model as configured and return the run (see :class:`FinetuneConfig`).

    Args:
        config: a :class:`FinetuneConfig`, a dict of its fields, a YAML file, or None.
        **options: config fields that override ``config`` (``model=``, ``data=``, ``strategy=``...).
        resume: continue an existing run in ``out`` from its last complete epoch (the
            configuration must be the same). False: an existing run is an error.
        overwrite: delete an existing run in ``out`` first.
        stop_after: return after this epoch as if the process had been stopped (the run stays
            resumable; used to split long runs and to test resumption).
        progress: show progress bars (default: when stderr is a terminal, see ftlens.progress).

    Example::

        finetune(model="ftlens:vit-micro", data="digits", strategy="lp-ft", epochs=5, lr=1e-4,
                 out="runs/digits-lpft")
    """
    cfg = FinetuneConfig.coerce(config, **options)
    runtime = Runtime(cfg.device)
    cfg = cfg.replace(out=str(cfg.out or default_out(cfg)))
    check_output_dir(Path(cfg.out))  # before loading anything
    devices = [runtime.device.index or 0] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if cfg.strategy == "wise-ft":
            return _run_wise(cfg, runtime, resume=resume, overwrite=overwrite, progress=progress)
        return _Run(cfg, runtime, progress=progress).run(resume=resume, overwrite=overwrite, stop_after=stop_after)


#: Datasets whose classes change when mirrored: no random horizontal flip by default.
NO_FLIP_DATASETS = ("digits", "sklearn-digits", "mnist-5k", "mnist5k", "mnist_5k")


def default_flip(data: str) -> bool:
    return data.strip().lower() not in NO_FLIP_DATASETS


def default_out(cfg: FinetuneConfig) -> Path:
    data = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(cfg.data).name or cfg.data).strip("-")
    return Path("runs") / f"{data}-{cfg.task}-{cfg.strategy}-s{cfg.seed}"


# --------------------------------------------------------------------------- run directory


class RunDir:
    """Files of a run directory (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.csv")
    energy = property(lambda self: self.path / "energy.json")
    probe = property(lambda self: self.path / "linear_probe.json")
    info = property(lambda self: self.path / "run.json")
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
        for p in (self.config, self.metrics, self.energy, self.probe, self.info):
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
            if any(self.path.iterdir()):
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
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(path).iterdir())
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")
    return f"it holds {shown}"


def check_output_dir(path: Path) -> None:
    """OutputError unless ``path`` is (or can be created as) a writable folder."""
    from ftlens.checks import check_writable_dir

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
    from safetensors import safe_open

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


def _save_state(path: Path, state: dict[str, Any]) -> None:
    with io.atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: Path) -> dict[str, Any]:
    """A training state, read with torch's restricted unpickler (``weights_only=True``) only: a
    state file from someone else cannot run code (every state ftlens writes loads this way)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read the training state {path} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            f"it is damaged or was not written by ftlens. {_STATE_ADVICE}"
        ) from exc
    if not isinstance(state, dict) or not isinstance(state.get("metrics"), list):
        raise CheckpointError(f"{path} is not an ftlens training state. {_STATE_ADVICE}")
    return state


_STATE_ADVICE = ("The checkpoints are untouched and usable for analysis (RUN@EPOCH) or as a starting point "
                 "(--pretrained-from RUN@EPOCH); pass --overwrite (overwrite=True) to train the run again")


# --------------------------------------------------------------------------- model and data


def start_model(cfg: FinetuneConfig) -> ModelWrapper:
    """The model finetuning starts from (before the task head is set).

    ``pretrained_from`` (or a checkpoint/run ``model``) gives weights and architecture; an
    ``ftlens:`` preset starts from random weights drawn after ``torch.manual_seed(cfg.seed)``; ``scratch``
    keeps only the architecture and draws fresh weights after ``torch.manual_seed(cfg.seed)``
    (the same weights as ``torch.manual_seed(seed); load_model(spec)`` for a preset).
    """
    spec = cfg.pretrained_from or cfg.model
    torch.manual_seed(cfg.seed)  # a randomly initialised start (a preset) is the same for a seed
    timm_pretrained = cfg.pretrained and takes_pretrained(str(spec)) and cfg.strategy != "scratch"
    size = {"image_size": cfg.image_size} if cfg.image_size else {}
    wrapper = load_model(spec, pretrained=timm_pretrained, **size) if timm_pretrained else load_model(spec, **size)
    if cfg.pretrained_from and cfg.model and cfg.model != cfg.pretrained_from:
        model_arch = cfg.model if cfg.model.startswith(("timm:", "ftlens:")) else load_model(cfg.model).source.spec
        if model_arch != wrapper.source.spec:
            raise ConfigError(
                f"model {cfg.model!r} and pretrained_from {cfg.pretrained_from!r} (architecture "
                f"{wrapper.source.spec}) disagree; give only --pretrained-from"
            )
    if cfg.strategy == "scratch":
        torch.manual_seed(cfg.seed)
        wrapper = rebuild(wrapper)
    return wrapper


def warn_if_random(cfg: FinetuneConfig, wrapper: ModelWrapper) -> None:
    """A :class:`RandomWeightsWarning` when finetuning (not ``scratch``) starts from random weights."""
    if wrapper.random_init and cfg.strategy not in ("scratch", "wise-ft"):
        warnings.warn(
            f"{cfg.pretrained_from or cfg.model} starts from random weights (no pretrained weights were loaded), "
            "so this is training from scratch, not finetuning; pass a pretrained model (timm:NAME with "
            "--pretrained, a checkpoint, or --pretrained-from RUN@last)",
            RandomWeightsWarning,
            stacklevel=3,
        )


def _subset(n: int, size: int | None, seed: int) -> torch.Tensor | None:
    if size is None or size >= n:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:size].sort().values


def load_sources(cfg: FinetuneConfig, wrapper: ModelWrapper) -> tuple[DataSource, DataSource, int]:
    """Train and test sources at the model's input size (seeded subsets when asked)."""
    from ftlens.data import get_dataset

    size = tuple(wrapper.input_size[1:])
    common = dict(image_size=size, data_dir=cfg.data_dir, download=cfg.download, seed=cfg.seed)
    train = get_dataset(cfg.data, split="train", **common)
    test = get_dataset(cfg.data, split="test", **common)
    workers = cfg.num_workers if cfg.num_workers is not None else min(8, os.cpu_count() or 1)
    train_src = DataSource(train, _subset(len(train), cfg.train_size, epoch_seed(cfg.seed, 0, _SEED_TRAIN_SUBSET)),
                           num_workers=workers)
    test_src = DataSource(test, _subset(len(test), cfg.test_size, epoch_seed(cfg.seed, 0, _SEED_TEST_SUBSET)),
                          num_workers=workers)
    if len(train_src) == 0 or len(test_src) == 0:
        raise FtlensError(f"dataset {cfg.data!r} has an empty train or test split")
    return train_src, test_src, int(train.num_classes)


def corrupted_sources(cfg: FinetuneConfig, test: DataSource, image_size: tuple[int, int]) -> dict[str, DataSource]:
    """``{"<corruption>_s<severity>": source}`` for the configured corruptions (see ftlens.data.corruptions)."""
    if not cfg.corruptions:
        return {}
    from ftlens.finetune.robustness import corrupted_test_sets

    return corrupted_test_sets(cfg, test, image_size)


def robustness_metrics(model: TaskModel, corrupted: dict[str, DataSource], task: str, runtime: Runtime,
                       batch_size: int) -> dict[str, float]:
    """Per corruption and severity: ``acc_<c>_s<s>`` and ``corrupted_acc_mean`` (classification), or
    ``l1_<c>_s<s>`` and ``corrupted_l1_mean`` (reconstruction: L1 between the corrupted input and
    its reconstruction, i.e. how well the model reconstructs out-of-distribution images)."""
    if not corrupted:
        return {}
    key = "acc" if task == "classification" else "l1"
    out = {f"{key}_{name}": evaluate(model, src, task, runtime, batch_size)[key] for name, src in corrupted.items()}
    out[f"corrupted_{key}_mean"] = sum(out.values()) / len(out)
    return out


def build_task_model(cfg: FinetuneConfig, wrapper: ModelWrapper, num_classes: int,
                     classes: list[str] | None = None) -> TaskModel:
    """Attach a fresh task head (seeded; ``head_init`` zero-shot: from the class prompts) and
    bundle normalisation, backbone and head. A strategy with a module of its own builds its own."""
    torch.manual_seed(epoch_seed(cfg.seed, 0, _SEED_HEAD))
    if cfg.strategy in STRATEGY_MODULES:
        import importlib

        return importlib.import_module(STRATEGY_MODULES[cfg.strategy]).build_task_model(cfg, wrapper, classes)
    if cfg.task == "classification":
        reset_classifier(wrapper, num_classes)
        if cfg.head_init == "zero-shot":
            from ftlens.clip import zero_shot_head

            if not classes:
                raise FtlensError(f"dataset {cfg.data!r} has no class names; a zero-shot head needs them")
            zero_shot_head(wrapper, classes, cfg.prompts)
        return TaskModel(wrapper, "classification")
    head = wrapper.module.get_classifier() if hasattr(wrapper.module, "get_classifier") else None
    if head is not None and any(True for _ in head.parameters()):
        reset_classifier(wrapper, 0)  # reconstruction does not use the classifier: drop it
    decoder = make_decoder(wrapper)
    return TaskModel(wrapper, "reconstruction", decoder)


def _features(wrapper: ModelWrapper, source: DataSource, batch_size: int, device: torch.device,
              augment: tuple[int, bool] | None = None, seed: int = 0):
    """Pre-logit features (eval mode) and labels of ``source``.

    ``augment=(padding, flip)``: of one augmented view of each image (:func:`augment_batch`,
    the training augmentation), so that a head fitted on them sees what finetuning trains on.
    """
    feats, labels = [], []
    gen = torch.Generator().manual_seed(int(seed))
    for x, y in source.batches(batch_size, device=device):
        if augment is not None:
            x = augment_batch(x, gen, augment[0], augment[1])
        feats.append(wrapper.representations(x, [PRE_LOGITS], batch_size=batch_size)[PRE_LOGITS])
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


# --------------------------------------------------------------------------- the run


class _Run:
    def __init__(self, cfg: FinetuneConfig, runtime: Runtime, progress: bool | None) -> None:
        self.cfg = cfg
        self.runtime = runtime
        self.show_progress = progress
        self.dir = RunDir(cfg.out)

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg = self.cfg
        self.wrapper = start_model(cfg)
        self.train_src, self.test_src, self.num_classes = load_sources(cfg, self.wrapper)
        classes = getattr(self.train_src.dataset, "classes", None)
        self.model = build_task_model(cfg, self.wrapper, self.num_classes, classes).to(self.runtime.device)
        self.corrupted = corrupted_sources(cfg, self.test_src, tuple(self.wrapper.input_size[1:]))
        device = self.runtime.device
        for src in (self.train_src, self.test_src, *self.corrupted.values()):
            src.to(device)
        self.phases = plan_phases(cfg)
        self.ft_start = ft_start_epoch(self.phases) if cfg.strategy in ("hp-ft", "lp-ft") else None
        world = self.runtime.world_size
        self.per_rank_batch = max(1, cfg.batch_size // world)
        per_rank_examples = len(self.train_src) // world  # train_epoch gives every rank as many
        self.steps_per_epoch = max(1, math.ceil(per_rank_examples / self.per_rank_batch))
        # resolve what depends on the data
        updates: dict[str, Any] = {}
        if cfg.crop_padding is None:
            updates["crop_padding"] = max(1, int(self.wrapper.input_size[1]) // 8)
        if cfg.flip is None:
            updates["flip"] = default_flip(cfg.data)
        if cfg.lr is None:
            updates["lr"] = default_lr(cfg.strategy)
        if updates:
            self.cfg = cfg = cfg.replace(**updates)

    def _phase_steps(self, phase: str) -> int:
        return self.phases.count(phase) * self.steps_per_epoch

    def _warmup(self, total: int) -> int:
        w = self.cfg.warmup_steps
        if w is None:
            return min(PAPER_WARMUP_STEPS, total // 10)
        return min(w, total)

    # ---------------------------------------------------------------- run
    def run(self, *, resume: bool, overwrite: bool, stop_after: int | None) -> RunResult:
        self._setup()
        cfg, rt, d = self.cfg, self.runtime, self.dir
        if rt.is_main:
            d.prepare(cfg, resume=resume, overwrite=overwrite)
        rt.barrier()
        last = d.last_complete() if resume else None
        if resume and d.is_complete_without_state(len(self.phases)) and (last is None or last < len(self.phases)):
            return self._shared_result()
        d.check_no_stray_checkpoints(last)
        if rt.is_main:
            io.write_text(d.config, cfg.to_yaml())
            d.clean_after(last)
            warn_if_random(cfg, self.wrapper)
        rt.barrier()
        self.rows: list[dict[str, Any]] = []
        self.energy: dict[str, Any] | None = None
        self.probe: dict[str, Any] | None = None
        self.seconds: dict[str, float] = {}
        self.optimizer = None
        self.scheduler = None
        self.opt_phase: str | None = None
        self.ddp_model: torch.nn.Module = self.model
        self.params: list[torch.nn.Parameter] = []
        state: dict[str, Any] | None = None
        if last is not None:
            state = _load_state(d.state(last))
            weights, _ = read_checkpoint(d.checkpoint(last))
            self.model.load_weights(weights, str(d.checkpoint(last)))
            self.rows = list(state["metrics"])
            self.energy = state.get("energy")
            self.probe = state.get("linear_probe")
            self.seconds = dict(state.get("seconds", {}))
            start = last
        else:
            self._epoch_zero()
            start = 0
        tracker = self._tracker()
        if last is None:
            tracker.log(self.rows[-1], 0)
        self.reference = None
        if cfg.strategy == "l2-sp":  # theta_0: the backbone of epoch 0 (the starting point), also after a resume
            weights0, _ = read_checkpoint(d.checkpoint(0))
            self.reference = {name: weights0[name.removeprefix("backbone.")].to(rt.device)
                              for name in l2sp_reference(self.model)}
        total = len(self.phases)
        end = total if stop_after is None else min(total, max(int(stop_after), start))
        show = self.show_progress
        if show is None:
            from ftlens.progress import enabled

            show = enabled()
        bar = None
        if show and rt.is_main:
            from ftlens.progress import make_progress

            bar = make_progress()
        with bar if bar is not None else contextlib.nullcontext():
            epoch_task = step_task = None
            if bar is not None:
                epoch_task = bar.add_task(f"{cfg.strategy} {Path(cfg.out).name}", total=total, completed=start, info="")
                step_task = bar.add_task("epoch", total=self.steps_per_epoch, info="")
            for epoch in range(start + 1, end + 1):
                phase = self.phases[epoch - 1]
                if bar is not None:
                    bar.reset(step_task, total=self.steps_per_epoch, description=f"epoch {epoch} ({phase})")
                on_step = (lambda: bar.advance(step_task)) if bar is not None else None
                tic = time.perf_counter()
                row = self._epoch(epoch, phase, state if epoch == start + 1 else None, on_step)
                self.seconds[str(epoch)] = time.perf_counter() - tic
                self._save(epoch)
                tracker.log(row, epoch)
                if bar is not None:
                    bar.advance(epoch_task)
                    bar.update(epoch_task, info=_short(row))
        tracker.close()
        df = metrics_frame(self.rows, self.energy)
        rt.barrier()
        model = load_model(f"{d.path}@last")
        return RunResult(run_dir=d.path, metrics=df, model=model, config=cfg, energy=self.energy,
                         linear_probe=self.probe, completed=end >= total)

    def _shared_result(self) -> RunResult:
        """A finished run without its training states: its files as they are, nothing trained."""
        d = self.dir
        try:
            df = pd.read_csv(d.metrics)
            if "epoch" not in df.columns or len(df) != len(self.phases) + 1:
                raise ValueError(f"{len(df)} rows, expected {len(self.phases) + 1} with an 'epoch' column")
        except Exception as exc:
            raise OutputError(f"{d.metrics} cannot be read ({type(exc).__name__}: {exc}); {_STATE_ADVICE}") from None
        energy = io.read_json(d.energy) if d.energy.is_file() else None
        probe = io.read_json(d.probe) if d.probe.is_file() else None
        return RunResult(run_dir=d.path, metrics=df, model=load_model(f"{d.path}@last"), config=self.cfg,
                         energy=energy, linear_probe=probe, completed=True)

    def _tracker(self):
        """TensorBoard / W&B logging of each epoch's metrics (rank 0 only; a no-op when not asked for)."""
        from ftlens.tracking import Tracker

        cfg = self.cfg
        if not self.runtime.is_main:
            return Tracker(self.dir.path)
        return Tracker(self.dir.path, tensorboard=cfg.tensorboard, wandb_project=cfg.wandb,
                       name=Path(cfg.out).name if cfg.out else None, config=cfg.to_dict())

    # ---------------------------------------------------------------- epochs
    def _epoch_zero(self) -> None:
        cfg = self.cfg
        tic = time.perf_counter()
        phase = initial_phase(cfg)
        row: dict[str, Any] = {"epoch": 0, "phase": phase, "lr": float("nan"), "train_loss": float("nan")}
        if cfg.task == "classification":
            row["train_acc"] = float("nan")
        if phase == "lp":
            self._fit_probe(row)
        self._evaluate(row, 0)
        self.rows.append(row)
        self.seconds["0"] = time.perf_counter() - tic
        self._save(0)

    def _fit_probe(self, row: dict[str, Any]) -> LinearProbe:
        cfg, rt = self.cfg, self.runtime
        self.model.eval()
        # LP-FT: the head is fitted on the features FT will train on (the same augmentation), so the
        # first FT steps start from a head that fits them (an un-augmented fit collapses FT's first epoch)
        augment = (int(cfg.crop_padding), bool(cfg.flip)) if cfg.augment and cfg.strategy == "lp-ft" else None
        feats, labels = _features(self.wrapper, self.train_src, cfg.eval_batch_size, rt.device, augment=augment,
                                  seed=cfg.seed)
        probe = fit_linear_probe(feats, labels, self.num_classes, grid=cfg.lp_grid, val_fraction=cfg.lp_val_fraction,
                                 seed=cfg.seed, max_iter=cfg.lp_max_iter)
        probe.install(self.model.backbone)
        self.probe = probe.summary()
        train = evaluate(self.model, self.train_src, cfg.task, rt, cfg.eval_batch_size)
        row.update(train_loss=train["loss"], train_acc=train["acc"])
        return probe

    def _ensure_optimizer(self, phase: str, state: dict[str, Any] | None) -> None:
        if self.optimizer is not None and self.opt_phase == phase:
            return
        cfg, rt = self.cfg, self.runtime
        names = trainable_names(self.model, cfg.strategy, phase, cfg.surgical_blocks, cfg.surgical_layers,
                                cfg.freeze_bn)
        params = set_trainable(self.model, names)
        lr = cfg.hp_lr if phase == "hp" and cfg.hp_lr is not None else cfg.lr
        optimizer = make_optimizer(params, cfg.optimizer, lr=lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, betas=cfg.betas)
        total = self._phase_steps(phase)
        scheduler = make_scheduler(optimizer, total, self._warmup(total))
        if state is not None and state.get("opt_phase") == phase and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        self.ddp_model, self.optimizer = rt.prepare(self.model, optimizer)
        self.scheduler, self.opt_phase, self.params = scheduler, phase, params

    def _epoch(self, epoch: int, phase: str, state: dict[str, Any] | None, on_step: Callable | None) -> dict:
        cfg, rt = self.cfg, self.runtime
        row: dict[str, Any] = {"epoch": epoch, "phase": phase}
        if phase == "lp" and cfg.task == "classification":
            row.update(lr=float("nan"), train_loss=float("nan"), train_acc=float("nan"))
            self._fit_probe(row)
            self.optimizer, self.opt_phase = None, None
        else:
            self._ensure_optimizer(phase, state)
            head_only = phase in HEAD_ONLY_PHASES
            penalty = None
            if cfg.strategy == "l2-sp" and phase == "ft" and cfg.l2sp_weight > 0:
                ref, w, model = self.reference, cfg.l2sp_weight, self.model
                penalty = lambda: w * l2sp_penalty(model, ref)  # noqa: E731
            settings = EpochSettings(
                task=cfg.task, batch_size=cfg.batch_size, augment=cfg.augment, padding=int(cfg.crop_padding),
                flip=bool(cfg.flip),
                frozen_backbone=head_only,
                label_smoothing=cfg.hp_label_smoothing if phase == "hp" else cfg.label_smoothing,
                grad_clip=cfg.grad_clip, penalty=penalty, model_loss=cfg.strategy in STRATEGY_MODULES,
            )
            set_train_mode(self.model, phase, cfg.freeze_bn)
            stats = train_epoch(self.ddp_model, self.train_src, self.optimizer, self.scheduler, self.params,
                                settings, rt, epoch_seed(cfg.seed, epoch), on_step)
            row.update(stats)
        self._evaluate(row, epoch)
        self.rows.append(row)
        return row

    def _evaluate(self, row: dict[str, Any], epoch: int) -> None:
        cfg, rt = self.cfg, self.runtime
        self.model.before_evaluate()
        test = evaluate(self.model, self.test_src, cfg.task, rt, cfg.eval_batch_size)
        if cfg.task == "classification":
            row.update(test_loss=test["loss"], test_acc=test["acc"])
        else:
            row.update(test_l1=test["l1"], test_psnr=test["psnr"])
        row.update(robustness_metrics(self.model, self.corrupted, cfg.task, rt, cfg.eval_batch_size))
        if self.ft_start is not None and epoch == self.ft_start:
            train = evaluate(self.model, self.train_src, cfg.task, rt, cfg.eval_batch_size)
            key = "loss" if cfg.task == "classification" else "l1"
            self.energy = {"epoch": epoch, "train_loss": train[key], "strategy": cfg.strategy,
                           "hp_epochs": cfg.hp_epochs if cfg.strategy == "hp-ft" else 0}
            if cfg.task == "classification":
                self.energy["train_acc"] = train["acc"]

    def _save(self, epoch: int) -> None:
        rt, d = self.runtime, self.dir
        if rt.is_main:
            optimizer_state = getattr(self.optimizer, "optimizer", self.optimizer)  # Accelerate wraps it
            state = {
                "epoch": epoch,
                "opt_phase": self.opt_phase,
                "optimizer": optimizer_state.state_dict() if optimizer_state is not None else None,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "metrics": self.rows,
                "energy": self.energy,
                "linear_probe": self.probe,
                "seconds": self.seconds,
            }
            _save_state(d.state(epoch), state)
            meta = {"ftlens_task": self.cfg.task, "ftlens_epoch": str(epoch),
                    "ftlens_phase": str(self.rows[-1]["phase"]), "ftlens_strategy": self.cfg.strategy}
            save_checkpoint(self.wrapper, d.checkpoint(epoch), extra_tensors=self.model.extra_tensors(), metadata=meta)
            if epoch > 0:
                d.state(epoch - 1).unlink(missing_ok=True)
            write_metrics(d.metrics, self.rows, self.energy)
            if self.energy is not None:
                io.write_json(d.energy, self.energy)
            if self.probe is not None:
                io.write_json(d.probe, self.probe)
            io.write_json(d.info, {"versions": io.versions(), "device": str(rt.device), "world_size": rt.world_size,
                                   "seconds_per_epoch": self.seconds})
        rt.barrier()


def _short(row: dict[str, Any]) -> str:
    parts = []
    for key in ("train_loss", "test_acc", "test_l1", "corrupted_acc_mean", "corrupted_l1_mean"):
        v = row.get(key)
        if v is not None and v == v:
            parts.append(f"{key} {v:.3f}")
    return "  ".join(parts)


# --------------------------------------------------------------------------- WiSE-FT


def _resolve_endpoint(spec: str) -> Path:
    p = Path(spec)
    if p.is_file():
        return p
    try:
        return resolve_run_checkpoint(spec)
    except CheckpointError:
        raise
    except Exception as exc:  # pragma: no cover - defensive
        raise CheckpointError(f"cannot resolve checkpoint {spec!r}: {exc}") from exc


def _run_wise(cfg: FinetuneConfig, runtime: Runtime, *, resume: bool, overwrite: bool,
              progress: bool | None) -> RunResult:
    """Interpolate ``wise_from`` and ``wise_to`` for each alpha: one checkpoint and one metrics row each.

    Epoch ``i`` of the run directory is alpha ``wise_alphas[i]``.
    """
    to_path = _resolve_endpoint(cfg.wise_to)
    wise_from = cfg.wise_from
    if wise_from is None:
        m = re.match(r"^(.+?)(?:@\w+|[/\\]epoch[_-]?\d+)$", cfg.wise_to)
        if not m or not Path(m.group(1)).is_dir():
            raise ConfigError("wise_from is required when wise_to is a checkpoint file rather than RUN@EPOCH")
        wise_from = f"{m.group(1)}@0"
    from_path = _resolve_endpoint(wise_from)
    cfg = cfg.replace(wise_from=str(wise_from))
    theta_0, _ = read_checkpoint(from_path)
    theta_1, meta1 = read_checkpoint(to_path)
    task = meta1.get("ftlens_task", cfg.task)
    if task != cfg.task:
        raise ConfigError(f"wise_to {cfg.wise_to} is a {task} checkpoint but task is {cfg.task}; pass --task {task}")
    wrapper = load_model(to_path)
    if cfg.model is None:
        cfg = cfg.replace(model=wrapper.source.spec)
    flyp = meta1.get("ftlens_strategy") == "flyp"
    if flyp and (to_path.parent.parent / "config.yaml").is_file():  # the FLYP run's own prompts
        cfg = cfg.replace(prompts=FinetuneConfig.from_yaml(to_path.parent.parent / "config.yaml").prompts)
    d = RunDir(cfg.out)
    if runtime.is_main:
        d.prepare(cfg, resume=True, overwrite=overwrite)
        d.clean_after(None)
        io.write_text(d.config, cfg.to_yaml())
    runtime.barrier()
    from ftlens.data import get_dataset

    size = tuple(wrapper.input_size[1:])
    test = get_dataset(cfg.data, split="test", image_size=size, data_dir=cfg.data_dir, download=cfg.download,
                       seed=cfg.seed)
    test_src = DataSource(test, _subset(len(test), cfg.test_size, epoch_seed(cfg.seed, 0, _SEED_TEST_SUBSET)),
                          num_workers=cfg.num_workers or 0).to(runtime.device)
    corrupted = corrupted_sources(cfg, test_src, size)
    for src in corrupted.values():
        src.to(runtime.device)
    decoder = make_decoder(wrapper) if task == "reconstruction" else None
    if flyp:  # both towers are interpolated; the head is the zero-shot head of the interpolated text tower
        from ftlens.finetune.flyp import FlypTaskModel

        model = FlypTaskModel(wrapper, test.classes, cfg.prompts).to(runtime.device)
    else:
        model = TaskModel(wrapper, task, decoder).to(runtime.device)
    rows: list[dict[str, Any]] = []
    for i, alpha in enumerate(cfg.wise_alphas):
        weights = interpolate_state_dicts(theta_0, theta_1, alpha)
        model.load_weights(weights, f"interpolation alpha={alpha}")
        model.before_evaluate()
        row: dict[str, Any] = {"epoch": i, "phase": "wise", "alpha": float(alpha)}
        test_m = evaluate(model, test_src, task, runtime, cfg.eval_batch_size)
        if task == "classification":
            row.update(test_loss=test_m["loss"], test_acc=test_m["acc"])
        else:
            row.update(test_l1=test_m["l1"], test_psnr=test_m["psnr"])
        row.update(robustness_metrics(model, corrupted, task, runtime, cfg.eval_batch_size))
        rows.append(row)
        if runtime.is_main:
            meta = {"ftlens_task": task, "ftlens_epoch": str(i), "ftlens_phase": "wise",
                    "ftlens_strategy": "wise-ft", "ftlens_wise_alpha": json.dumps(float(alpha))}
            save_checkpoint(wrapper, d.checkpoint(i), extra_tensors=model.extra_tensors(), metadata=meta)
            _save_state(d.state(i), {"epoch": i, "metrics": rows})
            if i > 0:
                d.state(i - 1).unlink(missing_ok=True)
            write_metrics(d.metrics, rows, None)
        runtime.barrier()
    df = metrics_frame(rows, None)
    return RunResult(run_dir=d.path, metrics=df, model=load_model(f"{d.path}@last"), config=cfg)
