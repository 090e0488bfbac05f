"""One finetuning run end to end: :func:`finetune` (``ftlens finetune`` from the command line).

The run directory and its resumption: :mod:`ftlens.finetune.rundir`; the model and the data of a
run: :mod:`~ftlens.finetune.build`, :mod:`~ftlens.finetune.sources`; the epoch loop:
:mod:`~ftlens.finetune.training`; what each strategy decides: :mod:`ftlens.finetune.strategies`.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import torch

from ftlens.finetune.config import FinetuneConfig
from ftlens.finetune.loop import Runtime
from ftlens.finetune.result import RunResult
from ftlens.finetune.rundir import check_output_dir, run_lock
from ftlens.finetune.strategies import get_strategy
from ftlens.finetune.training import TrainingRun

__all__ = ["RunResult", "default_out", "finetune"]


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
    # one process trains a run folder at a time (the main rank of a launcher's job holds the lock)
    lock = run_lock(cfg.out) if runtime.is_main else contextlib.nullcontext()
    with lock, torch.random.fork_rng(devices=devices):
        strategy = get_strategy(cfg.strategy)
        result = strategy.run(cfg, runtime, resume=resume, overwrite=overwrite, stop_after=stop_after,
                              progress=progress)
        if result is not None:
            return result
        return TrainingRun(cfg, runtime, progress=progress).run(resume=resume, overwrite=overwrite,
                                                                stop_after=stop_after)


def default_out(cfg: FinetuneConfig) -> Path:
    data = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(cfg.data).name or cfg.data).strip("-")
    return Path("runs") / f"{data}-{cfg.task}-{cfg.strategy}-s{cfg.seed}"
