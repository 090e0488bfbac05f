"""Live curves during finetuning: TensorBoard (``torch.utils.tensorboard``) and Weights & Biases.

Both are optional. ``ftlens finetune --tensorboard`` writes event files to ``RUN_DIR/tensorboard``
(``tensorboard --logdir runs/``; needs the ``tensorboard`` package: ``pip install
'ftlens[tracking]'``); ``--wandb PROJECT`` logs to that W&B project when ``wandb`` is installed.
Logged per epoch: every number of the run's ``metrics.csv`` row (losses, accuracies, learning
rate, corrupted accuracy, and with ``--monitor-forgetting`` the monitor's signal under ``monitor/``
with every layer's learning and forgetting); :func:`ftlens.analysis.dynamics.dynamics` adds
learning, forgetting and cka divergence per layer and epoch to the same run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ftlens.errors import TrackingError  # noqa: F401 (re-exported)

TENSORBOARD_DIR = "tensorboard"


def _numbers(row: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in row.items():
        if key == "epoch" or isinstance(value, (bool, str)) or value is None:
            continue
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out[key] = v
    return out


def _tag(key: str) -> str:
    """``test_acc`` -> ``test/acc``; ``acc_gaussian_noise_s3`` -> ``corrupted/acc_gaussian_noise_s3``."""
    for prefix in ("train", "test", "energy", "monitor"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1:]}"
    if key.startswith(("corrupted_", "acc_", "l1_")):
        return f"corrupted/{key.removeprefix('corrupted_')}"
    return f"run/{key}"


class Tracker:
    """Writes scalars to every backend it was opened with (none: a no-op)."""

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool = False, wandb_project: str | None = None,
                 name: str | None = None, config: Mapping[str, Any] | None = None) -> None:
        self.writer = None
        self.wandb_run = None
        run_dir = Path(run_dir)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise TrackingError("--tensorboard needs the tensorboard package: pip install 'ftlens[tracking]' "
                                    "(or pip install tensorboard)") from exc
            self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        if wandb_project:
            try:
                import wandb
            except ImportError as exc:
                raise TrackingError("--wandb needs the wandb package: pip install wandb (then wandb login)") from exc
            self.wandb_run = wandb.init(project=wandb_project, name=name or run_dir.name, dir=str(run_dir),
                                        config=dict(config or {}), resume="allow")

    @property
    def active(self) -> bool:
        return self.writer is not None or self.wandb_run is not None

    def log(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
        """Log every finite number in ``values`` at ``step`` (tags grouped by train/test/corrupted)."""
        nums = _numbers(values)
        if not nums or not self.active:
            return
        tags = {(prefix + key) if prefix else _tag(key): v for key, v in nums.items()}
        if self.writer is not None:
            for tag, v in tags.items():
                self.writer.add_scalar(tag, v, step)
            self.writer.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({**tags, "epoch": step})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def run_tracker(run_dir: str | os.PathLike) -> Tracker:
    """A tracker for an existing run, opened the way the run was (its ``config.yaml``)."""

    path = Path(run_dir) / "config.yaml"
    cfg = yaml.safe_load(path.read_text()) if path.exists() else {}
    cfg = cfg if isinstance(cfg, dict) else {}
    return Tracker(run_dir, tensorboard=bool(cfg.get("tensorboard")), wandb_project=cfg.get("wandb"))
