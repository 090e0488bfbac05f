"""Shared pieces of the data package: the dataset classes, resizing, splits, data dirs.

Every image handed out by :mod:`ftlens.data` is a float32 tensor ``(3, H, W)`` in ``[0, 1]``
(batches: ``(n, 3, H, W)``); normalisation happens inside the model wrapper.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ftlens.errors import DatasetError

DATA_DIR_ENV = "FTLENS_DATA_DIR"
TEST_FRACTION = 0.2  # fraction of each class held out when a dataset has no official split


def default_data_dir() -> Path:
    """``$FTLENS_DATA_DIR`` if set, else ``~/.cache/ftlens/data`` (resolved at call time)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/ftlens/data").expanduser()


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def parse_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``32`` or ``(32, 32)`` or ``(3, 32, 32)`` -> ``(H, W)``; DatasetError if invalid."""
    if isinstance(image_size, (int, np.integer)):
        size = (int(image_size), int(image_size))
    else:
        try:
            vals = tuple(int(v) for v in image_size)
        except TypeError:
            raise DatasetError(f"image_size must be an int or (H, W), got {image_size!r}") from None
        if len(vals) == 3:  # (C, H, W) as in ModelWrapper.input_size
            vals = vals[1:]
        if len(vals) != 2:
            raise DatasetError(f"image_size must be an int or (H, W), got {image_size!r}")
        size = vals
    if min(size) < 1:
        raise DatasetError(f"image_size must be positive, got {image_size!r}")
    return size


def resize_batch(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a float batch ``(n, C, h, w)``; result clamped to [0, 1]."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = F.interpolate(
        images, size=tuple(size), mode="bilinear", align_corners=False, antialias=True
    )
    return out.clamp_(0.0, 1.0)


def uint8_to_float(images_nhwc: np.ndarray) -> torch.Tensor:
    """``(n, H, W, 3)`` uint8 -> float32 ``(n, 3, H, W)`` in [0, 1]."""
    arr = np.ascontiguousarray(images_nhwc)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def float_to_uint8(images: torch.Tensor) -> np.ndarray:
    """float ``(n, 3, H, W)`` in [0, 1] -> ``(n, H, W, 3)`` uint8 (rounded)."""
    x = images.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round_()
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def stratified_split(
    labels: Sequence[int] | np.ndarray, split: str, seed: int, test_fraction: float = TEST_FRACTION
) -> np.ndarray:
    """Indices of ``split`` ("train"/"test") for a deterministic stratified split.

    Each class contributes ``round(test_fraction * n_class)`` images (at least one when the
    class has two or more) to the test split; the choice depends only on ``seed`` and the labels.
    Returned indices are sorted.
    """
    split = check_split(split)
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 0x5A17])
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(test_fraction * len(idx)))
        if k == 0 and len(idx) >= 2:
            k = 1
        test.append(rng.permutation(idx)[:k])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    if split == "test":
        return test_idx
    mask = np.ones(len(labels), dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask)


def check_split(split: str) -> str:
    s = str(split).lower()
    if s in ("val", "valid", "validation", "eval"):
        s = "test"
    if s not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")
    return s


class ImageDataset(Dataset):
    """Base class: a dataset of ``(image float32 (3, H, W) in [0, 1], label int)``.

    Attributes: ``name``, ``split``, ``classes`` (list of str), ``num_classes``,
    ``image_size`` ``(H, W)``, ``targets`` (int64 numpy array of all labels, in order),
    ``in_memory`` (True when :meth:`tensors` is available).
    """

    in_memory = False

    def __init__(self, name: str, split: str, classes: Sequence[str],
                 image_size: int | Sequence[int]) -> None:
        self.name = name
        self.split = split
        self.classes = [str(c) for c in classes]
        self.image_size = parse_image_size(image_size)

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def targets(self) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        h, w = self.image_size
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"num_classes={self.num_classes}, image_size=({h}, {w}))"
        )


class TensorImageDataset(ImageDataset):
    """An in-memory dataset; :meth:`tensors` returns all images and labels at once."""

    in_memory = True

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        name: str,
        split: str,
        classes: Sequence[str],
        info: dict | None = None,
    ) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise DatasetError(f"{name}: images must be (n, 3, H, W), got {tuple(images.shape)}")
        if len(images) != len(labels):
            raise DatasetError(f"{name}: {len(images)} images but {len(labels)} labels")
        super().__init__(name, split, classes, tuple(images.shape[-2:]))
        self._images = images.to(torch.float32).contiguous()
        self._labels = torch.as_tensor(labels, dtype=torch.long).contiguous()
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i):
        return self._images[i], int(self._labels[i])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images (n, 3, H, W) float32 in [0, 1], labels (n,) int64)``. Shared, do not modify."""
        return self._images, self._labels

    @property
    def targets(self) -> np.ndarray:
        return self._labels.numpy()


class SubsetImageDataset(ImageDataset):
    """A view of ``base`` (an indexable of ``(image, label)``) restricted to ``indices``."""

    def __init__(self, base, indices, targets, *, name, split, classes, image_size):
        super().__init__(name, split, classes, image_size)
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self._targets = np.asarray(targets, dtype=np.int64)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        img, label = self.base[int(self.indices[i])]
        return img, int(label)

    @property
    def targets(self) -> np.ndarray:
        return self._targets


def sample_images(dataset: Any, n: int, seed: int = 0) -> tuple[Any, torch.Tensor]:
    """A seeded sample of ``n`` images without replacement -> ``(images (n,3,H,W), labels (n,))``
    (a text dataset: ``(list of n texts, labels)``).

    DatasetError if the dataset has fewer than ``n`` images.
    """
    n = int(n)
    total = len(dataset)
    name = getattr(dataset, "name", type(dataset).__name__)
    if n < 0:
        raise DatasetError(f"sample_images: n must be >= 0, got {n}")
    if n > total:
        split = getattr(dataset, "split", None)
        which = f"{name!r} ({split} split)" if split else repr(name)
        raise DatasetError(
            f"dataset {which} has only {total} images, cannot sample {n} without replacement; "
            f"ask for at most {total} images"
        )
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(total, generator=g)[:n]
    if hasattr(dataset, "texts"):  # a text dataset: the texts themselves (each model tokenises them)
        return [dataset.texts[i] for i in idx.tolist()], dataset.labels[idx].clone()
    if hasattr(dataset, "tensors"):
        images, labels = dataset.tensors()
        return images[idx].clone(), labels[idx].clone()
    imgs, labs = [], []
    for i in idx.tolist():
        img, lab = dataset[i]
        imgs.append(torch.as_tensor(img, dtype=torch.float32))
        labs.append(int(lab))
    if not imgs:
        h, w = getattr(dataset, "image_size", (0, 0))
        return torch.zeros(0, 3, h, w), torch.zeros(0, dtype=torch.long)
    return torch.stack(imgs), torch.tensor(labs, dtype=torch.long)
