"""The execution trace of a model: which modules run, in which order, with which output shapes.

Taken once per model and input size from one forward of a single image (:func:`trace_module`)
and kept as a frozen :class:`ExecutionTrace`; every layer lookup, sort and layer fingerprint
reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ExecutionTrace:
    """What one forward of a ``(1, *input_size)`` image did.

    Attributes:
        input_size: ``(C, H, W)`` traced.
        order: modules that returned a tensor, in the order they first finished.
        shapes: per-example output shape of each module in ``order`` (first call).
        calls: how often each module in ``order`` ran (more than once: not capturable).
        in_shapes: per-example shape of each module's first tensor input (first call).
        starts, ends: event counter when each module first started / finished (a module
            that starts after layer L has finished cannot change L's output).
    """

    input_size: tuple[int, ...]
    order: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]]
    calls: Mapping[str, int]
    starts: Mapping[str, int]
    ends: Mapping[str, int]
    in_shapes: Mapping[str, tuple[int, ...]]

    def position(self) -> dict[str, int]:
        """``{module name: index in order}``."""
        return {name: i for i, name in enumerate(self.order)}

    def __reduce__(self):  # mapping proxies do not pickle; rebuild them from plain dicts
        return (_make_trace, (self.input_size, self.order, dict(self.shapes), dict(self.calls), dict(self.starts),
                              dict(self.ends), dict(self.in_shapes)))


def _make_trace(input_size, order, shapes, calls, starts, ends, in_shapes) -> ExecutionTrace:
    return ExecutionTrace(input_size=tuple(input_size), order=tuple(order), shapes=MappingProxyType(dict(shapes)),
                          calls=MappingProxyType(dict(calls)), starts=MappingProxyType(dict(starts)),
                          ends=MappingProxyType(dict(ends)), in_shapes=MappingProxyType(dict(in_shapes)))


def first_tensor(out: Any) -> torch.Tensor | None:
    """The first tensor in a module output (a tensor, tuple/list, dict or ``ModelOutput``)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    if isinstance(out, Mapping) or hasattr(out, "values"):
        for o in out.values():
            if isinstance(o, torch.Tensor):
                return o
    return None


def trace_module(module: nn.Module, x: torch.Tensor) -> ExecutionTrace:
    """Run ``module(x)`` once (no gradients), noting every named submodule's calls (global hooks)."""
    modules = {n: m for n, m in module.named_modules() if n}
    order: list[str] = []
    calls: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    in_shapes: dict[str, tuple[int, ...]] = {}
    events = [0]

    names = {id(m): n for n, m in modules.items()}  # named_modules() lists each module object once

    def pre_hook(mod, _inp):
        name = names.get(id(mod))
        if name is not None:
            events[0] += 1
            starts.setdefault(name, events[0])

    def hook(mod, inp, out):
        name = names.get(id(mod))
        if name is None:
            return
        events[0] += 1
        ends.setdefault(name, events[0])
        i = first_tensor(inp)
        if i is not None and name not in in_shapes:
            in_shapes[name] = tuple(i.shape[1:])
        t = first_tensor(out)
        if t is None:
            return
        calls[name] = calls.get(name, 0) + 1
        if name not in shapes:
            order.append(name)
            shapes[name] = tuple(t.shape[1:])

    # two global hooks (module.register_module_forward_*_hook) instead of two per module: the same
    # events, without a handle per module (a ResNet-34 has some 150 modules)
    from torch.nn.modules.module import (
        register_module_forward_hook,
        register_module_forward_pre_hook,
    )

    handles = [register_module_forward_pre_hook(pre_hook), register_module_forward_hook(hook)]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return _make_trace(tuple(int(s) for s in x.shape[1:]), order, shapes, calls, starts, ends, in_shapes)
