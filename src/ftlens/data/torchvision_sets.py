"""CIFAR-10, CIFAR-100, Oxford-IIIT Pet and EuroSAT through torchvision.

Files live under ``data_dir`` (``$FTLENS_DATA_DIR`` or ``~/.cache/ftlens/data``) in
torchvision's own layout (``cifar-10-batches-py/``, ``cifar-100-python/``,
``oxford-iiit-pet/``, ``eurosat/2750/``). ``download=None`` downloads them when absent and the
download server answers; ``False`` never downloads; ``True`` always tries. When the files are
absent and cannot be downloaded, :class:`ftlens.errors.DatasetError` says where we looked and
how to point ftlens at the files (``--data-dir`` / ``data_dir=`` / ``$FTLENS_DATA_DIR``).

Images: ``Resize`` (shorter side, antialiased) + ``CenterCrop`` to ``image_size`` +
``ToTensor``, i.e. float32 ``(3, H, W)`` in [0, 1]. CIFAR's batches are pickles: they are read
by :func:`read_cifar_pickle`, an unpickler that builds only what those files hold (dicts, lists,
strings, numbers and uint8 numpy arrays) and refuses anything else, so a planted file cannot run
code. We check that the files are there rather than their MD5 sums (torchvision's download checks
the archive's MD5; a damaged file fails when read and is reported as a DatasetError).
EuroSAT has no official split: a stratified 80/20 split from ``seed``.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from ftlens.errors import DatasetError

from .base import (
    SubsetImageDataset,
    check_split,
    parse_image_size,
    resolve_data_dir,
    stratified_split,
)

# name -> (folder inside data_dir that must exist, files/dirs inside it, download URL, what to
# put there by hand)
_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"],
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "the extracted cifar-10-python.tar.gz",
    ),
    "cifar100": (
        "cifar-100-python",
        ["train", "test", "meta"],
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "the extracted cifar-100-python.tar.gz",
    ),
    "pets": (
        "oxford-iiit-pet",
        ["images", "annotations/trainval.txt", "annotations/test.txt"],
        "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
        "images.tar.gz and annotations.tar.gz from the Oxford-IIIT Pet site, extracted",
    ),
    "eurosat": (
        "eurosat/2750",
        [],
        "https://huggingface.co/datasets/torchgeo/eurosat",
        "EuroSAT.zip (RGB) extracted so that the class folders are in eurosat/2750/",
    ),
}

PRETTY = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "pets": "Oxford-IIIT Pet",
    "eurosat": "EuroSAT",
}


def files_present(name: str, data_dir: Path) -> bool:
    folder, entries, _, _ = _LAYOUT[name]
    base = Path(data_dir) / folder
    if not base.is_dir():
        return False
    return all((base / e).exists() for e in entries)


def server_reachable(url: str, timeout: float = 3.0) -> bool:
    """True when a TCP connection to the URL's host opens within ``timeout`` seconds."""
    host = urlparse(url).hostname
    port = 443 if url.startswith("https") else 80
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def missing_error(name: str, data_dir: Path, reason: str) -> DatasetError:
    folder, _, url, by_hand = _LAYOUT[name]
    return DatasetError(
        f"dataset {name!r} ({PRETTY[name]}) was not found in {data_dir} (looked for "
        f"{Path(data_dir) / folder}) and {reason}. Either run once with internet access "
        f"(ftlens downloads it into that directory; source {url}), or put {by_hand} there "
        f"by hand. To use another directory pass --data-dir DIR on the command line, "
        f"data_dir=DIR in Python, or set FTLENS_DATA_DIR."
    )


class _RGB:
    """PIL image -> RGB (a class, not a lambda, so DataLoader workers can pickle it)."""

    def __call__(self, img):
        return img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img


def make_transform(size: tuple[int, int]):
    from torchvision import transforms as T

    h, w = size
    return T.Compose(
        [
            _RGB(),
            T.Resize(max(h, w) if h != w else h, antialias=True),
            T.CenterCrop((h, w)),
            T.ToTensor(),
        ]
    )


#: The only globals a CIFAR batch may name: what numpy arrays (and Python 2 byte strings) pickle to.
_CIFAR_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"the file names {module}.{name}, which a CIFAR batch never holds (refused: unpickling "
                "it could run code)"
            )
        with warnings.catch_warnings():  # numpy 2 warns about the numpy.core alias
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def read_cifar_pickle(path: str | os.PathLike) -> dict:
    """A CIFAR batch or meta file as a dict, unpickled with only the globals of numpy arrays allowed.

    Raises:
        pickle.UnpicklingError: the file names another global (e.g. a code-running payload).
    """
    data = Path(path).read_bytes()
    obj = _CifarUnpickler(io.BytesIO(data), encoding="latin1").load()
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError(f"{path} holds a {type(obj).__name__}, not the dict of a CIFAR file")
    for value in obj.values():
        if isinstance(value, np.ndarray) and value.dtype.hasobject:
            raise pickle.UnpicklingError(f"{path} holds an array of Python objects, not CIFAR pixels")
    return obj


