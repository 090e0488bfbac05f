"""The corrupted test split of any ftlens dataset: official files when present, else generated and cached."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ftlens import data  # data.get_dataset looked up when called (tests replace it)
from ftlens.data.base import (
    TensorImageDataset,
    float_to_uint8,
    parse_image_size,
    resolve_data_dir,
    sample_images,
)
from ftlens.data.corruptions.catalogue import (
    CIFAR10_CLASSES,
    CODE_VERSION,
    SEVERITIES,
    check_corruption,
    check_severity,
)
from ftlens.data.corruptions.files import load_corrupted, make_corrupted_split
from ftlens.data.torchvision_sets import native_uint8
from ftlens.errors import DatasetError


def _content_key(images: np.ndarray, labels: np.ndarray, seed: int) -> str:
    """Key of a cache directory: clean images + labels + seed + generator code version.

    The corruption is the file name inside the directory (``<corruption>.npy``), so the key of
    a cached file covers images, labels, corruption, seed and code version; every severity
    is in the file.
    """
    h = hashlib.sha256()
    h.update(
        f"ftlens-corrupt v{CODE_VERSION} seed={seed} sev={SEVERITIES} shape={images.shape}".encode()
    )
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels.astype(np.int64)).tobytes())
    return h.hexdigest()[:20]


def _official_dir(name: str, data_dir: Path, corrupted_dir) -> Path | None:
    if corrupted_dir is not None:
        return Path(corrupted_dir).expanduser()
    sub = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C"}.get(name)
    return data_dir / sub if sub else None


def corrupted_dataset_for(
    name: str,
    image_size,
    corruption: str,
    severity: int,
    *,
    n: int | None = None,
    seed: int = 0,
    corruption_seed: int = 0,
    data_dir=None,
    download: bool | None = None,
    corrupted_dir=None,
    cache_dir=None,
    base_size: int = 32,
    **kw,
) -> TensorImageDataset:
    """The corrupted test split of dataset ``name`` at ``image_size`` (an in-memory dataset).

    - ``cifar10`` / ``cifar100``: the official files from ``corrupted_dir`` (default
      ``<data_dir>/CIFAR-10-C`` or ``<data_dir>/CIFAR-100-C``) when ``<corruption>.npy`` is
      there; otherwise generated from the test split at its native 32 x 32.
    - ``digits`` / ``natural-patches``: the test split (made with ``seed`` and ``**kw``, as in
      training) rendered at ``base_size`` x ``base_size`` (32: the resolution CIFAR-10-C's
      constants are written for; digits are 8 x 8 natively, too small to corrupt), corrupted,
      then resized to ``image_size``.
    - other datasets: corrupted at ``image_size`` (size-dependent constants scaled).

    ``n``: a seeded (``seed``) subset of the test split, the same images at every severity.
    Generated corruptions (all five severities at once) are cached under ``cache_dir`` (default
    ``<data_dir>/ftlens-corrupted``) in the official layout: one directory per clean test set,
    keyed by a hash of the clean images, labels, ``corruption_seed`` and the generator's code
    version, holding ``<corruption>.npy`` files and ``labels.npy``.
    """

    sev = check_severity(severity)
    size = parse_image_size(image_size)
    root = resolve_data_dir(data_dir)
    key = name.strip().lower()
    key = {"cifar-10": "cifar10", "cifar-100": "cifar100"}.get(key, key)
    official = _official_dir(key, root, corrupted_dir)
    if official is not None and (official / f"{corruption}.npy").is_file():
        images, labels = load_corrupted(official, corruption, sev, n=n, image_size=size, seed=seed)
        classes = CIFAR10_CLASSES if key == "cifar10" else [str(i) for i in range(100)]
        return _wrap(images, labels, key, classes, corruption, sev, "official", official)
    corruption = check_corruption(corruption)

    if key in ("cifar10", "cifar100"):
        clean = data.get_dataset(
            key, "test", image_size=32, data_dir=data_dir, download=download, seed=seed, **kw
        )
        x8 = native_uint8(clean)
        y = np.asarray(clean.targets)
        if n is not None:
            pick = _subset(len(y), n, seed, clean.name)
            x8, y = x8[pick], y[pick]
    else:
        gen_size = (base_size, base_size) if key in ("digits", "natural-patches") else size
        clean = data.get_dataset(
            name, "test", image_size=gen_size, data_dir=data_dir, download=download, seed=seed, **kw
        )
        if n is None:
            if hasattr(clean, "tensors"):
                xs, ys = clean.tensors()
            else:
                items = [clean[i] for i in range(len(clean))]
                xs = torch.stack([torch.as_tensor(im) for im, _ in items])
                ys = torch.tensor([int(lab) for _, lab in items], dtype=torch.long)
        else:
            _subset(len(clean), n, seed, clean.name)  # error message if too few
            xs, ys = sample_images(clean, int(n), seed=seed)
        x8, y = float_to_uint8(xs), ys.numpy()
    digest = _content_key(x8, y, corruption_seed)
    cache_root = (
        Path(cache_dir).expanduser() if cache_dir is not None else root / "ftlens-corrupted"
    )
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)[:40]
    out = cache_root / f"{safe}-{digest}"
    if not (out / f"{corruption}.npy").is_file() or not (out / "labels.npy").is_file():
        make_corrupted_split(x8, y, out, corruptions=[corruption], seed=corruption_seed)
    images, labels = load_corrupted(out, corruption, sev, image_size=size)
    return _wrap(images, labels, key, clean.classes, corruption, sev, "generated", out)


def _perm(total: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(total, generator=g).numpy()


def _subset(total: int, n: int, seed: int, name: str) -> np.ndarray:
    n = int(n)
    if not 0 <= n <= total:
        raise DatasetError(f"test split of {name!r} has {total} images; cannot sample {n}")
    return _perm(total, seed)[:n]


def _wrap(images, labels, name, classes, corruption, severity, source, path):
    ds = TensorImageDataset(
        images,
        labels,
        name=name,
        split="test",
        classes=classes,
        info={"corruption": corruption, "severity": severity, "source": source, "path": str(path)},
    )
    ds.corruption = corruption
    ds.severity = severity
    return ds
