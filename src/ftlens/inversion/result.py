"""The result of one inversion (:class:`Inversion`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ftlens.inversion.settings import InversionSettings

__all__ = ["Inversion"]


@dataclass
class Inversion:
    """Result of inverting ``n`` images through one layer of one model.

    Attributes:
        images: ``X'``, float32 CPU tensor ``(n, C, H, W)`` in [0, 1] (best iterate per image).
        residual: float32 CPU tensor ``(n,)``: the relative L2 residual
            ``||m^[j](x') - m^[j](x)|| / ||m^[j](x)||`` of the returned (best) iterate.
        history: float32 CPU tensor ``(steps + 1,)``: mean residual of the *current* iterate at
            each evaluation (index 0 = start).
        best_history: float32 CPU tensor ``(steps + 1,)``: mean residual of the best iterate so
            far (non-increasing).
        layer, model: the inverted layer and the model's name.
        seed: seed of the start; ``settings``: steps, step size, start, autocast.
        seconds: wall time of the computation (of the original run, if loaded from a cache).
        cached: whether this result came from a cache.
    """

    images: torch.Tensor
    residual: torch.Tensor
    history: torch.Tensor
    best_history: torch.Tensor
    layer: str
    model: str
    seed: int
    settings: InversionSettings
    seconds: float = 0.0
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def mean_residual(self) -> float:
        return float(self.residual.mean()) if self.residual.numel() else float("nan")

    def __repr__(self) -> str:
        return (
            f"Inversion(model={self.model!r}, layer={self.layer!r}, n={self.n}, seed={self.seed}, "
            f"steps={self.settings.steps}, mean residual={self.mean_residual:.4g})"
        )
