"""How layers are named for people: a name plus a 1-based number, the same in every table,
figure and command (``blocks.0`` is layer 1, whatever subset of layers was analysed)."""

from __future__ import annotations

import re

_BLOCK = re.compile(r"^(?:blocks|layers|layer|encoder\.layer|encoder\.layers)\.(\d+)$")


def layer_number(layer: str, position: int | None = None) -> int | None:
    """1-based number of ``layer``: ``blocks.N`` -> ``N + 1``; else ``position`` (1-based) or None."""
    m = _BLOCK.match(layer)
    if m:
        return int(m.group(1)) + 1
    return position


def layer_label(layer: str) -> str:
    """``blocks.3`` -> ``"4"``; names without a block index are returned unchanged."""
    n = layer_number(layer)
    return str(n) if n is not None else layer


def layer_title(layer: str, position: int | None = None) -> str:
    """``"4 (blocks.3)"``: number and name, as tables show a layer (the name alone without a number)."""
    n = layer_number(layer, position)
    return f"{n} ({layer})" if n is not None and str(n) != layer else layer


def layer_numbers(layers: list[str]) -> list[int]:
    """The 1-based numbers of ``layers`` (in execution order): ``blocks.N`` -> ``N + 1``, any other
    name the number after the previous layer's (``pre_logits`` after ``blocks.11`` is 13)."""
    out: list[int] = []
    for name in layers:
        n = layer_number(name)
        out.append(n if n is not None else (out[-1] + 1 if out else 1))
    return out
