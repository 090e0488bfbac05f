"""Read and write the IDX format of MNIST and Fashion-MNIST with numpy (no pickle).

An IDX file is a big-endian header (two zero bytes, a type code, the number of dimensions, then
each dimension as a 4-byte unsigned int) followed by the array in C order. Only unsigned bytes
(type 0x08), the type of every (Fashion-)MNIST file, are accepted. ``.gz`` files are decompressed.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ftlens.errors import DatasetError

UBYTE = 0x08


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The uint8 array of an IDX file (``.gz`` or not); :class:`DatasetError` if malformed."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"cannot read {path} ({type(exc).__name__}: {exc}); replace the file") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != UBYTE or raw[3] < 1:
        raise DatasetError(
            f"{path} is not an IDX file of unsigned bytes (header {raw[:4].hex() or 'empty'}, "
            "expected 000008NN); replace it with the original file"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated (its header is incomplete); replace the file")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(shape, dtype=np.int64))
    if len(raw) != header + size:
        raise DatasetError(
            f"{path} holds {len(raw) - header} bytes of data but its header says {shape} "
            f"({size} bytes); the file is truncated or damaged: replace it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzip-compressed when ``path`` ends in ``.gz``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path
