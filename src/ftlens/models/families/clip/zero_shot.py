"""Zero-shot heads of image-text (CLIP-style) models (ALGORITHMS.md §7, the WiSE-FT starting
point), and both towers of a loaded ``clip:`` model (:func:`image_text_of`).

For class ``c`` and templates ``t_1..t_T``, ``w_c = s * normalize(mean_t normalize(text(t(c))))``
with ``s = exp(logit_scale)`` (capped at 100 as in CLIP) and bias 0; logits =
``w @ normalize(image embedding)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ftlens.errors import FtlensError, NotImageTextError
from ftlens.models.checkpoint import TASK_HEAD_PREFIX
from ftlens.models.families.clip.towers import (
    _TEXT_ATTR,
    DEFAULT_TEMPLATES,
    PREFIX,
    TEXT_KEY,
    ClipImageClassifier,
    ImageText,
    TextTower,
    Tokenizer,
    is_clip_spec,
    load_image_text,
    load_tokenizer,
)

if TYPE_CHECKING:
    from ftlens.models.wrapper import ModelWrapper


def image_text_of(wrapper: ModelWrapper) -> ImageText:
    """Both towers for a loaded :class:`ModelWrapper` of a ``clip:`` model.

    The image tower is ``wrapper.module`` itself (its current weights). The text tower comes
    from the checkpoint's ``task_head.text.*`` tensors when it carries them (a FLYP run); else
    it is the one loaded with the image tower (a ``clip:`` spec), or the origin's (reloaded).
    """
    check_image_text(wrapper)
    prefix = TASK_HEAD_PREFIX + TEXT_KEY
    text_state = {k[len(prefix):]: v for k, v in wrapper.extra_state.items() if k.startswith(prefix)}
    config = wrapper.source.kwargs.get("config")
    born_with = wrapper.module.__dict__.get(_TEXT_ATTR)
    if born_with is not None and not text_state:  # loaded from its origin: the text tower that came with it
        pair = ImageText(wrapper.module, born_with, config, wrapper.mean, wrapper.std, wrapper.input_size,
                         wrapper.source.spec[len(PREFIX):])
        return pair
    pair = load_image_text(wrapper.source.spec, config=config if text_state else None)
    if text_state:
        pair.text.load_state_dict(text_state, strict=True)
    pair.image = wrapper.module
    pair.mean, pair.std, pair.input_size = wrapper.mean, wrapper.std, wrapper.input_size
    return pair


def check_image_text(wrapper: ModelWrapper) -> None:
    """:class:`NotImageTextError` unless ``wrapper`` is the image tower of a ``clip:`` model."""
    if not isinstance(wrapper.module, ClipImageClassifier) or not is_clip_spec(wrapper.source.spec):
        raise NotImageTextError(
            f"{wrapper.name} is not an image-text model; zero-shot heads and FLYP need a CLIP model loaded as "
            "clip:hf:DIR or clip:open_clip:ARCH[/TAG] (or a checkpoint of one)"
        )


def class_prompts(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
    """``[t(c) for c in classes for t in templates]`` (class-major); ``_`` in names becomes a space."""
    out = []
    for c in classes:
        name = str(c).replace("_", " ")
        for t in templates:
            if "{}" not in t and "{c}" not in t:
                raise FtlensError(f"prompt template {t!r} has no place for the class name; write it as 'a photo of a {{}}.'")
            out.append(t.replace("{c}", "{}").format(name))
    return out


def class_embeddings(text: TextTower, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     num_templates: int) -> torch.Tensor:
    """Unit class embeddings ``(k, d)`` from class-major prompt tokens ``(k*T, L)``:
    ``normalize(mean over templates of normalize(text(prompt)))``. Differentiable."""
    emb = F.normalize(text(input_ids, attention_mask).float(), dim=-1)
    emb = emb.view(-1, int(num_templates), emb.shape[-1]).mean(1)
    return F.normalize(emb, dim=-1)


def zero_shot_weights(pair: ImageText, classes: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                      tokenizer: Tokenizer | None = None) -> torch.Tensor:
    """Zero-shot head weights ``(k, d)`` float32: ``scale * unit class embeddings``."""
    if not classes:
        raise FtlensError("a zero-shot head needs the class names of the dataset")
    tokenizer = tokenizer or load_tokenizer(pair.origin, pair.config)
    ids, mask = tokenizer(class_prompts(classes, templates))
    device = next(pair.text.parameters()).device
    was_training = pair.text.training
    pair.text.eval()
    with torch.no_grad():
        emb = class_embeddings(pair.text, ids.to(device), None if mask is None else mask.to(device), len(templates))
        out = (pair.text.scale().float() * emb).cpu()
    pair.text.train(was_training)
    return out


def install_head(module: nn.Module, weights: torch.Tensor) -> None:
    """Copy zero-shot weights ``(k, d)`` into the classifier ``Linear(d, k)``; bias 0."""
    head = module.get_classifier() if hasattr(module, "get_classifier") else None
    if not isinstance(head, nn.Linear) or tuple(head.weight.shape) != tuple(weights.shape):
        shape = tuple(head.weight.shape) if isinstance(head, nn.Linear) else None
        raise FtlensError(f"zero-shot weights {tuple(weights.shape)} do not fit the head {shape}; reset the "
                          f"classifier to {weights.shape[0]} classes first")
    with torch.no_grad():
        head.weight.copy_(weights.to(head.weight))
        if head.bias is not None:
            head.bias.zero_()


def zero_shot_head(wrapper: ModelWrapper, classes: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> None:
    """Give a ``clip:`` model a zero-shot classification head for ``classes`` (in place).

    ``wrapper`` (a :class:`ModelWrapper`) then classifies with ``logits = w @ normalize(image
    embedding)``; its recorded architecture gets ``num_classes = len(classes)``.
    """

    pair = image_text_of(wrapper)
    weights = zero_shot_weights(pair, classes, templates)
    module = wrapper.module
    if module.num_classes != len(classes):
        module.reset_classifier(len(classes))
        module.head.to(wrapper.device)
        wrapper.refresh_modules(fingerprint=False)  # the wrapper's view of the new head, traced again
        wrapper.source = dataclasses.replace(wrapper.source,
                                             kwargs={**wrapper.source.kwargs, "num_classes": len(classes)})
    install_head(module, weights)
    wrapper.refresh_fingerprint()
