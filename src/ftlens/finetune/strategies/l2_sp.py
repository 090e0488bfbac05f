"""``l2-sp``: finetuning with the penalty ``l2sp_weight * sum ||theta - theta_0||^2`` over the
backbone parameters, ``theta_0`` the backbone of epoch 0 (Li et al., 2018; ALGORITHMS.md §7)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ftlens.finetune.strategies.base import Strategy
from ftlens.finetune.tasks import TaskModel


class L2SP(Strategy):
    name = "l2-sp"
    aliases = ("l2sp",)
    summary = "finetune with an L2 penalty towards the starting weights"
    uses_start_weights = True

    def penalty(self, cfg, task_model, phase, start):
        if phase != "ft" or cfg.l2sp_weight <= 0:
            return None
        w = cfg.l2sp_weight
        return lambda: w * l2sp_penalty(task_model, start)


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


STRATEGY = L2SP()
