"""The content-keyed on-disk cache (inversions, small tables).

An entry's key is the sha256 of a canonical JSON of everything that determines its content:
for an inversion, the model fingerprint (hash of the weights and the preprocessing), the layer,
the hash of the image set, the seed, the inversion settings and :data:`CODE_VERSION`. So

- rerunning the same computation reuses every entry;
- changing any input (weights, layer, images, seed, steps, step size, start, autocast) gives a
  different key, and only the entries that depend on it are recomputed;
- a killed run loses nothing: each finished entry is written atomically (temporary file, then
  rename) as soon as it is computed, and a half-written file never carries a final name.

Layout under the root (``$FTLENS_CACHE_DIR`` or ``~/.cache/ftlens``)::

    inversions/ab/ab12....safetensors   tensors + metadata (the key's content as JSON)
    tables/cd/cd34....parquet           pandas tables

Batch size and device are *not* part of the key: they change results only by float rounding.
Weights changed in place need ``wrapper.refresh_fingerprint()`` before the next lookup (the
wrapper caches its fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ftlens import io
from ftlens.settings import PAPER

__all__ = [
    "CACHE_DIR_ENV",
    "CODE_VERSION",
    "Cache",
    "cached_inversion",
    "canonical_json",
    "content_key",
    "default_cache_dir",
    "inversion_key",
    "resolve_cache",
    "tensor_hash",
]

#: Environment variable naming the cache root.
CACHE_DIR_ENV = "FTLENS_CACHE_DIR"
#: Version of the code that produces cached values; bump it when an algorithm's output changes.
CODE_VERSION = "inversion-2"


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
        import numpy as np

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


class Cache:
    """A directory of content-keyed entries: tensors (safetensors) and tables.

    ``get``/``put`` store ``{name: tensor}`` dicts with string metadata; ``get_table``/
    ``put_table`` store DataFrames. Counters ``hits``, ``misses`` and ``writes`` count the
    calls of this object (useful to check that a rerun computed nothing).
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0
        self.writes = 0

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

    # ------------------------------------------------------------------ tensors
    def get(self, key: str, kind: str = "inversions") -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """``(tensors, metadata)`` of entry ``key``, or ``None`` if absent (or unreadable)."""
        path = self.path(key, kind)
        if not path.exists():
            self.misses += 1
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # a corrupt file (disk full, manual edits): recompute it
            warnings.warn(f"ignoring unreadable cache entry {path} ({type(exc).__name__}: {exc}); "
                          "it will be recomputed", stacklevel=2)
            self.misses += 1
            return None
        self.hits += 1
        return tensors, meta

    def put(
        self,
        key: str,
        tensors: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str] | None = None,
        kind: str = "inversions",
    ) -> Path:
        """Write entry ``key`` atomically (safetensors; metadata values must be strings)."""
        from safetensors.torch import save_file

        path = self.path(key, kind)
        state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        with io.atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata=meta)
        self.writes += 1
        return path

    # ------------------------------------------------------------------ tables
    def get_table(self, key: str, kind: str = "tables"):
        """A DataFrame stored under ``key``, or ``None``."""
        import pandas as pd

        path = self.path(key, kind, ".parquet")
        if not path.exists():
            self.misses += 1
            return None
        try:
            df = pd.read_parquet(path)
        except Exception as exc:
            warnings.warn(f"ignoring unreadable cache entry {path} ({type(exc).__name__}: {exc})", stacklevel=2)
            self.misses += 1
            return None
        self.hits += 1
        return df

    def put_table(self, key: str, df, kind: str = "tables") -> Path:
        """Write a DataFrame under ``key`` atomically (Parquet)."""
        path = io.write_table(self.path(key, kind, ".parquet"), df)
        self.writes += 1
        return path

    def entries(self, kind: str = "inversions") -> list[Path]:
        """Every complete entry of ``kind`` (temporary files excluded)."""
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
    raise TypeError(f"cache must be a Cache, a directory, True (default directory) or None, got {cache!r}")


# ---------------------------------------------------------------------------------- inversions


