"""Real pretrained weights that ship inside installable packages (no download at run time).

Each entry of :data:`WEIGHTS` is addressed as ``ftlens:NAME`` by :func:`ftlens.models.load_model`
and maps to a function returning ``(nn.Module, WeightsInfo)``: the timm architecture with the
weights loaded, and what the weights need (input size, mean, std, classes, where they come from).
Adding a set of weights is one module here and one line in :data:`WEIGHTS` (language
transformers: :data:`TEXT_WEIGHTS`, e.g. ``ftlens:minilm-l6``).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from torch import nn

from . import minilm_l6
from .base import WeightsInfo, WeightsPackageError
from .efficientnet_lite0 import efficientnet_lite0_in1k

__all__ = ["TEXT_WEIGHTS", "WEIGHTS", "WeightsInfo", "WeightsPackageError", "load_weights"]

#: ``ftlens:NAME`` -> builder of ``(module, info)``.
WEIGHTS: dict[str, Callable[..., tuple[nn.Module, WeightsInfo]]] = {
    "efficientnet-lite0-in1k": efficientnet_lite0_in1k,
}

#: ``ftlens:NAME`` -> a module with ``build(pooling, max_length, num_classes)`` (a text model with
#: its real weights), ``tokenizer()``, ``SOURCE`` and ``LICENSE`` (:mod:`ftlens.models.families.text`).
TEXT_WEIGHTS: dict[str, ModuleType] = {
    minilm_l6.NAME: minilm_l6,
}


def load_weights(name: str, **timm_kwargs) -> tuple[nn.Module, WeightsInfo]:
    """Build ``ftlens:NAME``'s architecture with its real weights (see :data:`WEIGHTS`)."""
    return WEIGHTS[name](**timm_kwargs)
