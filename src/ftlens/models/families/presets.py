"""``ftlens:NAME``: small CPU-friendly ViTs (:data:`PRESETS`, random weights) and real pretrained
weights that ship inside a package (:data:`ftlens.weights.WEIGHTS`, e.g.
``ftlens:efficientnet-lite0-in1k``). Both are timm models, described by the timm family; the
language transformers of :data:`ftlens.weights.TEXT_WEIGHTS` (``ftlens:minilm-l6``) by the text family."""

from __future__ import annotations

import difflib
from typing import Any

from ftlens.errors import ModelError
from ftlens.models.families.base import Built, Family, Source

#: Small ViT presets addressed as ``ftlens:NAME``: timm ``VisionTransformer`` kwargs.
PRESETS: dict[str, dict[str, Any]] = {
    # 32 px, patch 4 -> 8x8 grid + CLS = 65 tokens x 64 = 4,160 features per layer.
    "vit-tiny-32": dict(img_size=32, patch_size=4, depth=12, embed_dim=64, num_heads=4, mlp_ratio=2.0),
    # 16 px, patch 4 -> 4x4 grid + CLS = 17 tokens x 48 = 816 features per layer (the demo).
    "vit-tiny-16": dict(img_size=16, patch_size=4, depth=12, embed_dim=48, num_heads=3, mlp_ratio=2.0),
    # 16 px, 4 blocks, width 32: for tests.
    "vit-micro": dict(img_size=16, patch_size=4, depth=4, embed_dim=32, num_heads=2, mlp_ratio=2.0),
}
_PRESET_BASE = "vit_tiny_patch16_224"  # only the class and its defaults; every size is overridden


class PresetFamily(Family):
    prefix = "ftlens"

    def build(self, name: str, *, pretrained: bool, **kwargs: Any) -> Built:
        import timm

        from ftlens.weights import TEXT_WEIGHTS, WEIGHTS, load_weights

        if name in TEXT_WEIGHTS:  # a language transformer with its real weights: the text family
            from ftlens.models.families.text import make_classifier, record

            weights = TEXT_WEIGHTS[name]
            module = weights.build(make_classifier, **kwargs)
            return Built(module, Source(f"text:{name}", record(module)), random_init=False, family="text",
                         info={"weights": weights.SOURCE})
        if name in WEIGHTS:  # real weights: rebuilt as their timm architecture
            module, info = load_weights(name, **kwargs)
            module.pretrained_cfg = {**module.pretrained_cfg, "mean": info.mean, "std": info.std,
                                     "input_size": info.input_size}
            return Built(module, Source(info.arch, dict(kwargs)), random_init=False, family="timm",
                         info={"weights": info.source})
        if name not in PRESETS:
            known = list(PRESETS) + list(WEIGHTS) + list(TEXT_WEIGHTS)
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.3)
            raise ModelError(
                f"unknown ftlens preset {name!r}; presets: {', '.join(known)}"
                + (f" (did you mean {close[0]}?)" if close else "")
            )
        if pretrained:
            raise ModelError(
                f"ftlens:{name} has no published weights; pretrain it (`ftlens finetune --task "
                "classification --data natural-patches`) and load the run's checkpoint"
            )
        params = {**PRESETS[name], "num_classes": 0, **kwargs}
        module = timm.create_model(_PRESET_BASE, pretrained=False, **params)
        return Built(module, Source(f"ftlens:{name}", {"num_classes": 0, **kwargs}), random_init=True, family="timm")
