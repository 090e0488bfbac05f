"""Load a model, know its preprocessing and its layers, and read those layers.

:func:`load_model` turns a *spec* into a :class:`ModelWrapper`:

- ``"timm:NAME"``: a timm architecture (``pretrained=True`` fetches hub weights); extra keyword
  arguments go to :func:`timm.create_model`;
- ``"torchvision:NAME"``, ``"hf:NAME_OR_DIR"``, ``"open_clip:MODEL[/TAG]"``,
  ``"peft:ADAPTER_DIR"`` (``base=SPEC``): the other families (:mod:`ftlens.models.families`);
- ``"ftlens:PRESET"``: a small CPU-friendly ViT (:data:`PRESETS`), or real pretrained weights
  that ship in a package (``ftlens:efficientnet-lite0-in1k``, see :mod:`ftlens.weights`);
- a checkpoint ``path.safetensors`` / ``path.pt`` (with ``arch=SPEC`` unless the file was written
  by :func:`save_checkpoint`, which records its architecture, preprocessing and input size);
- a finetuning run's epoch: ``"RUN_DIR@3"``, ``"RUN_DIR@last"``, ``"RUN_DIR/epoch_3"``;
- an ``nn.Module`` the user already has (its input size, when not given, from the first images).

Layout: :mod:`~ftlens.models.wrapper` (the wrapper), :mod:`~ftlens.models.trace` (the frozen
execution trace), :mod:`~ftlens.models.capture` (hooks and token handling),
:mod:`~ftlens.models.checkpoint` (files and run directories), :mod:`~ftlens.models.load`
(specs -> wrappers), :mod:`~ftlens.models.families` (one module per family, one registry).
"""

from __future__ import annotations

from ftlens.models.capture import TOKEN_MODES
from ftlens.models.checkpoint import (
    CHECKPOINT_DIR,
    TASK_HEAD_PREFIX,
    checkpoint_path,
    resolve_run_checkpoint,
    run_checkpoints,
    save_checkpoint,
)
from ftlens.models.families import FAMILIES, PRESETS
from ftlens.models.families.base import PRE_LOGITS, Source
from ftlens.models.fingerprint import tensor_bytes, weights_fingerprint
from ftlens.models.load import load_model, rebuild, takes_pretrained
from ftlens.models.trace import ExecutionTrace
from ftlens.models.wrapper import ModelWrapper

__all__ = [
    "CHECKPOINT_DIR",
    "FAMILIES",
    "PRESETS",
    "PRE_LOGITS",
    "TASK_HEAD_PREFIX",
    "TOKEN_MODES",
    "ExecutionTrace",
    "ModelWrapper",
    "Source",
    "checkpoint_path",
    "load_model",
    "rebuild",
    "resolve_run_checkpoint",
    "run_checkpoints",
    "save_checkpoint",
    "takes_pretrained",
    "tensor_bytes",
    "weights_fingerprint",
]
