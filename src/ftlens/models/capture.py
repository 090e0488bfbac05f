"""Reading layers: forward hooks installed for one forward, and how tokens / feature maps
become one feature vector per image.

Token handling is a recorded choice of the wrapper (``tokens=``):

- ``"all"`` (default, the paper's): every token of a ``(n, T, d)`` output, CLS included, or
  every position of a feature map, flattened to ``(n, T*d)`` / ``(n, C*H*W)``; never averaged;
- ``"cls"``: the first token ``(n, d)`` (token outputs only; a CNN feature map has no CLS);
- ``"mean"``: the mean over the patch tokens (prefix tokens such as CLS left out) ``(n, d)``,
  or over the spatial positions of a feature map ``(n, C)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ftlens.errors import LayerError
from ftlens.models.trace import first_tensor

TOKEN_MODES = ("all", "cls", "mean")


class _StopForward(Exception):
    """Raised from a hook once the deepest requested layer has produced its output."""


def check_token_mode(mode: str) -> str:
    mode = str(mode).lower()
    if mode not in TOKEN_MODES:
        raise LayerError(f"tokens must be one of {', '.join(TOKEN_MODES)}, got {mode!r}")
    return mode


def reduce_output(t: torch.Tensor, mode: str, *, layout: str = "nchw", prefix_tokens: int = 1,
                  layer: str = "") -> torch.Tensor:
    """One layer output ``(n, ...)`` -> ``(n, features)`` by token mode (see the module docstring).

    ``layout`` says where the channels of a 4-D output are (``"nchw"`` or ``"nhwc"``, timm Swin);
    ``prefix_tokens`` how many tokens precede the patch tokens (CLS, registers).
    """
    n = t.shape[0]
    if mode == "all" or t.dim() <= 2:
        return t.reshape(n, -1)
    if t.dim() == 3:
        if mode == "cls":
            if prefix_tokens < 1:
                raise LayerError(f"layer {layer!r} has no CLS token; use tokens='mean' or 'all'")
            return t[:, 0]
        patches = t[:, prefix_tokens:] if t.shape[1] > prefix_tokens else t
        return patches.mean(1)
    if t.dim() == 4:
        if mode == "cls":
            raise LayerError(
                f"layer {layer!r} outputs a feature map {tuple(t.shape[1:])}, which has no CLS token; "
                "use tokens='mean' (spatial mean) or 'all'"
            )
        return t.mean((2, 3) if layout == "nchw" else (1, 2))
    return t.reshape(n, -1)


def capture(
    module: nn.Module,
    x: torch.Tensor,
    targets: Mapping[str, tuple[nn.Module, bool]],
    transform: Callable[[str, torch.Tensor], torch.Tensor],
    *,
    deepest: str,
    clone: bool = True,
) -> dict[str, torch.Tensor]:
    """``module(x)`` with a forward hook on each target; ``{layer: transform(layer, output)}``.

    ``targets`` maps a layer to ``(module, read_input)``: with ``read_input`` the module's first
    tensor input is read instead of its output (e.g. what a classifier receives).
    The hooks are removed in ``finally``; the forward stops right after ``deepest`` has run.
    """
    captured: dict[str, torch.Tensor] = {}

    def make_hook(layer: str, read_input: bool):
        def hook(_mod, inp, out):
            t = first_tensor(inp if read_input else out)
            if t is None:
                return
            t = transform(layer, t)
            captured[layer] = t.clone() if clone else t
            if layer == deepest:
                raise _StopForward

        return hook

    handles = [m.register_forward_hook(make_hook(layer, read_input)) for layer, (m, read_input) in targets.items()]
    try:
        module(x)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured
