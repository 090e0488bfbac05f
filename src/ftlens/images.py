"""Images as the API takes them: a tensor, a numpy array, a Dataset or a DataLoader.

:func:`as_images` turns any of them into one float tensor ``(n, C, H, W)``; the models check
the value range ([0, 1]) and the size themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ftlens.errors import ImageError

__all__ = ["as_images", "count_images", "image_batches"]


def _first(item: Any) -> Any:
    """The image of a dataset item: ``img`` or the first entry of ``(img, label, ...)`` / ``{"image": img}``."""
    if isinstance(item, dict):
        for key in ("image", "images", "pixel_values", "img", "x"):
            if key in item:
                return item[key]
        raise ImageError(f"a dataset item is a dict without an image key (keys: {sorted(item)}); "
                         "pass a tensor of images instead")
    if isinstance(item, (tuple, list)):
        return item[0]
    return item


def _tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None  # noqa: N806
    if Image is not None and isinstance(x, Image.Image):
        arr = np.asarray(x.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)
    raise ImageError(f"cannot read images from a {type(x).__name__}; give a tensor (n, C, H, W) in [0, 1], "
                     "a torch Dataset or a DataLoader yielding such tensors")


def as_images(images: Any, n: int | None = None) -> torch.Tensor:
    """``(n, C, H, W)`` float tensor from a tensor, array, ``Dataset`` or ``DataLoader``.

    Args:
        images: a tensor or array ``(n, C, H, W)``; a map-style ``Dataset`` whose items are an
            image or ``(image, label, ...)``; or a ``DataLoader`` / any iterable of batches.
        n: read at most this many images (the first ``n``; default: all).

    Raises:
        ImageError: something that holds no image tensors.
    """

    if isinstance(images, (torch.Tensor, np.ndarray)):
        x = _tensor(images)
    elif isinstance(images, Dataset) and hasattr(images, "__len__") and not isinstance(images, DataLoader):
        count = len(images) if n is None else min(n, len(images))
        x = torch.stack([_tensor(_first(images[i])) for i in range(count)])
    elif hasattr(images, "__iter__"):
        batches, have = [], 0
        for batch in images:
            b = _tensor(_first(batch))
            if b.ndim == 3:  # an iterable of single images
                b = b.unsqueeze(0)
            batches.append(b)
            have += b.shape[0]
            if n is not None and have >= n:
                break
        if not batches:
            raise ImageError("the DataLoader / iterable yielded no images")
        x = torch.cat(batches)
    else:
        x = _tensor(images)
    if n is not None:
        x = x[:n]
    if not torch.is_floating_point(x):
        raise ImageError(f"images have dtype {x.dtype}; give floats in [0, 1] (e.g. uint8 images / 255)")
    return x


def count_images(images: Any, n: int | None = None) -> int | None:
    """How many images :func:`image_batches` will yield (None when an iterable does not say)."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        total = int(images.shape[0]) if images.ndim == 4 else 1
    elif isinstance(images, DataLoader):
        dataset = images.dataset
        try:
            total = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            return n
        if images.drop_last and images.batch_size:
            total -= total % images.batch_size
    elif isinstance(images, Dataset) and hasattr(images, "__len__"):
        total = len(images)
    else:
        return n
    return total if n is None else min(n, total)


def image_batches(images: Any, n: int | None = None, batch_size: int = 256) -> Iterator[torch.Tensor]:
    """Float batches ``(b, C, H, W)`` of at most the first ``n`` images, read lazily: slices of a
    tensor / array, ``batch_size`` items of a ``Dataset`` stacked, or the batches of a
    ``DataLoader`` / iterable as they come (their own sizes; the last one cut at ``n``)."""
    if batch_size < 1:
        raise ImageError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(images, (torch.Tensor, np.ndarray)):
        x = _tensor(images)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        total = x.shape[0] if n is None else min(n, x.shape[0])
        chunks = (x[i : min(i + batch_size, total)] for i in range(0, total, batch_size))
    elif isinstance(images, Dataset) and hasattr(images, "__len__") and not isinstance(images, DataLoader):
        total = len(images) if n is None else min(n, len(images))
        chunks = (torch.stack([_tensor(_first(images[i])) for i in range(lo, min(lo + batch_size, total))])
                  for lo in range(0, total, batch_size))
    elif hasattr(images, "__iter__"):
        chunks = _iterable_batches(images, n)
    else:
        chunks = iter([_tensor(images)])
    seen = False
    for b in chunks:
        if not torch.is_floating_point(b):
            raise ImageError(f"images have dtype {b.dtype}; give floats in [0, 1] (e.g. uint8 images / 255)")
        seen = True
        yield b
    if not seen:
        raise ImageError("no images: the tensor, Dataset or DataLoader is empty")


def _iterable_batches(images: Any, n: int | None) -> Iterator[torch.Tensor]:
    have = 0
    for batch in images:
        b = _tensor(_first(batch))
        if b.ndim == 3:  # an iterable of single images
            b = b.unsqueeze(0)
        if n is not None and have + b.shape[0] > n:
            b = b[: n - have]
        if b.shape[0]:
            yield b
        have += b.shape[0]
        if n is not None and have >= n:
            return
