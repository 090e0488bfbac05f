"""``surgical``: only chosen parts of the backbone train in FT, with the task head (Lee et al., 2023).

``surgical_blocks``: ViT block indices (``backbone.blocks.i``); ``surgical_layers``: module-name
patterns of any backbone (fnmatch, relative to the backbone: ``layer1``, ``stages.0*``,
``blocks.[0-3]``). BatchNorm layers whose parameters are all frozen keep their statistics.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from ftlens.errors import ConfigError, FtlensError
from ftlens.finetune.strategies.base import Strategy
from ftlens.finetune.tasks import TaskModel


class Surgical(Strategy):
    name = "surgical"
    summary = "finetune chosen blocks or layers and the head"

    def check(self, cfg):
        if not cfg.surgical_blocks and not cfg.surgical_layers:
            raise ConfigError(
                "strategy surgical needs surgical_blocks (ViT blocks, e.g. --surgical-blocks 0-3) or "
                "surgical_layers (module-name patterns, e.g. --surgical-layers 'layer1,layer2')"
            )

    def ft_names(self, task_model, cfg, names):
        if cfg.surgical_layers:
            chosen = set(surgical_names(task_model, cfg.surgical_layers))
            return [n for n in names if task_model.is_head(n) or n in chosen]
        prefixes = block_names(task_model)
        bad = [b for b in cfg.surgical_blocks or [] if b >= len(prefixes)]
        if bad:
            raise FtlensError(
                f"surgical_blocks {bad} out of range: the model has {len(prefixes)} blocks (0-{len(prefixes) - 1})"
            )
        prefix = tuple(prefixes[b] for b in cfg.surgical_blocks or [])
        return [n for n in names if task_model.is_head(n) or n.startswith(prefix)]


def block_names(task_model: TaskModel) -> list[str]:
    """Parameter-name prefixes of the ViT blocks (``backbone.blocks.0.`` ...)."""
    blocks = getattr(task_model.backbone, "blocks", None)
    if blocks is None:
        raise FtlensError("surgical finetuning selects ViT blocks, but this model has no `blocks`")
    return [f"backbone.blocks.{i}." for i in range(len(blocks))]


def surgical_names(task_model: TaskModel, patterns: Sequence[str]) -> list[str]:
    """Backbone parameter names (``backbone.layer1.0.conv1.weight``) selected by module-name
    patterns (fnmatch, relative to the backbone: ``layer1``, ``stages.0*``, ``blocks.[0-3]``).

    A pattern selects a parameter when it matches the parameter's name or the name of a module
    that holds it. A pattern that selects nothing is an error listing the top-level modules.
    """
    names = [n for n, _ in task_model.backbone_parameters()]
    chosen: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if _selects(pattern, n.removeprefix("backbone."))]
        if not hits:
            tops = sorted({n.removeprefix("backbone.").split(".")[0] for n in names})
            raise FtlensError(
                f"surgical_layers pattern {pattern!r} selects no backbone parameter; module names start "
                f"with {', '.join(tops[:12])} (`ftlens layers MODEL` lists them)"
            )
        chosen.extend(n for n in hits if n not in chosen)
    return chosen


def _selects(pattern: str, name: str) -> bool:
    """Whether ``pattern`` names the parameter ``name`` or one of the modules holding it."""
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


STRATEGY = Surgical()
