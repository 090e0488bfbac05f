"""Content hashes of weights: bytes of any tensor, sha256 of a state dict."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor of any dtype and rank (0-dim included, e.g. BatchNorm's
    ``num_batches_tracked``), in C order; empty tensors give ``b""``."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def weights_fingerprint(module: nn.Module, extra: Any = None) -> str:
    """sha256 hex digest of a module's state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    h.update(type(module).__name__.encode())
    for name, t in module.state_dict().items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(tensor_bytes(t))
    if extra is not None:
        h.update(repr(extra).encode())
    return h.hexdigest()
