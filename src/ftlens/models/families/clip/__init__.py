"""``clip:hf:DIR_OR_NAME`` / ``clip:open_clip:ARCH[/TAG]``: the image tower of an image-text
model as a classifier, with its text tower kept aside for zero-shot heads and FLYP. Layers: the
encoder's blocks; ``pre_logits``: the L2-normalised image embedding (``global_pool``).

The package holds the family's image-text code: :mod:`~ftlens.models.families.clip.towers`
(both towers, the tokenizer, loading; below the wrapper) and
:mod:`~ftlens.models.families.clip.zero_shot` (zero-shot heads and the towers of a loaded
:class:`~ftlens.models.ModelWrapper`; above it). :mod:`ftlens.clip` is their old path.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ftlens.errors import ImageSizeError
from ftlens.models.families.base import (
    PRE_LOGITS,
    Built,
    Defaults,
    Family,
    Source,
    fixed_size_error,
)
from ftlens.models.families.clip.towers import (
    ClipImageClassifier,
    build_for_models,
    describe,
    loads_weights,
)


class ClipFamily(Family):
    prefix = "clip"

    def build(self, name: str, *, pretrained: bool, **kwargs: Any) -> Built:
        module, record = build_for_models(name, **kwargs)
        spec = f"clip:{name}"
        return Built(module, Source(spec, record), random_init=not loads_weights(spec) and "config" not in kwargs,
                     family=self.prefix, name=describe(spec))

    def owns(self, module: nn.Module) -> bool:
        return isinstance(module, ClipImageClassifier)

    def defaults(self, module: nn.Module) -> Defaults:
        cfg = module.pretrained_cfg
        names = dict(module.named_modules())
        layers = tuple(d["module"] for d in module.feature_info if d["module"] in names)
        return Defaults(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), input_size=tuple(cfg["input_size"]),
                        layers=layers or None, aliases={PRE_LOGITS: "global_pool"}, prefix_tokens=1)

    def set_image_size(self, module: nn.Module, hw: tuple[int, int]) -> None:
        """Hugging Face towers take any multiple of the patch size (position embeddings are
        interpolated in the forward); open_clip towers run at their own size only."""
        native = tuple(module.pretrained_cfg["input_size"][1:])
        if native == tuple(hw):
            return
        if getattr(module, "family", "") == "hf":
            patch = int(module.vision_model.config.patch_size)
            if all(int(v) % patch == 0 for v in hw):
                return
            raise ImageSizeError(f"image size {tuple(hw)} is not a multiple of the patch size {patch} of this CLIP "
                                 f"model; use e.g. {patch * max(1, round(hw[0] / patch))}")
        raise fixed_size_error(module, native, hw)