def inversion_key(
    model,
    layer: str,
    images_hash: str,
    seed: int,
    settings,
    device: torch.device | str | None = None,
) -> tuple[str, dict[str, Any]]:
    """``(key, content)`` of the inversion of ``images`` through ``model``'s ``layer``.

    ``content`` is what the key hashes: the fingerprint of the weights that determine the layer
    (:meth:`~ftlens.models.ModelWrapper.layer_fingerprint`), layer, image-set hash, seed, the
    inversion settings (autocast as actually used on ``device``) and :data:`CODE_VERSION`.
    """
    device = device if device is not None else model.device
    content = {
        "kind": "inversion",
        "code_version": CODE_VERSION,
        "model": model.layer_fingerprint(layer),
        "layer": layer,
        "images": images_hash,
        "seed": int(seed),
        "steps": settings.steps,
        "step_size": settings.step_size,
        "start": settings.start,
        "autocast": settings.effective_autocast(device),
    }
    return content_key(content), content


def _inversion_to_entry(inv) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {
        "images": inv.images,
        "residual": inv.residual,
        "history": inv.history,
        "best_history": inv.best_history,
    }
    meta = {
        "layer": inv.layer,
        "model": inv.model,
        "seed": str(inv.seed),
        "settings": canonical_json(inv.settings.as_dict()),
        "seconds": repr(float(inv.seconds)),
    }
    return tensors, meta


def _inversion_from_entry(tensors: dict[str, torch.Tensor], meta: dict[str, str]):
    from ftlens.inversion import Inversion, InversionSettings

    return Inversion(
        images=tensors["images"],
        residual=tensors["residual"],
        history=tensors["history"],
        best_history=tensors["best_history"],
        layer=meta["layer"],
        model=meta["model"],
        seed=int(meta["seed"]),
        settings=InversionSettings(**json.loads(meta["settings"])),
        seconds=float(meta.get("seconds", "0")),
        cached=True,
        extra={"key_content": json.loads(meta["key_content"])} if "key_content" in meta else {},
    )


def cached_inversion(
    model,
    layer: str,
    images: torch.Tensor,
    *,
    seed: int = 0,
    steps: int = PAPER.steps,
    step_size: float = PAPER.step_size,
    start: str = PAPER.start,
    autocast: str | None = None,
    settings=None,
    cache: Cache | str | os.PathLike | bool | None = True,
    images_hash: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress=False,
):
    """:func:`ftlens.inversion.invert`, looked up in / stored to ``cache`` by content.

    ``settings`` (an :class:`~ftlens.inversion.InversionSettings`) overrides ``steps``,
    ``step_size``, ``start`` and ``autocast``. ``images_hash`` (from :func:`tensor_hash`) saves
    hashing the images again. ``cache=None`` computes without a cache. The returned
    :class:`~ftlens.inversion.Inversion` has ``cached=True`` when it came from disk.
    """
    from ftlens import inversion as _inv

    if settings is None:
        settings = _inv.InversionSettings(steps=steps, step_size=step_size, start=start, autocast=autocast)
    store = resolve_cache(cache)
    (layer,) = _inv._one_layer(model, layer)
    if store is None:
        return _inv._invert(model, layer, images, settings, seed, batch_size=batch_size, device=device,
                            progress=progress)
    model.check_images(images)
    dev = torch.device(device) if device is not None else model.device
    key, content = inversion_key(model, layer, images_hash or tensor_hash(images), seed, settings, dev)
    found = store.get(key)
    if found is not None:
        tensors, meta = found
        if tuple(tensors["images"].shape) == tuple(images.shape):
            inv = _inversion_from_entry(tensors, meta)
            inv.extra["key"] = key
            return inv
        warnings.warn(f"cache entry {key} has images of shape {tuple(tensors['images'].shape)}, "
                      f"expected {tuple(images.shape)}; recomputing", stacklevel=2)
    inv = _inv._invert(model, layer, images, settings, seed, batch_size=batch_size, device=dev,
                       progress=progress)
    tensors, meta = _inversion_to_entry(inv)
    meta["key_content"] = canonical_json(content)
    store.put(key, tensors, meta)
    inv.extra["key"] = key
    return inv
