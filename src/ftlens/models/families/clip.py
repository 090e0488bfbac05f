"""``clip:hf:DIR_OR_NAME`` / ``clip:open_clip:ARCH[:TAG]``: the image tower of an image-text
model as a classifier, with its text tower kept aside for zero-shot heads and FLYP
(:mod:`ftlens.clip` builds both). Layers: the encoder's blocks; ``pre_logits``: the
L2-normalised image embedding (``global_pool``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ftlens.models.families.base import (
    PRE_LOGITS,
    Built,
    Defaults,
    Family,
    Source,
    fixed_size_error,
)


class ClipFamily(Family):
    prefix = "clip"

    def build(self, name: str, *, pretrained: bool, **kwargs: Any) -> Built:
        from ftlens.clip import build_for_models, describe, loads_weights

        module, record = build_for_models(name, **kwargs)
        spec = f"clip:{name}"
        return Built(module, Source(spec, record), random_init=not loads_weights(spec) and "config" not in kwargs,
                     family=self.prefix, name=describe(spec))

    def owns(self, module: nn.Module) -> bool:
        from ftlens.clip import ClipImageClassifier

        return isinstance(module, ClipImageClassifier)

    def defaults(self, module: nn.Module) -> Defaults:
        cfg = module.pretrained_cfg
        names = dict(module.named_modules())
        layers = tuple(d["module"] for d in module.feature_info if d["module"] in names)
        return Defaults(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), input_size=tuple(cfg["input_size"]),
                        layers=layers or None, aliases={PRE_LOGITS: "global_pool"}, prefix_tokens=1)

    def set_image_size(self, module: nn.Module, hw: tuple[int, int]) -> None:
        native = tuple(module.pretrained_cfg["input_size"][1:])
        if native != tuple(hw):
            raise fixed_size_error(module, native, hw)
