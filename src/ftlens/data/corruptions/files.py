"""The official CIFAR-10-C / CIFAR-100-C file layout: writing our corruptions in it, reading any files in it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ftlens import io as ftlens_io
from ftlens.data.base import parse_image_size, resize_batch, uint8_to_float
from ftlens.data.corruptions.catalogue import (
    CODE_VERSION,
    CORRUPTIONS,
    META_FILE,
    SEVERITIES,
    check_corruption,
    check_severity,
)
from ftlens.data.corruptions.generate import corrupt
from ftlens.errors import DatasetError, ImageError


def _atomic_write(path: Path, write) -> None:
    """Write via ``write(file)`` to a temporary file next to ``path``, then rename (ftlens.io)."""
    with ftlens_io.atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    _atomic_write(path, lambda f: np.save(f, arr))


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode()))


def make_corrupted_split(
    images_uint8: np.ndarray,
    labels,
    out_dir,
    corruptions=None,
    severities=SEVERITIES,
    seed: int = 0,
) -> Path:
    """Write corrupted copies of ``images_uint8`` ``(N, H, W, 3)`` in the CIFAR-10-C layout.

    For each corruption, ``<out_dir>/<corruption>.npy`` holds ``len(severities) * N`` images,
    severity blocks in the given order; ``labels.npy`` holds the labels tiled the same way. With
    the default severities 1..5 this is exactly the official layout. A small
    ``ftlens_corruptions.json`` records the severities, seed and code version. Every file is
    written to a temporary file in ``out_dir`` and moved into place with ``os.replace``.
    """
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ImageError(
            f"make_corrupted_split needs uint8 images (N, H, W, 3), got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(images):
        raise DatasetError(f"{len(images)} images but {len(labels)} labels")
    sevs = [check_severity(s) for s in severities]
    if len(set(sevs)) != len(sevs) or not sevs:
        raise DatasetError(f"severities must be distinct values in 1..5, got {severities!r}")
    names = [check_corruption(c) for c in (corruptions or CORRUPTIONS)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / META_FILE
    meta = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
    others = set(available_corruptions(out)) - set(names)
    if others and (
        meta.get("severities", list(SEVERITIES)) != sevs
        or meta.get("n_per_severity", len(images)) != len(images)
    ):
        raise DatasetError(
            f"{out} already holds corruptions ({', '.join(sorted(others))}) of another layout "
            f"(severities {meta.get('severities')}, {meta.get('n_per_severity')} images each); "
            "write to another directory"
        )
    lab_path = out / "labels.npy"
    if others and lab_path.is_file():
        try:
            same = np.array_equal(np.load(lab_path), np.tile(labels, len(sevs)))
        except (OSError, ValueError):
            same = False
        if not same:
            raise DatasetError(
                f"{out} already holds corruptions ({', '.join(sorted(others))}) of images with "
                "other labels; write to another directory"
            )
    for name in names:
        blocks = [corrupt(images, name, s, seed) for s in sevs]
        _atomic_save(out / f"{name}.npy", np.concatenate(blocks))
    lab_dtype = (
        np.uint8 if labels.size == 0 or (labels.min() >= 0 and labels.max() < 256) else np.int64
    )
    _atomic_save(lab_path, np.tile(labels.astype(lab_dtype), len(sevs)))
    done = (
        sorted(set(meta.get("corruptions", [])) | set(names))
        if meta.get("severities") == sevs
        else sorted(names)
    )
    meta = {
        "severities": sevs,
        "n_per_severity": int(len(images)),
        "seed": int(seed),
        "code_version": CODE_VERSION,
        "corruptions": done,
        "constants": "CIFAR-10-C (make_cifar_c.py)",
    }
    _atomic_write_text(meta_path, json.dumps(meta, indent=1))
    return out


def available_corruptions(root) -> list[str]:
    """Corruption files (``<name>.npy``) present in ``root``."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.stem for p in root.glob("*.npy") if p.stem != "labels")


def load_corrupted(
    root,
    corruption: str,
    severity: int,
    n: int | None = None,
    image_size=None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read severity ``severity`` of ``<root>/<corruption>.npy`` (CIFAR-10-C / -100-C layout).

    Returns ``(images float32 (n, 3, H, W) in [0, 1], labels int64 (n,))``. ``n``: a seeded
    sample of that many images (without replacement, in file order) of the severity's block;
    ``image_size``: resize (bilinear, antialiased) to ``(H, W)``.
    """
    sev = check_severity(severity)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"corruption directory {str(root)!r} does not exist. It should hold "
            "<corruption>.npy files and labels.npy as in CIFAR-10-C "
            "(https://zenodo.org/record/2535967) or as written by make_corrupted_split()."
        )
    name = str(corruption).strip()
    path = root / f"{name}.npy"
    if not path.is_file():
        have = available_corruptions(root)
        raise DatasetError(
            f"no file {path.name} in {root}; corruptions there: "
            f"{', '.join(have) if have else 'none'}"
        )
    lab_path = root / "labels.npy"
    if not lab_path.is_file():
        raise DatasetError(f"{root} has no labels.npy (needed next to {path.name})")
    try:
        arr = np.load(path, mmap_mode="r")
        labels_all = np.load(lab_path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"could not read {path} / {lab_path}: {exc}") from exc
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise DatasetError(
            f"{path} has shape {tuple(arr.shape)} and dtype {arr.dtype}; expected "
            "(5 * N, H, W, 3) uint8 as in CIFAR-10-C"
        )
    sevs = list(SEVERITIES)
    meta_path = root / META_FILE
    if meta_path.is_file():
        try:
            sevs = [int(v) for v in json.loads(meta_path.read_text())["severities"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"could not read {meta_path}: {exc}") from exc
    if sev not in sevs:
        raise DatasetError(f"{root} holds severities {sevs} only, not {sev}")
    rows = arr.shape[0]
    if rows == 0 or rows % len(sevs) != 0:
        raise DatasetError(
            f"{path} has {rows} rows, not a multiple of {len(sevs)} severities; expected "
            "(5 * N, H, W, 3) as in CIFAR-10-C"
        )
    n_per = rows // len(sevs)
    start = sevs.index(sev) * n_per
    labels_all = np.asarray(labels_all).reshape(-1)
    if len(labels_all) == rows:
        labels = labels_all[start : start + n_per]
    elif len(labels_all) == n_per:
        labels = labels_all
    else:
        raise DatasetError(
            f"{lab_path} has {len(labels_all)} labels; expected {rows} (one per row of "
            f"{path.name}) or {n_per} (one per image of a severity)"
        )
    if n is None:
        idx = np.arange(n_per)
    else:
        n = int(n)
        if not 0 <= n <= n_per:
            raise DatasetError(f"{path.name} has {n_per} images per severity; cannot sample {n}")
        idx = np.sort(np.random.default_rng(int(seed)).choice(n_per, size=n, replace=False))
    images = uint8_to_float(np.asarray(arr[start + idx]))
    if image_size is not None:
        images = resize_batch(images, parse_image_size(image_size))
    return images, torch.from_numpy(np.asarray(labels[idx]).astype(np.int64))


