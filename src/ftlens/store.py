"""The content-keyed on-disk cache (generic: any computation whose inputs hash to a key).

An entry's key is the sha256 of a canonical JSON of everything that determines its content
(:func:`content_key`). The inversion cache (:func:`ftlens.inversion.cached_inversion`) keys an
inversion by the model fingerprint (hash of the weights and the preprocessing), the layer, the
hash of the image set, the seed, the inversion settings and its code version. So

- rerunning the same computation reuses every entry;
- changing any input gives a different key, and only the entries that depend on it are recomputed;
- a killed run loses nothing: each finished entry is written atomically (temporary file, then
  rename) as soon as it is computed, and a half-written file never carries a final name.

Entries come from disk, which other people and other programs can write, so nothing is trusted:
every entry records the key it was written for and the sha256 of its content, and :meth:`Cache.get`
ignores (with a :class:`~ftlens.errors.CacheWarning`, and the caller recomputes) an entry that is
unreadable, written for another key, altered since, or holding NaN or inf. Entries are safetensors
and Parquet files: reading one never runs code.

Processes that share a cache (``--processes N``, a launcher, two terminals) stay consistent:
:meth:`Cache.compute` holds a lock file per key while computing, so a second process asking for
the same key waits and reads the first one's entry instead of computing it again (where the file
system supports ``flock``; elsewhere both compute the same bytes and the last rename wins). A
cache folder that cannot be written (read-only, full) is used for reading only: results are
computed and returned without being stored, with a warning.

Layout under the root (``$FTLENS_CACHE_DIR`` or ``~/.cache/ftlens``)::
    inversions/ab/ab12....safetensors   tensors + metadata (the key's content as JSON)
    inversions/ab/.ab12....lock         the lock file of a key (empty)
    tables/cd/cd34....parquet           pandas tables

Batch size and device are *not* part of an inversion's key: they change results only by float
rounding. Weights changed in place (a training step, ``load_state_dict``) change the key by
themselves: the wrapper checks its fingerprint against the weights at use time
(:attr:`ftlens.models.ModelWrapper.fingerprint`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ftlens import io
from ftlens.errors import CacheWarning, ConfigTypeError
from ftlens.warn import warn

__all__ = [
    "CACHE_DIR_ENV",
    "Cache",
    "canonical_json",
    "content_key",
    "default_cache_dir",
    "resolve_cache",
    "tensor_hash",
    "tensors_hash",
]

#: Environment variable naming the cache root.
CACHE_DIR_ENV = "FTLENS_CACHE_DIR"
#: Metadata fields every entry carries: the key it was written for, the sha256 of its tensors.
KEY_FIELD, HASH_FIELD = "ftlens_key", "ftlens_sha256"
#: Old import paths: what the inversion cache used to export from here (now in ftlens.inversion).
_MOVED = {"cached_inversion": "ftlens.inversion", "inversion_key": "ftlens.inversion",
          "CODE_VERSION": "ftlens.inversion"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'ftlens.store' has no attribute {name!r}")


def default_cache_dir() -> Path:
    """``$FTLENS_CACHE_DIR`` if set, else ``~/.cache/ftlens``."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ftlens"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (tuple, set, frozenset)):
        return sorted(obj) if isinstance(obj, (set, frozenset)) else list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return str(obj)
    try:
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return float(obj)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"cannot put {type(obj).__name__} into a cache key")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces, floats by ``repr``) of a key's content."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default,
                      allow_nan=False)


