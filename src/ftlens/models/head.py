"""The timm classifier interface (``forward_head``, ``get_classifier``, ``reset_classifier``) of
a module whose pooled features ``(n, num_features)`` go through a linear ``head``."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LinearHeadMixin"]


class LinearHeadMixin:
    """For an ``nn.Module`` with ``forward_features(x) -> (n, num_features)``, ``num_features``
    and ``head`` (an ``nn.Linear`` or ``nn.Identity``): logits ``(n, classes)`` from ``forward``."""

    head: nn.Module
    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
