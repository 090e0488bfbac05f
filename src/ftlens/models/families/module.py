"""A plain ``nn.Module`` the user already has: no preprocessing (mean 0, std 1), the input size
from ``input_size=`` or from the first images, layers given by name (default: the top-level
children that run)."""

from __future__ import annotations

from torch import nn

from ftlens.models.families.base import Defaults, Family


class ModuleFamily(Family):
    prefix = "module"

    def owns(self, module: nn.Module) -> bool:
        return True

    def defaults(self, module: nn.Module) -> Defaults:
        return Defaults(mean=None, std=None, input_size=None, layers=None)