def content_key(obj: Any) -> str:
    """sha256 hex digest of :func:`canonical_json` of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("ascii")).hexdigest()


def tensor_hash(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (e.g. of an image set (n, C, H, W))."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dim() else t.reshape(1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tensors_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names (sorted) and :func:`tensor_hash` of a dict of tensors."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(f"{name}={tensor_hash(tensors[name])};".encode())
    return h.hexdigest()


def _cannot_write(exc: OSError) -> bool:
    return exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR)


class Cache:
    """A directory of content-keyed entries: tensors (safetensors) and tables.

    ``get``/``put`` store ``{name: tensor}`` dicts with string metadata; ``get_table``/
    ``put_table`` store DataFrames; ``compute`` is get-or-compute-and-put under a lock. Counters
    ``hits``, ``misses`` and ``writes`` count the calls of this object (useful to check that a
    rerun computed nothing).
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self._read_only_warned = False

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    # ------------------------------------------------------------------ paths
    def path(self, key: str, kind: str = "inversions", suffix: str = ".safetensors") -> Path:
        """Where the entry ``key`` of ``kind`` lives (``root/kind/key[:2]/key.suffix``)."""
        if len(key) < 8 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key (a sha256 hex digest): {key!r}")
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def __contains__(self, key: str) -> bool:
        return self.path(key).exists()

    def _ignore(self, path: Path, why: str) -> None:
        warn(f"ignoring cache entry {path}: {why}; it will be recomputed", CacheWarning)
        self.misses += 1

    # ------------------------------------------------------------------ tensors
    def get(self, key: str, kind: str = "inversions") -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """``(tensors, metadata)`` of entry ``key``, or ``None`` if absent or not to be trusted
        (unreadable, written for another key, altered, NaN or inf: a CacheWarning says which)."""
        path = self.path(key, kind)
        if not path.exists():
            self.misses += 1
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # a corrupt file (disk full, manual edits): recompute it
            self._ignore(path, f"unreadable ({type(exc).__name__}: {exc})")
            return None
        if meta.get(KEY_FIELD) != key:
            self._ignore(path, f"it was written for key {meta.get(KEY_FIELD)!r}, not for {key!r}")
            return None
        if meta.get(HASH_FIELD) != tensors_hash(tensors):
            self._ignore(path, "its content does not match the hash it was written with (altered or damaged)")
            return None
        bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            self._ignore(path, f"{', '.join(sorted(bad))} hold NaN or inf")
            return None
        self.hits += 1
        meta.pop(KEY_FIELD)
        meta.pop(HASH_FIELD)
        return tensors, meta

    def put(
        self,
        key: str,
        tensors: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str] | None = None,
        kind: str = "inversions",
    ) -> Path | None:
        """Write entry ``key`` atomically (safetensors; metadata values must be strings).

        Returns the path, or None (with a warning) when the cache folder cannot be written."""

        path = self.path(key, kind)
        state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta[KEY_FIELD] = key
        meta[HASH_FIELD] = tensors_hash(state)
        try:
            with io.atomic_path(path) as tmp:
                save_file(state, str(tmp), metadata=meta)
        except OSError as exc:
            if not _cannot_write(exc):
                raise
            self._warn_read_only(exc)
            return None
        self.writes += 1
        return path

    def _warn_read_only(self, exc: OSError) -> None:
        if not self._read_only_warned:
            warn(f"the cache {self.root} cannot be written ({exc.strerror or exc}); results are computed "
                          "but not cached (choose another --cache-dir / $FTLENS_CACHE_DIR to keep them)",
                          CacheWarning)
            self._read_only_warned = True

    @contextlib.contextmanager
    def lock(self, key: str, kind: str = "inversions") -> Iterator[bool]:
        """Hold an exclusive lock on ``key`` (a lock file beside the entry); yields whether a lock
        is held (False where the folder cannot be written or has no ``flock``)."""
        path = self.path(key, kind)
        with io.file_lock(path.with_name(f".{key}.lock")) as held:
            yield held

    def compute(
        self,
        key: str,
        make: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping[str, str]]],
        kind: str = "inversions",
        check: Callable[[dict[str, torch.Tensor], dict[str, str]], str | None] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, str], bool]:
        """``(tensors, metadata, from_cache)``: entry ``key`` if it is there and trusted (and
        ``check`` returns None for it), else ``make()``, stored. Only one process computes a key
        at a time; the others wait and read its entry."""

        def trusted() -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
            found = self.get(key, kind)
            if found is not None and check is not None:
                why = check(*found)
                if why is not None:
                    self.hits -= 1
                    self._ignore(self.path(key, kind), why)
                    return None
            return found

        found = trusted()
        if found is not None:
            return found[0], found[1], True
        with self.lock(key, kind) as locked:
            if locked and self.path(key, kind).exists():  # another process finished it while we waited
                found = trusted()
                if found is not None:
                    return found[0], found[1], True
            tensors, meta = make()
            self.put(key, tensors, meta, kind)
        return dict(tensors), dict(meta), False

    # ------------------------------------------------------------------ tables
    def get_table(self, key: str, kind: str = "tables"):
        """A DataFrame stored under ``key``, or ``None`` (absent, unreadable or for another key)."""

        path = self.path(key, kind, ".parquet")
        if not path.exists():
            self.misses += 1
            return None
        try:
            df = pd.read_parquet(path)
        except Exception as exc:
            self._ignore(path, f"unreadable ({type(exc).__name__}: {exc})")
            return None
        if df.attrs.get(KEY_FIELD) != key:
            self._ignore(path, f"it was written for key {df.attrs.get(KEY_FIELD)!r}, not for {key!r}")
            return None
        df.attrs.pop(KEY_FIELD)
        self.hits += 1
        return df

    def put_table(self, key: str, df, kind: str = "tables") -> Path | None:
        """Write a DataFrame under ``key`` atomically (Parquet; the key is in its metadata)."""
        df = df.copy()
        df.attrs[KEY_FIELD] = key
        try:
            path = io.write_table(self.path(key, kind, ".parquet"), df)
        except OSError as exc:
            if not _cannot_write(exc):
                raise
            self._warn_read_only(exc)
            return None
        self.writes += 1
        return path

    def entries(self, kind: str = "inversions") -> list[Path]:
        """Every complete entry of ``kind`` (temporary and lock files excluded)."""
        base = self.root / kind
        return sorted(p for p in base.glob("*/*") if not p.name.startswith("."))


def resolve_cache(cache: Cache | str | os.PathLike | bool | None) -> Cache | None:
    """``True`` -> the default cache; ``None``/``False`` -> no cache; a path -> ``Cache(path)``."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return Cache()
    if isinstance(cache, Cache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return Cache(cache)
    raise ConfigTypeError(f"cache must be a Cache, a directory, True (default directory) or None, got {cache!r}")
