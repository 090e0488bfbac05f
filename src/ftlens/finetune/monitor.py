"""The live forgetting monitor of a finetuning run (``ftlens finetune --monitor-forgetting``).

After every epoch the epoch's checkpoint is compared with the run's starting point (epoch 0) by
:func:`ftlens.invariance.compare` at cheap settings: ``monitor_images`` test images (the first of
the fixed pool every analysis draws, :func:`ftlens.invariance.pool.image_pool`), one seed,
``monitor_steps`` inversion steps of the default converging schedule, no bootstrap. The starting
point's inversions depend only on its weights, the images and the settings, so the content-keyed
cache computes them once (at epoch 0) and every later epoch reuses them; each epoch inverts only
its own layers, from the same seeded starts. Per layer: learning and forgetting (as ``dynamics``
has them, on fewer images); per epoch, the named signal

    ``forgetting_spread`` = std over layers 2..L of forgetting

(the paper's headline hypothesis, :func:`ftlens.analysis.correlation.headline_hypothesis`: the
larger it is, the more robust the model was under corruptions in Merlin et al.). The signal
prefers the epoch (>= 1) where it is largest; with ``monitor_keep`` that epoch's checkpoint is
kept as ``RUN_DIR/preferred.safetensors`` (updated when another epoch overtakes it).

Files: ``RUN_DIR/monitor.csv`` (epoch x layer), ``RUN_DIR/monitor.json`` (settings, the signal per
epoch, the preferred epoch, wall and CPU seconds per epoch); ``metrics.csv`` and TensorBoard / W&B get
``monitor_forgetting_spread``, ``monitor_forgetting_mean``, ``monitor_learning_mean`` and
``monitor_seconds`` per epoch (TensorBoard also every layer's value under ``monitor/``).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ftlens import io
from ftlens.analysis.correlation import headline_hypothesis
from ftlens.errors import CorrelationError
from ftlens.finetune.rundir import RunDir
from ftlens.invariance import compare
from ftlens.invariance.pool import image_pool
from ftlens.invariance.run import InProcess
from ftlens.models import ModelWrapper, load_model

__all__ = ["COLUMNS", "SIGNAL", "ForgettingMonitor", "forgetting_spread"]

SIGNAL = "forgetting_spread"
#: the per-layer columns of ``monitor.csv``
COLUMNS = ["epoch", "layer", "layer_number", "learning", "forgetting", "cka_divergence", "converged",
           "residual_pretrained", "residual_finetuned"]


def forgetting_spread(forgetting: pd.Series) -> float:
    """std (ddof 0) of ``forgetting`` (layers in model order) over layers 2..L; NaN for one layer."""
    try:
        hypothesis = headline_hypothesis(len(forgetting))
    except CorrelationError:
        return float("nan")
    wide = pd.DataFrame([forgetting.to_numpy(dtype=float)], columns=list(forgetting.index))
    return float(hypothesis.evaluate({"learning": wide * 0.0, "forgetting": wide}).iloc[0])


class ForgettingMonitor:
    """Cheap per-layer learning / forgetting of each epoch's checkpoint against epoch 0 of ``run_dir``.

    Args:
        run_dir: the run directory (its checkpoints are read as ``RUN_DIR@EPOCH``).
        images: ``(n, C, H, W)`` in [0, 1]: the monitor's images (``monitor_images`` of the test split).
        steps: inversion steps (at most: the default schedule stops each image once it converged).
        keep: keep the preferred epoch's checkpoint as ``RUN_DIR/preferred.safetensors``.
        cache: the inversion cache (default: ftlens's; the starting point's inversions are reused).
    """

    def __init__(self, run_dir: str | Path, images: torch.Tensor, *, steps: int, keep: bool = False,
                 cache: Any = True, device: str | torch.device | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.files = RunDir(run_dir)
        self.images = images
        self.steps = int(steps)
        self.keep = bool(keep)
        self.cache = cache
        self.device = device
        self.reference: ModelWrapper | None = None
        table, summary = self.files.monitor_table, self.files.monitor_summary
        self.table = pd.read_csv(table) if table.is_file() else pd.DataFrame(columns=COLUMNS)
        self.summary = io.read_json(summary) if summary.is_file() else {}

    @classmethod
    def for_run(cls, run_dir: str | Path, dataset: Any, n_images: int, **kwargs: Any) -> ForgettingMonitor:
        """A monitor on the first ``n_images`` of the fixed pool of ``dataset`` (a test split)."""
        return cls(run_dir, image_pool(dataset, min(int(n_images), len(dataset)), 1).images, **kwargs)

    def forget_after(self, epoch: int) -> None:
        """Drop what was recorded for epochs after ``epoch`` (a resumed run recomputes them)."""
        self.table = self.table[self.table["epoch"] <= epoch].reset_index(drop=True)
        for key in ("signal", "seconds", "cpu_seconds"):
            self.summary[key] = {e: v for e, v in self.summary.get(key, {}).items() if int(e) <= epoch}

    def measure(self, epoch: int) -> dict[str, float]:
        """Compare ``RUN_DIR@epoch`` with ``RUN_DIR@0``; record and return the epoch's summary values
        (``monitor_forgetting_spread``, ``monitor_forgetting_mean``, ``monitor_learning_mean``,
        ``monitor_seconds``)."""
        tic, cpu = time.perf_counter(), time.process_time()
        if self.reference is None:
            self.reference = load_model(f"{self.run_dir}@0")
        model = load_model(f"{self.run_dir}@{epoch}", image_size=self.reference.input_size[1:])
        cmp = compare(self.reference, model, self.images, layers=self.reference.layers, seeds=1, n_images=None,
                      steps=self.steps, cache=self.cache, bootstrap=0, progress=False, executor=InProcess(),
                      device=self.device)
        seconds, cpu_seconds = time.perf_counter() - tic, time.process_time() - cpu
        pl = cmp.per_layer
        frame = pd.DataFrame({"epoch": epoch, "layer": list(pl.index),
                              **{c: pl[c].to_numpy() for c in COLUMNS[2:] if c in pl.columns}})
        self.table = pd.concat([self.table[self.table["epoch"] != epoch], frame], ignore_index=True)[COLUMNS]
        spread = forgetting_spread(pl["forgetting"])
        self.summary.setdefault("signal", {})[str(epoch)] = spread
        self.summary.setdefault("seconds", {})[str(epoch)] = seconds
        self.summary.setdefault("cpu_seconds", {})[str(epoch)] = cpu_seconds
        self._prefer()
        self._write()
        return {f"monitor_{SIGNAL}": spread, "monitor_forgetting_mean": float(pl["forgetting"].mean()),
                "monitor_learning_mean": float(pl["learning"].mean()), "monitor_seconds": seconds}

    def per_layer(self, epoch: int) -> dict[str, float]:
        """``{"forgetting/layer_N": v, "learning/layer_N": v}`` of ``epoch`` (for TensorBoard / W&B)."""
        rows = self.table[self.table["epoch"] == epoch]
        return {f"{metric}/layer_{int(n)}": float(v) for metric in ("learning", "forgetting")
                for n, v in zip(rows["layer_number"], rows[metric], strict=True)}

    @property
    def preferred_epoch(self) -> int | None:
        """The epoch >= 1 with the largest signal (None before epoch 1)."""
        signal = {int(e): v for e, v in self.summary.get("signal", {}).items()
                  if int(e) >= 1 and v is not None and math.isfinite(v)}
        return max(signal, key=lambda e: (signal[e], -e)) if signal else None

    def _prefer(self) -> None:
        best = self.preferred_epoch
        self.summary.update(signal_name=SIGNAL, rule="the epoch (>= 1) with the largest std of forgetting over "
                            "layers 2..L", preferred_epoch=best, images=int(self.images.shape[0]), steps=self.steps,
                            reference=f"{self.run_dir.name}@0")
        if self.keep and best is not None and self.summary.get("kept_epoch") != best:
            with io.atomic_path(self.files.preferred) as tmp:
                shutil.copyfile(self.files.checkpoint(best), tmp)
            self.summary["kept_epoch"] = best

    def _write(self) -> None:
        io.write_table(self.files.monitor_table, self.table.set_index("epoch"))
        io.write_json(self.files.monitor_summary, self.summary)
