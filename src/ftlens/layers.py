"""How layers are numbered for people: a name plus a number (1-based; a text model's input
embeddings 0), the same in every table,
figure and command, computed here only.

The rule (one for every family; a subset of layers keeps its numbers):

0. ``embeddings``, a text model's input embeddings (the pseudo-layer of
   :mod:`ftlens.models.families.text`), is 0: Hugging Face's hidden state 0, before block 1.
1. An element of a block list is numbered by its index in that list, plus one:
   ``blocks.N`` (timm ViT, EfficientNet), ``layers.N`` (Swin, HF), ``encoder.layer.N`` (HF ViT),
   ``transformer.resblocks.N`` (open_clip), ``stages.N`` (ConvNeXt), ``features.N``
   (torchvision), ``h.N`` (GPT-2) -> ``N + 1``, under any prefix (``body.``, ``vit.``), when not itself inside
   another block list (``stages.0.blocks.1`` is not layer 2).
2. Any other layer of the model's full default layer list (``ModelWrapper.default_layers``,
   whatever subset was asked for): its 1-based position there (ResNet ``act1, layer1..layer4``
   are 1..5; a plain module's top-level children are 1, 2, ...).
3. A module inside a numbered layer has that layer's number (``blocks.3.attn`` is 4).
4. Anything else (``pre_logits``, ``patch_embed``) is numbered one after the model's layer that
   runs before it (``pre_logits`` of a 12-block ViT is 13; 1 when none does).

Without a model (names read back from a table), rules 0, 1 and 3 apply; rule 4 then counts from the
previous name of the list.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ftlens.errors import LayerError

__all__ = ["BLOCK_LISTS", "layer_label", "layer_number", "layer_numbers", "layer_title"]

#: names of the module lists whose elements are a model's layers (``<list>.N`` is layer N + 1)
BLOCK_LISTS = ("blocks", "layers", "layer", "resblocks", "stages", "features", "h")
#: rule 0: a text model's input embeddings
EMBEDDINGS = "embeddings"
_ELEMENT = re.compile(rf"(?:^|\.)(?:{'|'.join(BLOCK_LISTS)})\.(\d+)(?=\.|$)")


def _listed(layer: str) -> int | None:
    """Rule 1: ``N + 1`` when ``layer`` is an element ``<list>.N`` of the outermost block list."""
    if layer == EMBEDDINGS:  # rule 0
        return 0
    m = _ELEMENT.search(layer)
    return int(m.group(1)) + 1 if m is not None and m.end() == len(layer) else None


def _enclosing(layer: str, numbered: dict[str, int]) -> int | None:
    """Rule 3: the number of the nearest numbered ancestor of ``layer`` (``blocks.3`` for ``blocks.3.attn``)."""
    parts = layer.split(".")
    for k in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:k])
        n = numbered.get(parent)
        if n is None and (element := _ELEMENT.search(parent)) is not None and element.end() == len(parent):
            n = _listed(parent)
        if n is not None:
            return n
    return None


def _model_numbers(model: Any) -> dict[str, int]:
    """Rules 1 and 2 over the model's full default layer list: ``{name: number}``."""
    try:
        defaults = list(model.default_layers)
    except (AttributeError, LayerError):  # a plain module without default layers: the ones it was given
        defaults = list(model.layers)
    return {name: _or(_listed(name), i) for i, name in enumerate(defaults, start=1)}


def _or(n: int | None, other: int | None) -> int | None:
    return n if n is not None else other


def layer_number(layer: str, model: Any = None) -> int | None:
    """1-based number of ``layer`` in ``model`` (see the module docstring); without a model,
    None for a name that does not carry its number (``pre_logits``, ResNet's ``layer2``)."""
    if model is not None:
        return layer_numbers([layer], model)[0]
    return _or(_listed(layer), _enclosing(layer, {}))


def layer_numbers(layers: Sequence[str], model: Any = None) -> list[int]:
    """The 1-based numbers of ``layers`` (execution order) in ``model``: its true positions,
    also for a subset (``blocks.1, blocks.3`` are 2 and 4). Without a model, names are numbered
    by rules 1 and 3 and any other name as the one after the previous name's number."""
    out: list[int] = []
    if model is None:
        for name in layers:
            n = layer_number(name)
            out.append(n if n is not None else (out[-1] + 1 if out else 1))
        return out
    numbered = _model_numbers(model)
    order = list(numbered)
    for name in layers:
        n = _or(_or(_listed(name), numbered.get(name)), _enclosing(name, numbered))
        if n is None:  # rule 4: after the last model layer that runs before it
            ranked = model.resolve_layers(order + [name])
            before = ranked[:ranked.index(name)]
            n = (numbered[before[-1]] if before else 0) + 1
        out.append(n)
    return out


def layer_label(layer: str) -> str:
    """``blocks.3`` -> ``"4"``; names without a number of their own are returned unchanged."""
    n = layer_number(layer)
    return str(n) if n is not None else layer


def layer_title(layer: str, number: int | None = None) -> str:
    """``"4 (blocks.3)"``: number and name, as tables show a layer (the name alone without a number)."""
    n = number if number is not None else layer_number(layer)
    return f"{n} ({layer})" if n is not None and str(n) != layer else layer