def _cifar_arrays(entry: dict, path: str) -> tuple[np.ndarray, list[int]]:
    data = entry.get("data")
    labels = entry.get("labels", entry.get("fine_labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' is not a uint8 array of shape (n, 3072)")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(isinstance(v, int) for v in labels):
        raise ValueError(f"{path}: the labels are not a list of {len(data)} integers")
    return data, labels


def _cifar_class(name: str):
    from torchvision import datasets

    parent = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100

    class _Cifar(parent):  # type: ignore[misc, valid-type]
        """torchvision's CIFAR class, reading its files with :func:`read_cifar_pickle`."""

        def __init__(self, root: str, train: bool = True, transform=None, download: bool = False) -> None:
            datasets.VisionDataset.__init__(self, root, transform=transform)
            self.train = train
            if download:
                self.download()  # torchvision's: fetches the archive and checks its MD5
            if not self._check_integrity():
                raise RuntimeError("Dataset not found or incomplete")
            data, targets = [], []
            for file_name, _ in self.train_list if train else self.test_list:
                path = os.path.join(self.root, self.base_folder, file_name)
                batch, labels = _cifar_arrays(read_cifar_pickle(path), path)
                data.append(batch)
                targets.extend(labels)
            self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC
            self.targets = targets
            self._load_meta()

        # files must be present; torchvision's MD5 check of every batch is skipped
        def _check_integrity(self) -> bool:
            base = os.path.join(self.root, self.base_folder)
            return all(
                os.path.isfile(os.path.join(base, f)) for f, _ in self.train_list + self.test_list
            )

        def _load_meta(self) -> None:
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            classes = read_cifar_pickle(path).get(self.meta["key"])
            if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
                raise ValueError(f"{path}: {self.meta['key']!r} is not a list of class names")
            self.classes = classes
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    _Cifar.__name__ = _Cifar.__qualname__ = parent.__name__
    return _Cifar


def _build(name: str, root: Path, split: str, transform, download: bool):
    from torchvision import datasets

    if name in ("cifar10", "cifar100"):
        ds = _cifar_class(name)(
            str(root), train=(split == "train"), transform=transform, download=download
        )
        return ds, np.asarray(ds.targets, dtype=np.int64), list(ds.classes)
    if name == "pets":
        ds = datasets.OxfordIIITPet(
            str(root),
            split="trainval" if split == "train" else "test",
            target_types="category",
            transform=transform,
            download=download,
        )
        return ds, np.asarray(ds._labels, dtype=np.int64), list(ds.classes)
    if name == "eurosat":
        ds = datasets.EuroSAT(str(root), transform=transform, download=download)
        return ds, np.asarray(ds.targets, dtype=np.int64), list(ds.classes)
    raise KeyError(name)


def load_torchvision_dataset(
    name: str,
    split: str = "train",
    image_size=(32, 32),
    data_dir=None,
    download: bool | None = None,
    seed: int = 0,
    **kw,
):
    if kw:
        raise DatasetError(f"{name}: unexpected options {sorted(kw)}")
    split = check_split(split)
    size = parse_image_size(image_size)
    root = resolve_data_dir(data_dir)
    transform = make_transform(size)
    if not files_present(name, root):
        if download is False:
            raise missing_error(name, root, "download=False (--no-download) was given")
        url = _LAYOUT[name][2]
        if download is None and not server_reachable(url):
            raise missing_error(
                name,
                root,
                f"the download server {urlparse(url).hostname} cannot be reached "
                "(no internet access?)",
            )
        try:
            root.mkdir(parents=True, exist_ok=True)
            _build(name, root, split, transform, download=True)
        except Exception as exc:  # network errors, checksum errors, permissions...
            raise missing_error(
                name, root, f"the download failed ({type(exc).__name__}: {exc})"
            ) from exc
        if not files_present(name, root):
            raise missing_error(name, root, "the download did not produce the expected files")
    try:
        base, targets, classes = _build(name, root, split, transform, download=False)
    except Exception as exc:
        folder = _LAYOUT[name][0]
        raise DatasetError(
            f"dataset {name!r}: the files in {root / folder} could not be read "
            f"({type(exc).__name__}: {exc}). They may be incomplete or damaged: delete that "
            f"folder and download again, or replace the files by hand."
        ) from exc
    if name == "eurosat":
        indices = stratified_split(targets, split, seed)
    else:
        indices = np.arange(len(targets))
    ds = SubsetImageDataset(
        base, indices, targets, name=name, split=split, classes=classes, image_size=size
    )
    ds.data_dir = root
    return ds


def native_uint8(dataset) -> np.ndarray | None:
    """The images of a CIFAR dataset from :func:`load_torchvision_dataset` as ``(n, 32, 32, 3)``
    uint8 at their native resolution (None for other datasets)."""
    base = getattr(dataset, "base", None)
    data = getattr(base, "data", None)
    if isinstance(data, np.ndarray) and data.ndim == 4 and data.dtype == np.uint8:
        return data[dataset.indices]
    return None
