"""Start points ``X'_0`` of an inversion: ``noise`` N(0, 1), ``uniform`` U(0, 1) or ``mixed``.

The start of image ``i`` depends only on ``(seed, i)`` (its own generator; for ``mixed``, a
seeded derangement of the set), never on the batch, the layer or the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ftlens.errors import ConfigError

__all__ = ["STARTS", "start_images"]

#: Accepted values of ``start``.
STARTS = ("noise", "mixed", "uniform")


def _image_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator whose stream depends only on ``(seed, index)``."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def _derangement(n: int, seed: int) -> torch.Tensor:
    """``source[i]``: the image image ``i`` starts from; one seeded cycle, so ``source[i] != i``."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), 2**31 - 1]).generate_state(1)[0]))
    order = torch.randperm(n, generator=g)
    source = torch.empty(n, dtype=torch.long)
    source[order] = order.roll(-1)
    return source


def start_images(
    images: torch.Tensor, start: str, seed: int, indices: Sequence[int] | None = None
) -> torch.Tensor:
    """Start points ``X'_0`` for ``images[indices]`` (all images by default), float32 CPU.

    ``noise``: N(0, 1) (not clamped); ``uniform``: U(0, 1); ``mixed``: image ``source[i]`` of
    the whole set ``images`` (a seeded derangement). The start of image ``i`` depends only on
    ``(seed, i)`` (and, for ``mixed``, on the set), not on which batch it is computed in.
    """
    n = images.shape[0]
    idx = list(range(n)) if indices is None else [int(i) for i in indices]
    shape = tuple(images.shape[1:])
    if start == "mixed":
        if n < 2:
            raise ConfigError("start='mixed' needs at least 2 images (each starts from another one)")
        source = _derangement(n, seed)
        return images[source[idx]].detach().to("cpu", torch.float32).clone()
    out = torch.empty((len(idx), *shape), dtype=torch.float32)
    for k, i in enumerate(idx):
        g = _image_generator(seed, i)
        if start == "noise":
            out[k] = torch.randn(shape, generator=g)
        elif start == "uniform":
            out[k] = torch.rand(shape, generator=g)
        else:
            raise ConfigError(f"start must be one of {STARTS}, got {start!r}")
    return out


#: Noise/uniform start batches of the most recent ``(start, seed, image shape)``: ``{"group": key,
#: (lo, hi): tensor}``. Starts depend only on the seed and the image index, so every layer and
#: model inverted on the same seed reuses them (a compare inverts 2 L layers per seed; drawing
#: 500 ViT-B starts on the CPU takes ~0.4 s, which a GPU would otherwise wait for each time).
_START_MEMO: dict[Any, Any] = {}


def _batch_starts(images: torch.Tensor, start: str, seed: int, lo: int, hi: int) -> torch.Tensor:
    """``start_images(images, start, seed, range(lo, hi))``, memoised for ``noise``/``uniform``."""
    if start == "mixed":  # depends on the images themselves; cheap (an index)
        return start_images(images, start, seed, range(lo, hi))
    group = (start, int(seed), tuple(images.shape[1:]))
    if _START_MEMO.get("group") != group:
        _START_MEMO.clear()
        _START_MEMO["group"] = group
    x0 = _START_MEMO.get((lo, hi))
    if x0 is None:
        x0 = _START_MEMO[(lo, hi)] = start_images(images, start, seed, range(lo, hi))
    return x0
