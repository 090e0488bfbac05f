"""Content hashes of weights: bytes of any tensor, sha256 of a module's weights, and
:class:`WeightDigests`, the per-tensor digests a wrapper keeps current as the weights change.

A module's fingerprint is the sha256 of its parameter and buffer names, dtypes, shapes and
per-tensor sha256 digests. The digests are kept with a *stamp* of each tensor (object, version
counter, storage address, dtype, shape, device) and a *probe* (two float64 reductions of its
values): a tensor whose stamp moved (an optimizer step, ``load_state_dict``, an in-place op) or,
on a full check, whose probe moved (a write through ``.data``, which bypasses the version
counter) is hashed again; the others are not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["WeightDigests", "module_tensors", "tensor_bytes", "tensor_digest", "weights_fingerprint"]


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor of any dtype and rank (0-dim included, e.g. BatchNorm's
    ``num_batches_tracked``), in C order (any memory format); empty tensors give ``b""``."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 hex digest of ``name-free`` tensor content: dtype, shape and bytes."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}".encode())
    h.update(tensor_bytes(t))
    return h.hexdigest()


def module_tensors(modules: dict[str, nn.Module], persistent_only: bool = False
                   ) -> Iterator[tuple[tuple[str, str], torch.Tensor]]:
    """``((module name, attribute), tensor)`` for every parameter and buffer of ``modules``
    (``{name: module}``, as ``named_modules()`` gives them), in that order."""
    for mname, m in modules.items():
        for pname, param in m._parameters.items():
            if param is not None:
                yield (mname, pname), param
        skip = m._non_persistent_buffers_set if persistent_only else ()
        for pname, buf in m._buffers.items():
            if buf is not None and pname not in skip:
                yield (mname, pname), buf


def _stamp(t: torch.Tensor) -> tuple:
    """What changes when a tensor is replaced or written in place (not through ``.data``)."""
    try:
        version = t._version
    except RuntimeError:  # an inference tensor keeps no version counter
        version = None
    return id(t), version, t.data_ptr(), t.dtype, tuple(t.shape), t.device


def _probe(t: torch.Tensor) -> tuple[float, float]:
    """Sum and sum of squares in float64: moves with any real change of the values."""
    with torch.no_grad():
        x = t.detach().reshape(-1)
        if x.dtype == torch.bool:
            x = x.to(torch.uint8)
        s = x.sum(dtype=torch.float64)
        q = x.to(torch.float64).square().sum() if not x.is_complex() else x.abs().to(torch.float64).square().sum()
        return tuple(torch.stack([s, q]).tolist())


class WeightDigests:
    """Per-tensor sha256 digests of a module tree, re-hashed only where a tensor changed.

    :meth:`sync` returns whether any digest changed since the last call; :meth:`adopt` records
    the current stamps without hashing (after ftlens itself moved the tensors to another device
    or memory format, which leaves their values as they were).
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[tuple, tuple[float, float], str]] = {}

    def clear(self) -> None:
        self._entries = {}

    def __bool__(self) -> bool:
        """Whether any digest has been taken."""
        return bool(self._entries)

    def sync(self, modules: dict[str, nn.Module], *, probe: bool = False) -> bool:
        """Bring the digests up to date; ``probe``: also compare each tensor's values by its probe."""
        changed = False
        seen = set()
        for key, t in module_tensors(modules):
            seen.add(key)
            entry = self._entries.get(key)
            stamp = _stamp(t)
            if entry is not None and entry[0] == stamp:
                if not probe:
                    continue
                values = _probe(t)
                if _same(values, entry[1]):
                    continue
            else:
                values = _probe(t)
            digest = tensor_digest(t)
            if entry is None or entry[2] != digest:
                changed = True
            self._entries[key] = (stamp, values, digest)
        for key in [k for k in self._entries if k not in seen]:
            del self._entries[key]
            changed = True
        return changed

    def adopt(self, modules: dict[str, nn.Module]) -> None:
        """Record the current stamps of tensors whose values ftlens knows to be unchanged."""
        for key, t in module_tensors(modules):
            entry = self._entries.get(key)
            if entry is not None:
                self._entries[key] = (_stamp(t), entry[1], entry[2])

    def digest(self, key: tuple[str, str]) -> str:
        return self._entries[key][2]


def _same(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(x == y or (x != x and y != y) for x, y in zip(a, b, strict=True))  # NaN equals NaN here


def combine(type_name: str, named: Iterator[tuple[str, torch.Tensor, str]], extra: Any = None) -> str:
    """sha256 over ``(name, dtype, shape, digest)`` of each tensor, the module type and ``extra``."""
    h = hashlib.sha256(type_name.encode())
    for name, t, digest in named:
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|{digest}".encode())
    if extra is not None:
        h.update(repr(extra).encode())
    return h.hexdigest()


def weights_fingerprint(module: nn.Module, extra: Any = None) -> str:
    """sha256 hex digest of a module's weights: names, dtypes, shapes and bytes of its
    parameters and persistent buffers (and ``repr(extra)``); equal to a
    :class:`~ftlens.models.ModelWrapper`'s fingerprint of the same module and ``extra``."""
    modules = dict(module.named_modules())
    named = ((_joined(key), t, tensor_digest(t)) for key, t in module_tensors(modules, persistent_only=True))
    return combine(type(module).__name__, named, extra)


def _joined(key: tuple[str, str]) -> str:
    return f"{key[0]}.{key[1]}" if key[0] else key[1]
