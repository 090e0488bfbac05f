"""What :func:`ftlens.finetune.finetune` returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ftlens.finetune.config import FinetuneConfig
from ftlens.models import ModelWrapper


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
        monitor: the forgetting monitor's summary (``monitor.json``: the signal per epoch, the
            preferred epoch) when it ran (:mod:`ftlens.finetune.monitor`).
    """

    run_dir: Path
    metrics: pd.DataFrame
    model: ModelWrapper
    config: FinetuneConfig
    energy: dict[str, Any] | None = None
    linear_probe: dict[str, Any] | None = None
    completed: bool = True
    monitor: dict[str, Any] | None = None

    @property
    def last_epoch(self) -> int:
        return int(self.metrics["epoch"].iloc[-1])
