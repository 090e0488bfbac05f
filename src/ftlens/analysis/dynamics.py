"""Dynamics: learning, forgetting and cka divergence of every epoch's checkpoint.

Every checkpoint of a finetuning run is compared with the same pretrained model
(:func:`ftlens.invariance.compare`). The pretrained-side inversions depend only on the
pretrained weights, the images, the seed and the inversion settings, so the content-keyed
cache computes them once and every epoch reuses them; only the finetuned side is inverted
per epoch.

Output: a tidy table, one row per (epoch, layer) with the per-layer columns of
``Comparison.per_layer``, joined with the run's per-epoch accuracies (ID and corrupted).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ftlens import io
from ftlens.errors import CorrelationError, ResultNotFoundError
from ftlens.invariance import compare
from ftlens.invariance.pool import sample_indices
from ftlens.models import ModelWrapper, load_model, run_checkpoints
from ftlens.progress import track
from ftlens.settings import PAPER
from ftlens.similarity import subspace_similarity
from ftlens.tracking import Tracker, run_tracker
from ftlens.vocabulary import upgrade_columns


def run_metrics(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The run's ``metrics.csv`` (one row per epoch), or an empty frame."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return pd.DataFrame()
    return pd.read_csv(path)


def read_dynamics(path: str | os.PathLike) -> pd.DataFrame:
    """A ``dynamics.csv`` written by :func:`dynamics`, with the column names of earlier versions mapped."""
    return upgrade_columns(pd.read_csv(path))


def dynamics(
    run_dir: str | os.PathLike,
    pretrained: str | ModelWrapper,
    images: torch.Tensor,
    *,
    epochs: Sequence[int] | None = None,
    layers: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    **compare_kwargs: Any,
) -> pd.DataFrame:
    """Per-epoch, per-layer learning / forgetting / cka divergence of a run against ``pretrained``.

    Args:
        run_dir: a finetuning run directory (``checkpoints/epoch_XXX.safetensors``).
        pretrained: the reference model (spec or wrapper), e.g. ``"RUN_DIR@0"``.
        images: the image pool, (n, C, H, W) in [0, 1].
        epochs: which epochs (default: every complete checkpoint).
        out: if given, ``dynamics.csv`` is written there (atomically) after every epoch, and
            epochs already in it are not recomputed.
        **compare_kwargs: passed to :func:`ftlens.invariance.compare` (seeds, n_images, steps, ...).

    Returns:
        tidy DataFrame with columns ``epoch, layer, learning, forgetting, cka_divergence, ...``.
    """

    pt = load_model(pretrained) if not isinstance(pretrained, ModelWrapper) else pretrained
    ckpts = run_checkpoints(run_dir)
    if not ckpts:
        raise ResultNotFoundError(f"no checkpoints in {run_dir}/checkpoints; is it a finetuning run directory "
                                  "(the --out of `ftlens finetune`)?")
    wanted = sorted(ckpts) if epochs is None else [e for e in epochs if e in ckpts]
    table_path = Path(out) / "dynamics.csv" if out is not None else None
    done = read_dynamics(table_path) if table_path is not None and table_path.exists() else pd.DataFrame()
    frames = [done] if len(done) else []
    have = set(done["epoch"].unique()) if len(done) else set()

    tracker = run_tracker(run_dir) if Path(run_dir, "config.yaml").exists() else Tracker(run_dir)
    for epoch in track([e for e in wanted if e not in have], description=f"dynamics {Path(run_dir).name}"):
        ft = load_model(str(ckpts[epoch]), layers=layers or pt.layers, image_size=pt.input_size[1:],
                        tokens=getattr(pt, "tokens", "all"))  # the same token handling as the pretrained side
        cmp = compare(pt, ft, images, layers=layers, **compare_kwargs)
        if cmp is None:  # another rank under a launcher: its share is in the cache, rank 0 merges
            continue
        frame = cmp.per_layer.reset_index().rename(columns={"index": "layer"})
        frame.insert(0, "epoch", epoch)
        frame["estimator"] = cmp.estimator  # biased / debiased linear CKA, or the measure inside STIR
        sub = subspace_per_layer(pt, ft, images, layers=list(frame["layer"]),
                                 n_images=compare_kwargs.get("n_images", PAPER.images))
        frame["subspace_similarity"] = frame["layer"].map(sub)
        frames.append(frame)
        tracker.log({f"{metric}/layer_{k}": v for metric in ("learning", "forgetting", "cka_divergence")
                     for k, v in zip(frame["layer_number"], frame[metric], strict=True)}, epoch, prefix="dynamics/")
        if table_path is not None:
            io.write_table(table_path, pd.concat(frames, ignore_index=True).set_index("epoch"))
    tracker.close()
    if not frames:  # a non-zero rank under a launcher
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True).sort_values(["epoch"], kind="stable").reset_index(drop=True)
    return table


def subspace_per_layer(pt: ModelWrapper, ft: ModelWrapper, images: torch.Tensor, *, layers: Sequence[str],
                       n_images: int = PAPER.images, k: int = 10) -> dict[str, float]:
    """Subspace similarity (Ramasesh et al. 2022: overlap of the top-``k`` principal subspaces)
    of each layer of ``ft`` with the same layer of ``pt`` on clean images (seed 0's sample).

    The paper's baseline next to cka divergence in the robustness correlation.
    """

    idx = sample_indices(images.shape[0], min(n_images, images.shape[0]), 0)
    x = images[idx]
    ra, rb = pt.representations(x, layers), ft.representations(x, layers)
    k = max(1, min(k, x.shape[0] - 1))
    return {layer: subspace_similarity(ra[layer], rb[layer], k=k) for layer in layers}


def with_accuracy(dyn: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Join the per-epoch accuracy columns of ``metrics.csv`` onto a dynamics table."""
    if metrics.empty:
        return dyn
    cols = [c for c in metrics.columns if c == "epoch" or "acc" in c or c.startswith("test_")]
    return dyn.merge(metrics[cols].drop_duplicates("epoch", keep="last"), on="epoch", how="left")


def corrupted_accuracy(metrics: pd.DataFrame) -> pd.Series:
    """Per-epoch mean corrupted accuracy (``corrupted_acc_mean``), indexed by epoch."""
    if "corrupted_acc_mean" not in metrics.columns:
        raise CorrelationError("metrics.csv has no corrupted_acc_mean column: finetune with --corruptions")
    m = metrics.drop_duplicates("epoch", keep="last").set_index("epoch")
    return m["corrupted_acc_mean"].astype(float)


def severity_accuracy(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch accuracy per severity (mean over corruptions): columns ``s1, s3, ...``."""
    m = metrics.drop_duplicates("epoch", keep="last").set_index("epoch")
    out = {}
    for col in m.columns:
        if col.startswith("acc_") and "_s" in col:
            sev = col.rsplit("_s", 1)[1]
            if sev.isdigit():
                out.setdefault(f"severity {sev}", []).append(m[col].astype(float))
    return pd.DataFrame({k: pd.concat(v, axis=1).mean(axis=1) for k, v in sorted(out.items())})
