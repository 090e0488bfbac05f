"""timm's classifier API around any backbone: ``body`` -> ``pool`` -> ``head``.

Torchvision, Hugging Face and open_clip models are wrapped in :class:`FeatureClassifier` so that
finetuning (which uses ``forward_features`` / ``forward_head`` / ``reset_classifier``) and the
``pre_logits`` pseudo-layer (the ``pool`` module's output) work the same for every family.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ftlens.models.head import LinearHeadMixin
from ftlens.models.trace import first_tensor


class Pool(nn.Module):
    """Body output -> pre-logit features ``(n, d)`` (a module, so that it can be hooked).

    ``pick`` selects from the body's output (a tensor, tuple or ``ModelOutput``)."""

    def __init__(self, pick: str = "tensor") -> None:
        super().__init__()
        self.pick = pick

    def forward(self, out: Any) -> torch.Tensor:
        if self.pick == "cls":  # Hugging Face: CLS of last_hidden_state (after the final norm)
            return out.last_hidden_state[:, 0]
        if self.pick == "pooler":  # Hugging Face CLIP: post-layernorm CLS
            return out.pooler_output
        t = first_tensor(out)
        return t.flatten(1)

    def extra_repr(self) -> str:
        return f"pick={self.pick!r}"


class FeatureClassifier(LinearHeadMixin, nn.Module):
    """``head(pool(body(x)))`` with timm's classifier API.

    Args:
        body: the backbone (``body(x)`` or ``body(**call_kwargs, pixel_values=x)``).
        num_features: width ``d`` of ``pool``'s output.
        head: the classifier (``nn.Linear(d, classes)``) or None for none (``nn.Identity``).
        pool: body output -> ``(n, d)``.
        pixel_kwarg: call ``body(pixel_values=x)`` (Hugging Face) instead of ``body(x)``.
    """

    def __init__(self, body: nn.Module, num_features: int, head: nn.Module | None = None, pool: Pool | None = None,
                 pixel_kwarg: bool = False) -> None:
        super().__init__()
        self.body = body
        self.pool = pool or Pool()
        self.head = head if head is not None else nn.Identity()
        self.num_features = int(num_features)
        self.pixel_kwarg = pixel_kwarg
        self.call_kwargs: dict[str, Any] = {}

    @property
    def num_classes(self) -> int:
        return int(self.head.out_features) if isinstance(self.head, nn.Linear) else 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(pixel_values=x, **self.call_kwargs) if self.pixel_kwarg else self.body(x, **self.call_kwargs)
        return self.pool(out)


def shared_copy(module: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer tensor with ``module``
    (its weights *are* the original's, so training the original changes it) but not the module
    objects, their dicts or hooks: replacing a submodule of the copy leaves the original as it was."""
    clones: dict[int, nn.Module] = {}

    def clone(m: nn.Module) -> nn.Module:
        if id(m) in clones:
            return clones[id(m)]
        new = copy.copy(m)
        for key, value in vars(m).items():
            if isinstance(value, (dict, set)):
                new.__dict__[key] = value.copy()  # _parameters, _buffers, _modules, hook dicts (same type)
        clones[id(m)] = new
        for name, child in m._modules.items():
            new._modules[name] = clone(child) if child is not None else None
        return new

    return clone(module)


def split_last_linear(model: nn.Module, attr: str) -> tuple[nn.Module, nn.Linear | None]:
    """Replace the last ``nn.Linear`` of ``model.<attr>`` (the classifier) by ``nn.Identity`` in
    place; return the model (now ending in pre-logit features) and that Linear."""
    container = getattr(model, attr)
    if isinstance(container, nn.Linear):
        setattr(model, attr, nn.Identity())
        return model, container
    last = None
    for name, sub in container.named_modules():
        if isinstance(sub, nn.Linear):
            last = name
    if last is None:
        return model, None
    parent_name, _, child = last.rpartition(".")
    parent = container.get_submodule(parent_name) if parent_name else container
    linear = getattr(parent, child)
    setattr(parent, child, nn.Identity())
    return model, linear


def first_match(names: list[str], tests: list[Callable[[str], bool]]) -> str | None:
    for test in tests:
        for n in names:
            if test(n):
                return n
    return None
