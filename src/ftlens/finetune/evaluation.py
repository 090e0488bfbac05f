"""What a run measures after each epoch: the test split, the corrupted test sets, and the
pre-logit features the linear probe is fitted on."""

from __future__ import annotations

from typing import Any

import torch

from ftlens.finetune.loop import DataSource, Runtime, augment_batch, evaluate
from ftlens.finetune.tasks import TaskModel
from ftlens.models import PRE_LOGITS, ModelWrapper


def test_metrics(model: TaskModel, test: DataSource, corrupted: dict[str, DataSource], task: str, runtime: Runtime,
                 batch_size: int) -> dict[str, float]:
    """The test columns of a ``metrics.csv`` row: ``test_loss``, ``test_acc`` (classification) or
    ``test_l1``, ``test_psnr`` (reconstruction), then :func:`robustness_metrics`."""
    m = evaluate(model, test, task, runtime, batch_size)
    row = dict(test_loss=m["loss"], test_acc=m["acc"]) if task == "classification" else \
        dict(test_l1=m["l1"], test_psnr=m["psnr"])
    row.update(robustness_metrics(model, corrupted, task, runtime, batch_size))
    return row


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


def source_features(wrapper: ModelWrapper, source: DataSource, batch_size: int, device: torch.device,
                    augment: tuple[int, bool] | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-logit features ``(n, d)`` (eval mode) and labels ``(n,)`` of ``source``.

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


def summary_line(row: dict[str, Any]) -> str:
    """``"train_loss 0.123  test_acc 0.950"``: the progress bar's note for an epoch's row."""
    parts = []
    for key in ("train_loss", "test_acc", "test_l1", "corrupted_acc_mean", "corrupted_l1_mean"):
        v = row.get(key)
        if v is not None and v == v:
            parts.append(f"{key} {v:.3f}")
    return "  ".join(parts)
