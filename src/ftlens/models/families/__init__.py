"""Model families: one module each, one line each in :data:`FAMILIES`.

A spec ``"PREFIX:NAME"`` is built by ``FAMILIES[PREFIX]``; a module object is described by the
first family in :data:`FAMILIES` that :meth:`~ftlens.models.families.base.Family.owns` it (families
that wrap others come first; the plain ``module`` family, which owns everything, last).
"""

from __future__ import annotations

from torch import nn

from ftlens.errors import ModelError
from ftlens.models.families.base import Built, Defaults, Family, Source
from ftlens.models.families.clip import ClipFamily
from ftlens.models.families.hf import HFFamily
from ftlens.models.families.module import ModuleFamily
from ftlens.models.families.open_clip import OpenClipFamily
from ftlens.models.families.peft import PeftFamily
from ftlens.models.families.presets import PRESETS, PresetFamily
from ftlens.models.families.text import TextFamily
from ftlens.models.families.timm import TimmFamily
from ftlens.models.families.torchvision import TorchvisionFamily

__all__ = ["FAMILIES", "PRESETS", "Built", "Defaults", "Family", "Source", "family_named", "family_of",
           "family_prefix"]

#: spec prefix -> family, in detection order (a wrapper before the family it wraps; ``module`` last).
FAMILIES: dict[str, Family] = {
    "peft": PeftFamily(),
    "clip": ClipFamily(),
    "ftlens": PresetFamily(),
    "timm": TimmFamily(),
    "torchvision": TorchvisionFamily(),
    "hf": HFFamily(),
    "open_clip": OpenClipFamily(),
    "text": TextFamily(),
    "module": ModuleFamily(),
}


def family_named(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ModelError(f"unknown model family {name!r}; families: {', '.join(FAMILIES)}") from None


def family_prefix(spec: str) -> str | None:
    """``"timm"`` for ``"timm:NAME"``; None when ``spec`` names no family (a path)."""
    prefix, sep, _ = spec.partition(":")
    return prefix if sep and prefix in FAMILIES and prefix != "module" else None


def family_of(module: nn.Module) -> Family:
    for family in FAMILIES.values():  # ``module`` owns everything: it answers only when no other does
        if family.prefix != "module" and family.owns(module):
            return family
    return FAMILIES["module"]
