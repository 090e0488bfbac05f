"""Datasets that run offline: real pixels shipped inside installed packages.

``digits``
    scikit-learn's handwritten digits (``sklearn.datasets.load_digits``: 1797 greyscale 8 x 8
    images, values 0..16), scaled to [0, 1], resized (bilinear, antialiased) to the requested
    size and replicated to 3 channels. 10 classes. Deterministic stratified 80/20 train/test
    split from ``seed``.

``natural-patches``
    Crops cut from the sample photographs bundled inside scikit-image (``skimage/data``; only
    files that ship with the wheel are used, never the ones scikit-image fetches with pooch)
    and scikit-learn (``sklearn/datasets/images``). The task: which photo does a patch come
    from (label = photo index). Each photo is split along its long axis: the first 70 % gives
    training crops, the last 30 % test crops, so test patches are pixels never seen in
    training. Crops are squares (or the aspect of ``image_size``) of a few scales (10 %, 16 %
    and 25 % of the photo's short side), flipped horizontally at random, resized (bilinear,
    antialiased) to ``image_size``. The crops are drawn once from ``seed`` and held in memory;
    ``n_train`` (default 4000) and ``n_test`` (default 1000) crops are split evenly over the
    photos. Greyscale photos are replicated to 3 channels.
"""

from __future__ import annotations

import os
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ftlens.errors import DatasetError

from .base import (
    TensorImageDataset,
    check_split,
    parse_image_size,
    resize_batch,
    stratified_split,
)

# (class name, package, file name). All of these ship inside the scikit-image / scikit-learn
# wheels (checked for scikit-image 0.22-0.26 and scikit-learn 1.3-1.9); any that is missing
# from an installation is skipped rather than downloaded.
PHOTOS: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "skimage", "astronaut.png"),
    ("camera", "skimage", "camera.png"),
    ("chelsea", "skimage", "chelsea.png"),
    ("coffee", "skimage", "coffee.png"),
    ("rocket", "skimage", "rocket.jpg"),
    ("coins", "skimage", "coins.png"),
    ("motorcycle", "skimage", "motorcycle_left.png"),
    ("hubble_deep_field", "skimage", "hubble_deep_field.jpg"),
    ("china", "sklearn", "china.jpg"),
    ("flower", "sklearn", "flower.jpg"),
)
PATCH_SCALES = (0.10, 0.16, 0.25)  # crop side as a fraction of the photo's short side
TEST_BAND = 0.30  # fraction of the long axis (at its end) reserved for test crops
DEFAULT_N_TRAIN = 4000
DEFAULT_N_TEST = 1000


# --------------------------------------------------------------------------- digits


@lru_cache(maxsize=1)
def _digits_raw() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(np.asarray(d.images, dtype=np.float32) / 16.0)  # (1797, 8, 8)
    labels = torch.from_numpy(np.asarray(d.target, dtype=np.int64))
    return images.clamp_(0.0, 1.0), labels


def load_digits_dataset(split: str = "train", image_size=(32, 32), seed: int = 0, **kw):
    if kw:
        raise DatasetError(f"digits: unexpected options {sorted(kw)}")
    split = check_split(split)
    size = parse_image_size(image_size)
    images, labels = _digits_raw()
    idx = torch.from_numpy(stratified_split(labels.numpy(), split, seed))
    x = images[idx].unsqueeze(1)  # (n, 1, 8, 8)
    x = resize_batch(x, size).expand(-1, 3, -1, -1).contiguous()
    return TensorImageDataset(
        x,
        labels[idx].clone(),
        name="digits",
        split=split,
        classes=[str(i) for i in range(10)],
        info={"source": "sklearn.datasets.load_digits", "native_size": (8, 8), "seed": seed},
    )


# ------------------------------------------------------------------ natural patches


def _photo_path(package: str, filename: str) -> Path:
    if package == "skimage":
        import skimage.data

        return Path(os.path.dirname(skimage.data.__file__)) / filename
    if package == "sklearn":
        import sklearn.datasets

        return Path(os.path.dirname(sklearn.datasets.__file__)) / "images" / filename
    raise ValueError(package)


@lru_cache(maxsize=1)
def available_photos() -> tuple[tuple[str, Path], ...]:
    """``(class name, path)`` of the bundled photos present in this installation."""
    found = []
    for name, package, filename in PHOTOS:
        try:
            path = _photo_path(package, filename)
        except ImportError:
            continue
        if path.is_file():
            found.append((name, path))
    return tuple(found)


