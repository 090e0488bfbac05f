"""``open_clip:MODEL`` or ``open_clip:MODEL/PRETRAINED_TAG`` (``open_clip:ViT-B-32/laion2b_s34b_b79k``):
the image tower (``model.visual``) of an open_clip model. The tag's weights are loaded with
``pretrained=True`` (a download when not cached). Keyword arguments go to
``open_clip.create_model`` (e.g. ``force_image_size``).

Wrapped in :class:`~ftlens.models.families.adapter.FeatureClassifier` (``body`` = the image
tower, whose output, the projected image embedding, is ``pre_logits``). Layers: the residual
blocks of a ViT tower (``body.transformer.resblocks.*``) or the stages of a ResNet tower.
Needs ``pip install 'ftlens[clip]'``.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from ftlens.errors import ModelError, OfflineError
from ftlens.models.families.adapter import FeatureClassifier
from ftlens.models.families.base import (
    PRE_LOGITS,
    Built,
    Defaults,
    Family,
    Source,
    fixed_size_error,
)
from ftlens.models.hub import hub_online, is_network_error

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class OpenClipFamily(Family):
    prefix = "open_clip"
    hub = True
    package = "open_clip"
    extra = "clip"

    def build(self, name: str, *, pretrained: bool, **kwargs: Any) -> Built:
        open_clip = self.require()
        arch, _, tag = name.partition("/")
        if arch not in open_clip.list_models():
            close = difflib.get_close_matches(arch, open_clip.list_models(), n=5)
            raise ModelError(f"unknown open_clip model {arch!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
        if pretrained and not tag:
            raise ModelError(f"open_clip:{arch} with pretrained=True needs a tag: open_clip:{arch}/TAG "
                             f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(arch)[:5])})")
        if pretrained:
            hub_online()
        try:
            model = open_clip.create_model(arch, pretrained=tag if pretrained else None, **kwargs)
        except Exception as exc:
            if pretrained and is_network_error(exc):
                raise OfflineError(f"could not download open_clip weights {name} ({type(exc).__name__}); you appear "
                                   "to be offline. Use pretrained=False or weights already in the cache") from exc
            raise
        wrapped = adapt(model.visual)
        return Built(wrapped, Source(f"open_clip:{arch}", dict(kwargs)), random_init=not pretrained,
                     family=self.prefix, info={"open_clip": {"model": arch, "pretrained": tag if pretrained else None}})

    def owns(self, module: nn.Module) -> bool:
        if isinstance(module, FeatureClassifier):
            return getattr(module, "origin", None) == self.prefix
        return type(module).__module__.startswith("open_clip.")

    def adopt(self, module: nn.Module) -> nn.Module:
        if isinstance(module, FeatureClassifier):
            return module
        return adapt(getattr(module, "visual", module))  # shares the weights of the image tower

    def defaults(self, module: nn.Module) -> Defaults:
        visual = module.body
        size = visual.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        mean = getattr(visual, "image_mean", None) or _CLIP_MEAN
        std = getattr(visual, "image_std", None) or _CLIP_STD
        names = [n for n, _ in module.named_modules()]
        layers = [n for n in names if n.startswith("body.transformer.resblocks.") and n.count(".") == 3]
        if not layers:
            layers = [n for n in names if n.count(".") == 1 and n.startswith("body.layer") and n[10:].isdigit()]
        return Defaults(mean=tuple(mean), std=tuple(std), input_size=(3, *size), layers=tuple(layers) or None,
                        aliases={PRE_LOGITS: "pool"}, prefix_tokens=1)

    def set_image_size(self, module: nn.Module, hw: tuple[int, int]) -> None:
        size = module.body.image_size
        native = (size, size) if isinstance(size, int) else tuple(size)
        if native != tuple(hw):
            raise fixed_size_error(module.body, native, hw)


def adapt(visual: nn.Module) -> FeatureClassifier:
    transformer = getattr(visual, "transformer", None)
    if transformer is not None and not getattr(transformer, "batch_first", True):
        raise ModelError("this open_clip image tower runs its transformer sequence-first; upgrade open_clip "
                         "(batch-first towers are read directly)")
    wrapped = FeatureClassifier(visual, num_features=int(visual.output_dim))
    wrapped.origin = "open_clip"
    return wrapped
