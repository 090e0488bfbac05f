"""``torchvision:NAME`` (``torchvision:resnet18``, ``torchvision:vit_b_16``, ...): any model of
``torchvision.models.get_model``; ``pretrained=True`` loads the default weights through the
torchvision API (a download when they are not cached). Keyword arguments go to ``get_model``.

The model is wrapped in :class:`~ftlens.models.families.adapter.FeatureClassifier`: its last
classifier ``Linear`` becomes the ``head``, the rest the ``body`` (state-dict keys ``body.*``,
``head.*``). Defaults: ImageNet mean/std (or the weights' own), 224 px (a ViT: its
``image_size``), layers: the stages (``layer1``..``layer4`` of a ResNet, the children of
``features`` / ``trunk_output``, the blocks of a ViT's ``encoder.layers``).
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from ftlens.errors import ModelError, OfflineError
from ftlens.models.families.adapter import FeatureClassifier, shared_copy, split_last_linear
from ftlens.models.families.base import (
    PRE_LOGITS,
    Built,
    Defaults,
    Family,
    Source,
    fixed_size_error,
)
from ftlens.models.hub import is_network_error

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CLASSIFIERS = ("fc", "heads", "classifier", "head")


class TorchvisionFamily(Family):
    prefix = "torchvision"
    hub = True

    def build(self, name: str, *, pretrained: bool, **kwargs: Any) -> Built:
        import torchvision

        known = torchvision.models.list_models()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5)
            raise ModelError(f"unknown torchvision model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
        weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
        try:
            model = torchvision.models.get_model(name, weights=weights, **kwargs)
        except Exception as exc:
            if pretrained and is_network_error(exc):
                raise OfflineError(
                    f"could not download the torchvision weights of {name} ({type(exc).__name__}); you appear to "
                    "be offline. Use pretrained=False, or put the weights file in $TORCH_HOME/hub/checkpoints"
                ) from exc
            raise
        info = {}
        if weights is not None:
            info["weights"] = str(weights)
        return Built(adapt(model, weights), Source(f"torchvision:{name}", dict(kwargs)), random_init=not pretrained,
                     family=self.prefix, info=info)

    def owns(self, module: nn.Module) -> bool:
        if isinstance(module, FeatureClassifier):
            return getattr(module, "origin", None) == self.prefix
        return type(module).__module__.startswith("torchvision.models")

    def adopt(self, module: nn.Module) -> nn.Module:
        """A user's torchvision model split into body and head: a module tree of its own that
        shares the user's weights (the original's structure is untouched)."""
        if isinstance(module, FeatureClassifier):
            return module
        return adapt(shared_copy(module))

    def defaults(self, module: nn.Module) -> Defaults:
        body = module.body
        names = [n for n, _ in module.named_modules()]
        size = getattr(body, "image_size", None)
        input_size = (3, int(size), int(size)) if size else (3, 224, 224)
        mean, std = getattr(module, "mean", IMAGENET_MEAN), getattr(module, "std", IMAGENET_STD)
        layers = [n for n in names if n.count(".") == 1 and n.startswith("body.layer") and n[10:].isdigit()]
        for container in ("body.encoder.layers", "body.features", "body.trunk_output"):
            if not layers and container in names:
                sub = module.get_submodule(container)
                layers = [f"{container}.{c}" for c, _ in sub.named_children()]
        vit = hasattr(body, "class_token")
        return Defaults(mean=tuple(mean), std=tuple(std), input_size=input_size, layers=tuple(layers) or None,
                        aliases={PRE_LOGITS: "pool"}, prefix_tokens=1 if vit else 0)

    def set_image_size(self, module: nn.Module, hw: tuple[int, int]) -> None:
        size = getattr(module.body, "image_size", None)
        if size is not None and (size, size) != hw:
            raise fixed_size_error(module.body, (size, size), hw)


def adapt(model: nn.Module, weights: Any = None) -> FeatureClassifier:
    """A torchvision classifier as ``FeatureClassifier(body, head=its last Linear)``."""
    for attr in _CLASSIFIERS:
        if hasattr(model, attr):
            body, head = split_last_linear(model, attr)
            if head is not None:
                break
    else:
        raise ModelError(f"cannot find the classifier of torchvision model {type(model).__name__} "
                         f"(looked for {', '.join(_CLASSIFIERS)})")
    wrapped = FeatureClassifier(body, num_features=head.in_features, head=head)
    wrapped.origin = "torchvision"
    if weights is not None:
        try:
            t = weights.transforms()
            wrapped.mean, wrapped.std = tuple(t.mean), tuple(t.std)
        except Exception:  # transforms without mean/std: ImageNet's
            pass
    return wrapped