@cache
def _load_photo(path: str) -> torch.Tensor:
    """A photo as float32 ``(3, H, W)`` in [0, 1] (greyscale replicated to 3 channels)."""

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _region(h: int, w: int, split: str) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the split's region of an ``h x w`` photo."""
    if w >= h:  # split along the width
        cut = int(round(w * (1.0 - TEST_BAND)))
        return (0, 0, h, cut) if split == "train" else (0, cut, h, w - cut)
    cut = int(round(h * (1.0 - TEST_BAND)))
    return (0, 0, cut, w) if split == "train" else (cut, 0, h - cut, w)


def _crops_for_photo(
    photo: torch.Tensor, n: int, split: str, size: tuple[int, int], rng: np.random.Generator
) -> torch.Tensor:
    _, h, w = photo.shape
    top, left, rh, rw = _region(h, w, split)
    short = min(h, w)
    aspect = size[1] / size[0]
    scale_idx = rng.integers(0, len(PATCH_SCALES), size=n)
    flips = rng.random(n) < 0.5
    u = rng.random((n, 2))
    out = torch.empty(n, 3, *size)
    for k, frac in enumerate(PATCH_SCALES):
        sel = np.flatnonzero(scale_idx == k)
        if len(sel) == 0:
            continue
        ch = max(1, int(round(frac * short)))
        cw = max(1, int(round(ch * aspect)))
        ch, cw = min(ch, rh), min(cw, rw)
        ys = top + np.floor(u[sel, 0] * (rh - ch + 1)).astype(np.int64)
        xs = left + np.floor(u[sel, 1] * (rw - cw + 1)).astype(np.int64)
        crops = torch.stack([photo[:, y : y + ch, x : x + cw] for y, x in zip(ys, xs, strict=True)])
        flip = torch.from_numpy(flips[sel])
        if flip.any():
            crops[flip] = crops[flip].flip(-1)
        out[torch.from_numpy(sel)] = resize_batch(crops, size)
    return out


def _split_counts(total: int, k: int) -> list[int]:
    base, rem = divmod(int(total), k)
    return [base + (1 if i < rem else 0) for i in range(k)]


@lru_cache(maxsize=8)
def _natural_patches(split: str, size: tuple[int, int], seed: int, n: int):
    photos = available_photos()
    if len(photos) < 2:
        raise DatasetError(
            "natural-patches needs the sample photos bundled with scikit-image and "
            f"scikit-learn, but only {len(photos)} were found; reinstall scikit-image and "
            "scikit-learn, or use the 'digits' dataset"
        )
    split_id = 0 if split == "train" else 1
    counts = _split_counts(n, len(photos))
    images, labels = [], []
    for label, ((_, path), count) in enumerate(zip(photos, counts, strict=True)):
        if count == 0:
            continue
        rng = np.random.default_rng([int(seed), split_id, label, 0x9A7C])
        images.append(_crops_for_photo(_load_photo(str(path)), count, split, size, rng))
        labels.append(torch.full((count,), label, dtype=torch.long))
    x = torch.cat(images)
    y = torch.cat(labels)
    perm = torch.from_numpy(np.random.default_rng([int(seed), split_id, 0x5EED]).permutation(n))
    return x[perm].contiguous(), y[perm].contiguous(), [name for name, _ in photos]


def load_natural_patches(
    split: str = "train",
    image_size=(32, 32),
    seed: int = 0,
    n_train: int = DEFAULT_N_TRAIN,
    n_test: int = DEFAULT_N_TEST,
    **kw,
):
    if kw:
        raise DatasetError(
            f"natural-patches: unexpected options {sorted(kw)} (known: n_train, n_test)"
        )
    split = check_split(split)
    size = parse_image_size(image_size)
    n = int(n_train if split == "train" else n_test)
    if n < 1:
        raise DatasetError(f"natural-patches: n_{split} must be >= 1, got {n}")
    x, y, classes = _natural_patches(split, size, int(seed), n)
    return TensorImageDataset(
        x.clone(),  # the cache keeps its own copy
        y.clone(),
        name="natural-patches",
        split=split,
        classes=classes,
        info={
            "source": "photos bundled with scikit-image and scikit-learn",
            "photos": [str(p) for _, p in available_photos()],
            "scales": PATCH_SCALES,
            "test_band": TEST_BAND,
            "seed": seed,
        },
    )
