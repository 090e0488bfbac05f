"""The content-keyed cache: reuse, invalidation, atomic entries."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from ftlens.inversion import cached as inversion_mod  # where cached_inversion looks up _invert
from ftlens.inversion import cached_inversion
from ftlens.store import (
    CACHE_DIR_ENV,
    Cache,
    canonical_json,
    content_key,
    default_cache_dir,
    resolve_cache,
    tensor_hash,
)

STEPS = 3



@pytest.fixture(scope="module")
def model(make_vit):
    return make_vit(0)


@pytest.fixture(scope="module")
def images(make_pool):
    return make_pool(8, 1)


@pytest.fixture
def counter(monkeypatch):
    """Count the inversions actually computed (cache misses)."""
    calls = []
    real = inversion_mod._invert

    def counting(model, layer, images, settings, seed, **kw):
        calls.append((layer, seed, settings.steps))
        return real(model, layer, images, settings, seed, **kw)

    monkeypatch.setattr(inversion_mod, "_invert", counting)
    return calls


def test_keys_are_canonical():
    assert canonical_json({"b": 1, "a": [1, 2.5]}) == '{"a":[1,2.5],"b":1}'
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})
    x = torch.arange(6.0)
    assert tensor_hash(x) == tensor_hash(x.clone())
    assert tensor_hash(x) != tensor_hash(x.reshape(2, 3))  # the shape is part of the hash
    assert tensor_hash(x) != tensor_hash(x.double())


def test_put_get_roundtrip_is_atomic(tmp_path):
    cache = Cache(tmp_path)
    key = content_key({"x": 1})
    assert cache.get(key) is None and key not in cache
    path = cache.put(key, {"a": torch.arange(4.0)}, {"note": "hi"})
    tensors, meta = cache.get(key)
    assert torch.equal(tensors["a"], torch.arange(4.0)) and meta["note"] == "hi"
    assert key in cache and path.parent.parent.name == "inversions"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left
    df = pd.DataFrame({"layer": ["a", "b"], "v": [0.1, 0.2]})
    cache.put_table(key, df)
    pd.testing.assert_frame_equal(cache.get_table(key).reset_index(drop=True), df)


def test_corrupt_entry_is_recomputed(tmp_path):
    cache = Cache(tmp_path)
    key = content_key({"x": 2})
    path = cache.path(key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable"):
        assert cache.get(key) is None


def test_resolve_cache_and_default_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert resolve_cache(True).root == tmp_path / "c"
    assert resolve_cache(None) is None and resolve_cache(False) is None
    assert resolve_cache(tmp_path).root == tmp_path
    c = Cache(tmp_path)
    assert resolve_cache(c) is c


def test_second_run_reuses_the_inversion(tmp_path, model, images, counter):
    cache = Cache(tmp_path)
    a = cached_inversion(model, "blocks.1", images, seed=0, steps=STEPS, cache=cache)
    b = cached_inversion(model, "blocks.1", images, seed=0, steps=STEPS, cache=cache)
    assert len(counter) == 1
    assert not a.cached and b.cached
    assert torch.equal(a.images, b.images) and torch.equal(a.residual, b.residual)
    assert torch.equal(a.history, b.history) and b.settings == a.settings and b.seed == 0
    # a different batch size or progress setting is the same entry
    cached_inversion(model, "blocks.1", images, seed=0, steps=STEPS, cache=cache, batch_size=3)
    assert len(counter) == 1


def test_changing_any_input_invalidates(tmp_path, model, images, counter):
    cache = Cache(tmp_path)
    base = dict(seed=0, steps=STEPS, cache=cache)
    cached_inversion(model, "blocks.0", images, **base)
    assert len(counter) == 1
    cached_inversion(model, "blocks.0", images, **{**base, "seed": 1})
    assert len(counter) == 2
    cached_inversion(model, "blocks.0", images, **{**base, "steps": STEPS + 1})
    assert len(counter) == 3
    cached_inversion(model, "blocks.0", images, step_size=0.25, **base)
    assert len(counter) == 4
    cached_inversion(model, "blocks.1", images, **base)  # another layer
    assert len(counter) == 5
    cached_inversion(model, "blocks.0", images[:-1], **base)  # another image set
    assert len(counter) == 6
    other = model.copy()
    with torch.no_grad():
        other.module.blocks[0].mlp.fc2.bias.add_(0.01)  # other weights -> other fingerprint
    cached_inversion(other, "blocks.0", images, **base)
    assert len(counter) == 7
    # ... and every original entry is still reused
    cached_inversion(model, "blocks.0", images, **base)
    cached_inversion(model, "blocks.0", images, **{**base, "seed": 1})
    assert len(counter) == 7
    assert len(cache.entries()) == 7


def test_no_cache_always_computes(model, images, counter):
    cached_inversion(model, "blocks.0", images, steps=1, cache=None)
    cached_inversion(model, "blocks.0", images, steps=1, cache=None)
    assert len(counter) == 2


# --------------------------------------------------------------------------- entries are verified


def test_swapped_entry_is_detected_and_recomputed(tmp_path, model, images, counter):
    cache = Cache(tmp_path)
    a = cached_inversion(model, "blocks.1", images, seed=0, steps=STEPS, cache=cache)
    b = cached_inversion(model, "blocks.1", images, seed=1, steps=STEPS, cache=cache)
    assert len(counter) == 2 and not torch.equal(a.images, b.images)
    cache.path(a.extra["key"]).write_bytes(cache.path(b.extra["key"]).read_bytes())  # b copied over a
    with pytest.warns(UserWarning, match="written for key"):
        again = cached_inversion(model, "blocks.1", images, seed=0, steps=STEPS, cache=cache)
    assert len(counter) == 3 and not again.cached
    assert torch.equal(again.images, a.images) and torch.equal(again.residual, a.residual)
    # the entry was rewritten: the next call reads it
    assert cached_inversion(model, "blocks.1", images, seed=0, steps=STEPS, cache=cache).cached
    assert len(counter) == 3


def test_nan_and_altered_entries_are_recomputed(tmp_path, model, images, counter):
    from ftlens.inversion import _inversion_to_entry

    cache = Cache(tmp_path)
    a = cached_inversion(model, "blocks.0", images, seed=0, steps=STEPS, cache=cache)
    key = a.extra["key"]
    tensors, meta = _inversion_to_entry(a)
    poisoned = dict(tensors, images=torch.full_like(a.images, float("nan")))
    cache.put(key, poisoned, meta)  # a well-formed entry for the right key, holding NaN
    with pytest.warns(UserWarning, match="NaN or inf"):
        again = cached_inversion(model, "blocks.0", images, seed=0, steps=STEPS, cache=cache)
    assert not again.cached and torch.equal(again.images, a.images) and len(counter) == 2
    # one flipped byte in the tensor data (the header and its key intact)
    path = cache.path(key)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="does not match the hash"):
        again = cached_inversion(model, "blocks.0", images, seed=0, steps=STEPS, cache=cache)
    assert not again.cached and torch.equal(again.images, a.images) and len(counter) == 3
    # an entry of the right key with other shapes (e.g. written by hand)
    cache.put(key, dict(tensors, images=tensors["images"][:2]), meta)
    with pytest.warns(UserWarning, match="shape"):
        again = cached_inversion(model, "blocks.0", images, seed=0, steps=STEPS, cache=cache)
    assert torch.equal(again.images, a.images) and len(counter) == 4


def test_read_only_cache_computes_without_caching(tmp_path, model, images, counter, monkeypatch):
    import contextlib
    import errno

    from ftlens import io

    cache = Cache(tmp_path)
    cached_inversion(model, "blocks.0", images, seed=0, steps=STEPS, cache=cache)  # one entry there

    @contextlib.contextmanager
    def read_only(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
        yield

    monkeypatch.setattr(io, "atomic_path", read_only)
    with pytest.warns(UserWarning, match="cannot be written"):
        fresh = cached_inversion(model, "blocks.0", images, seed=1, steps=STEPS, cache=cache)
    assert not fresh.cached and len(counter) == 2 and len(cache.entries()) == 1
    assert cached_inversion(model, "blocks.0", images, seed=0, steps=STEPS, cache=cache).cached  # reads still work
    assert cache.put_table(content_key({"t": 1}), pd.DataFrame({"a": [1]})) is None


def test_racing_writers_compute_a_key_once(tmp_path):
    import threading
    import time

    cache = Cache(tmp_path)
    key = content_key({"race": 1})
    calls = []

    def make():
        calls.append(1)
        time.sleep(0.3)
        return {"x": torch.arange(3.0)}, {"who": str(len(calls))}

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.compute(key, make))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1, "the lock let two writers compute the same key"
    assert [r[2] for r in results].count(False) == 1
    assert all(torch.equal(r[0]["x"], torch.arange(3.0)) and r[1]["who"] == "1" for r in results)
    assert len(cache.entries()) == 1


def test_entries_respect_the_umask(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        path = Cache(tmp_path).put(content_key({"m": 1}), {"a": torch.zeros(1)})
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o640


def test_store_is_generic():
    import ast
    from pathlib import Path

    import ftlens.store

    tree = ast.parse(Path(ftlens.store.__file__).read_text())
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert "_invert" not in names
