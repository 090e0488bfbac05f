"""Finetuning strategies (ALGORITHMS.md §7): which parameters train in which phase, L2-SP,
surgical block selection and WiSE-FT weight interpolation.

Phases (the ``phase`` column of ``metrics.csv``):

- ``init``: epoch 0, the starting point, before any training;
- ``lp``: the linear probe (closed form, backbone frozen); epoch 0 of ``lp-ft``, epoch 1 of ``lp``
  (for reconstruction, ``lp`` trains the linear decoder by gradient with the backbone frozen);
- ``hp``: head probing of ``hp-ft`` (gradient steps on the head alone, backbone frozen);
- ``ft``: finetuning: every parameter (``scratch``, ``ft``, ``lp-ft``, ``hp-ft``, ``l2-sp``) or
  the chosen blocks and the head (``surgical``);
- ``wise``: one row per WiSE-FT interpolation weight.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

import torch

from ftlens.errors import CheckpointError, FtlensError
from ftlens.finetune.config import FinetuneConfig
from ftlens.finetune.tasks import TaskModel

HEAD_ONLY_PHASES = ("lp", "hp")


def initial_phase(cfg: FinetuneConfig) -> str:
    """Phase of epoch 0: ``lp`` when the linear probe is fitted before FT (``lp-ft``), else ``init``."""
    return "lp" if cfg.strategy == "lp-ft" else "init"


def plan_phases(cfg: FinetuneConfig) -> list[str]:
    """Phase of each epoch 1..N of a run (``wise-ft`` has no training epochs)."""
    s = cfg.strategy
    if s == "wise-ft":
        return []
    if s == "lp":
        return ["lp"] if cfg.task == "classification" else ["lp"] * cfg.epochs
    if s == "hp-ft":
        return ["hp"] * cfg.hp_epochs + ["ft"] * cfg.epochs
    return ["ft"] * cfg.epochs


def ft_start_epoch(phases: Sequence[str]) -> int | None:
    """The epoch whose end is the start of FT (the model whose "energy" is measured), or None."""
    for i, phase in enumerate(phases):
        if phase == "ft":
            return i  # phases[i] is epoch i + 1, so FT starts from the weights of epoch i
    return None


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


def trainable_names(task_model: TaskModel, strategy: str, phase: str,
                    surgical_blocks: Sequence[int] | None = None,
                    surgical_layers: Sequence[str] | None = None,
                    freeze_bn: bool = False) -> list[str]:
    """Names of the parameters that train in ``phase`` of ``strategy`` (the head always does).

    ``freeze_bn``: BatchNorm affine weights of the backbone do not train in FT."""
    names = [n for n, _ in task_model.named_parameters()]
    if phase in HEAD_ONLY_PHASES:
        return [n for n in names if task_model.is_head(n)]
    if phase != "ft":
        return []
    if freeze_bn:
        frozen = set(bn_parameter_names(task_model))
        names = [n for n in names if n not in frozen or task_model.is_head(n)]
    if strategy == "surgical" and surgical_layers:
        chosen = set(surgical_names(task_model, surgical_layers))
        return [n for n in names if task_model.is_head(n) or n in chosen]
    if strategy == "surgical":
        prefixes = block_names(task_model)
        bad = [b for b in surgical_blocks or [] if b >= len(prefixes)]
        if bad:
            raise FtlensError(
                f"surgical_blocks {bad} out of range: the model has {len(prefixes)} blocks (0-{len(prefixes) - 1})"
            )
        chosen = tuple(prefixes[b] for b in surgical_blocks or [])
        return [n for n in names if task_model.is_head(n) or n.startswith(chosen)]
    if task_model.derived_head:  # FLYP: the head follows the text tower
        return [n for n in names if not task_model.is_head(n)]
    return names


def set_trainable(task_model: TaskModel, names: Sequence[str]) -> list[torch.nn.Parameter]:
    """Turn ``requires_grad`` on for ``names`` and off for every other parameter."""
    keep = set(names)
    params = []
    for n, p in task_model.named_parameters():
        p.requires_grad_(n in keep)
        if n in keep:
            params.append(p)
    return params


def bn_parameter_names(task_model: TaskModel) -> list[str]:
    """Names of the affine parameters of the backbone's BatchNorm layers."""
    out = []
    for mname, module in task_model.backbone.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            out += [f"backbone.{mname}.{p}" for p, _ in module.named_parameters(recurse=False)]
    return out


def set_train_mode(task_model: TaskModel, phase: str, freeze_bn: bool = False) -> None:
    """``train()`` for FT; a frozen backbone stays in ``eval()`` (fixed features, BN statistics).

    In FT, BatchNorm layers whose parameters are all frozen (surgical, ``freeze_bn``) stay in
    ``eval()`` so their running statistics do not move either."""
    task_model.train()
    if phase in HEAD_ONLY_PHASES:
        task_model.backbone.eval()
        if task_model.decoder is not None:
            task_model.decoder.train()
        else:
            task_model.backbone.get_classifier().train()
        return
    # modules whose parameters are all frozen (surgical) keep their normalisation statistics
    for module in task_model.backbone.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            if freeze_bn or not any(p.requires_grad for p in module.parameters()):
                module.eval()


# --------------------------------------------------------------------------- L2-SP


def l2sp_reference(task_model: TaskModel) -> dict[str, torch.Tensor]:
    """Detached copies of the backbone parameters at the start (``theta_0`` of L2-SP)."""
    return {n: p.detach().clone() for n, p in task_model.backbone_parameters()}


def l2sp_penalty(task_model: TaskModel, reference: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``sum over backbone parameters of ||theta - theta_0||^2`` (a scalar; the weight is applied
    by the caller). Exactly 0 while the weights equal ``reference``; the head is excluded."""
    terms = [(p - reference[n]).pow(2).sum() for n, p in task_model.backbone_parameters() if p.requires_grad]
    if not terms:
        return torch.zeros((), device=next(task_model.parameters()).device)
    return torch.stack(terms).sum()


# --------------------------------------------------------------------------- WiSE-FT


def interpolate_state_dicts(
    theta_0: Mapping[str, torch.Tensor], theta_1: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * theta_0 + alpha * theta_1`` key by key (WiSE-FT).

    alpha 0 and 1 return exact copies of the endpoints. Non-float tensors (counters) are taken
    from the nearer endpoint. Keys and shapes must agree: a :class:`CheckpointError` lists them.
    """
    k0, k1 = set(theta_0), set(theta_1)
    if k0 != k1:
        only0, only1 = sorted(k0 - k1), sorted(k1 - k0)
        raise CheckpointError(
            "WiSE-FT endpoints have different keys (different architectures or task heads): "
            f"only in wise_from: {only0[:6]}; only in wise_to: {only1[:6]}. Interpolate two "
            "checkpoints of the same run (e.g. RUN@0 and RUN@last of an lp-ft run)"
        )
    shapes = [k for k in theta_0 if tuple(theta_0[k].shape) != tuple(theta_1[k].shape)]
    if shapes:
        raise CheckpointError(f"WiSE-FT endpoints differ in shape for {shapes[:6]}; they must share the architecture")
    alpha = float(alpha)
    out: dict[str, torch.Tensor] = {}
    for k, a in theta_0.items():
        b = theta_1[k]
        if alpha == 0.0:
            out[k] = a.clone()
        elif alpha == 1.0:
            out[k] = b.clone()
        elif a.is_floating_point():
            out[k] = ((1.0 - alpha) * a.double() + alpha * b.double()).to(a.dtype)
        else:
            out[k] = (b if alpha >= 0.5 else a).clone()
    return out
