"""Atomic file writes: a killed process never leaves a half-written result behind.

Everything is written to a temporary file in the target directory and renamed
into place with :func:`os.replace` (atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600 (and some writers replace the file): results are as readable as any file
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, on_wait: Any = None) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the (empty) lock file ``path`` for the duration; yields
    whether a lock is held (False where the folder cannot be written or has no ``flock``: then
    nothing is serialised). A second process blocks until the first one leaves; ``on_wait()`` is
    called once if it has to wait. The lock file stays (removing it would race with a waiter)."""
    try:
        import fcntl

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except (ImportError, OSError):
        yield False
        return
    try:
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_table(path: str | os.PathLike, df) -> Path:
    """Write a pandas DataFrame as CSV or Parquet (by suffix), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp)
        else:
            df.to_csv(tmp, index=True)
    return path


def write_arrays(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """Write named numeric arrays as a compressed ``.npz``, atomically (read with :func:`read_arrays`)."""
    import numpy as np

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


def read_arrays(path: str | os.PathLike) -> dict[str, Any]:
    """The arrays of an ``.npz`` by name; object arrays are refused (no unpickling)."""
    import numpy as np

    with np.load(Path(path), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)


def versions() -> dict[str, str]:
    """Versions of what produced a result (recorded in every run, comparison and report)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import pandas
    import timm
    import torch

    from ftlens._version import __version__

    try:  # read from its metadata: importing scikit-learn (and scipy) takes a second
        sklearn_version = version("scikit-learn")
    except PackageNotFoundError:
        sklearn_version = "not installed"
    return {
        "ftlens": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "scikit-learn": sklearn_version,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, CUDA {torch.cuda.is_available()}",
    }
