"""The one image-pool policy of the API, the CLI and the experiments.

A comparison with ``seeds`` seeds and ``n_images`` images per seed draws a pool of
``min(len(dataset), n_images * seeds)`` images (:func:`image_pool`), and seed ``s`` uses the
images :func:`sample_indices` gives it: the pool is cut, in a fixed shuffled order, into
disjoint blocks of ``n_images``, seed ``s`` taking block ``s`` while the pool has one, so the
seeds see different images whenever the data allows. A seed without its own block (a small
pool, or a large seed number) draws a seeded sample of the whole pool. A seed's images depend
only on ``(pool size, n_images, seed)``, so cache keys do not depend on the other seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ftlens.errors import ImageError

if TYPE_CHECKING:
    from ftlens.data.base import ImageDataset

__all__ = ["ImagePool", "image_pool", "pool_size", "sample_indices"]

#: The seed of the pool draw and of the shuffled order its blocks are cut from.
POOL_SEED = 0


def sample_indices(pool_size: int, n_images: int, seed: int) -> list[int]:
    """The images (sorted indices into the pool) that seed ``seed`` uses.

    The whole pool when ``n_images == pool_size``; block ``seed`` of a fixed permutation when
    the pool holds ``(seed + 1) * n_images`` images; otherwise a seeded sample without replacement.
    """
    if n_images > pool_size:
        raise ImageError(f"cannot sample {n_images} images from a pool of {pool_size}")
    if n_images == pool_size:
        return list(range(pool_size))
    if (int(seed) + 1) * n_images <= pool_size:
        order = torch.randperm(pool_size, generator=torch.Generator().manual_seed(POOL_SEED))
        return sorted(order[seed * n_images:(seed + 1) * n_images].tolist())
    g = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(pool_size, generator=g)[:n_images].tolist())


def pool_size(available: int, n_images: int, seeds: int) -> int:
    """Images to draw: enough for a disjoint sample per seed, capped by what is ``available``."""
    return min(int(available), int(n_images) * max(1, int(seeds)))


@dataclass
class ImagePool:
    """Images (n, C, H, W) in [0, 1] (a text dataset: a list of texts), their labels (n,), and their
    indices in the dataset's split."""

    images: torch.Tensor | list[str]
    labels: torch.Tensor
    indices: list[int]
    dataset: str = ""
    split: str = "test"

    def describe(self) -> dict:
        """What a result records about its pool (JSON-ready)."""
        return {"name": self.dataset, "split": self.split, "pool_size": len(self.indices), "pool_seed": POOL_SEED,
                "indices": list(self.indices)}


def image_pool(dataset: ImageDataset, n_images: int, seeds: int, *, seed: int = POOL_SEED) -> ImagePool:
    """The pool for ``seeds`` seeds of ``n_images`` images from ``dataset`` (a dataset of ``ftlens.data``).

    Raises ImageError when the dataset has fewer than ``n_images`` images.
    """
    total = len(dataset)
    name = getattr(dataset, "name", type(dataset).__name__)
    if n_images > total:
        raise ImageError(f"dataset {name!r} has only {total} images; use --images {total} or fewer "
                         f"(n_images <= {total})")
    n = pool_size(total, n_images, seeds)
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))[:n]
    if hasattr(dataset, "texts"):  # a text dataset: the texts (the compared models read them as word vectors)
        images = [dataset.texts[i] for i in idx.tolist()]
        labels = dataset.labels[idx].clone()
    elif hasattr(dataset, "tensors"):
        images, labels = dataset.tensors()
        images, labels = images[idx].clone(), labels[idx].clone()
    else:
        items = [dataset[i] for i in idx.tolist()]
        images = torch.stack([torch.as_tensor(img, dtype=torch.float32) for img, _ in items])
        labels = torch.tensor([int(lab) for _, lab in items], dtype=torch.long)
    return ImagePool(images, labels, idx.tolist(), str(name), str(getattr(dataset, "split", "test")))
