"""``timm:NAME``: every timm architecture (ViT/DeiT, Swin, ConvNeXt, ResNet, EfficientNet, RegNet,
MobileNet, ...). Keyword arguments go to :func:`timm.create_model`.

Defaults: mean, std and input size from ``timm.data.resolve_model_data_config``; layers: a ViT's
blocks, otherwise the modules of ``feature_info`` (the stages / block groups timm itself exposes
as feature maps); ``pre_logits``: a ViT's CLS after the final norm (``head_drop``) or a CNN's
pooled features (``global_pool``).
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from ftlens.errors import ImageSizeError, ModelError, OfflineError
from ftlens.models.families.base import (
    INPUT_OF,
    PRE_LOGITS,
    Built,
    Defaults,
    Family,
    Source,
    fixed_size_error,
)
from ftlens.models.hub import hub_online, is_network_error


class TimmFamily(Family):
    prefix = "timm"
    hub = True

    def build(self, name: str, *, pretrained: bool, **kwargs: Any) -> Built:
        import timm

        known = timm.list_models()
        if name not in known and name.split(".")[0] not in known:
            close = difflib.get_close_matches(name, known, n=5)
            raise ModelError(f"unknown timm model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
        hint = (
            "Alternatives: pretrained=False (random init), a local checkpoint (load_model('weights.safetensors', "
            f"arch='timm:{name}')), or the weights in the Hugging Face cache (they load offline)."
        )
        online = hub_online() if pretrained else True  # offline: the hub client goes cache-only (no retries)
        try:
            module = timm.create_model(name, pretrained=pretrained, **kwargs)
        except Exception as exc:  # network errors come in many types (OSError, HTTP errors, ...)
            if pretrained and (not online or is_network_error(exc)):
                why = ("the model hub cannot be reached and they are not in the local cache" if not online else
                       f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                raise OfflineError(
                    f"could not download pretrained weights for timm:{name} ({why}). You appear to be offline. {hint}"
                ) from exc
            if isinstance(exc, TypeError):
                raise ModelError(f"timm:{name} does not take these arguments {sorted(kwargs)} ({exc})") from exc
            raise
        return Built(module, Source(f"timm:{name}", dict(kwargs)), random_init=not pretrained, family=self.prefix)

    def owns(self, module: nn.Module) -> bool:
        return getattr(module, "pretrained_cfg", None) is not None

    def defaults(self, module: nn.Module) -> Defaults:
        import timm

        cfg = timm.data.resolve_model_data_config(module)
        names = dict(module.named_modules())
        input_size = tuple(cfg["input_size"])
        pe = getattr(module, "patch_embed", None)
        if pe is not None and getattr(pe, "img_size", None) is not None:
            input_size = (getattr(getattr(pe, "proj", None), "in_channels", input_size[0]), *pe.img_size)
        vit = "blocks" in names and "patch_embed" in names and isinstance(names["blocks"], nn.Sequential)
        layers: tuple[str, ...] | None = None
        if vit:
            layers = tuple(f"blocks.{i}" for i in range(len(names["blocks"])))
        else:
            info = getattr(module, "feature_info", None)
            try:
                mods = [d["module"] for d in info] if info is not None else []
            except (TypeError, KeyError):
                mods = []
            mods = [m.replace("_", ".") if m not in names and m.replace("_", ".") in names else m for m in mods]
            layers = tuple(m for m in mods if m in names) or None
        aliases = {}
        if "head_drop" in names and "blocks" in names:  # ViT: CLS after the final norm
            aliases[PRE_LOGITS] = "head_drop"
        elif hasattr(module, "get_classifier"):  # what the classifier receives (pooled, normed)
            head = module.get_classifier()
            name = next((n for n, m in names.items() if m is head and n), None)
            if name is not None:
                aliases[PRE_LOGITS] = INPUT_OF + name
        layout = "nhwc" if str(getattr(module, "output_fmt", "NCHW")).upper() == "NHWC" else "nchw"
        return Defaults(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), input_size=input_size, layers=layers,
                        aliases=aliases, layout=layout, prefix_tokens=int(getattr(module, "num_prefix_tokens", 0)))

    def resizes_in_place(self, module: nn.Module, hw: tuple[int, int]) -> bool:
        current = getattr(getattr(module, "patch_embed", None), "img_size", None)
        return current is not None and tuple(current) != tuple(hw)

    def set_image_size(self, module: nn.Module, hw: tuple[int, int]) -> None:
        """Fixed-resolution models (ViT, Swin, ...) are resized with timm's ``set_input_size``
        (position embeddings resampled); convolutional models take any size."""
        pe = getattr(module, "patch_embed", None)
        current = getattr(pe, "img_size", None)
        if current is None or tuple(current) == hw:
            return
        if not hasattr(module, "set_input_size"):
            raise fixed_size_error(module, current, hw)
        try:
            module.set_input_size(img_size=hw)
        except Exception as exc:
            raise ImageSizeError(
                f"{type(module).__name__} cannot take {hw} images ({exc}); pass an image_size (--image-size) that "
                "is a multiple of its patch size (and, for windowed models such as Swin, of patch size x window size)"
            ) from exc
