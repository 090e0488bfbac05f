"""The cached inversion: :func:`cached_inversion` looks an inversion up in / stores it to a
:class:`ftlens.store.Cache` by its content key (:func:`inversion_key`)."""

from __future__ import annotations

from typing import Any

import torch

from ftlens.inversion.api import _invert
from ftlens.inversion.loop import _one_layer
from ftlens.inversion.result import Inversion
from ftlens.inversion.settings import SCHEDULE_PRESETS, InversionSettings
from ftlens.settings import PAPER

__all__ = ["CODE_VERSION", "cached_inversion", "cached_inversions", "inversion_key"]

#: Version of the code that produces cached inversions; bump it when the algorithm's output changes.
CODE_VERSION = "inversion-2"



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
    from ftlens.store import content_key

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
        **settings.schedule_key(),  # empty for the paper's fixed schedule: its keys are unchanged
    }
    return content_key(content), content



def _inversion_to_entry(inv) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from ftlens.store import canonical_json

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
    if "image_steps" in inv.extra:
        meta["image_steps"] = str(int(inv.extra["image_steps"]))
    return tensors, meta



def _inversion_from_entry(tensors: dict[str, torch.Tensor], meta: dict[str, str]):
    import json

    # entries written before schedules existed were all computed with the fixed schedule
    settings = InversionSettings(**{**SCHEDULE_PRESETS["fixed"], **json.loads(meta["settings"])})
    return Inversion(
        images=tensors["images"],
        residual=tensors["residual"],
        history=tensors["history"],
        best_history=tensors["best_history"],
        layer=meta["layer"],
        model=meta["model"],
        seed=int(meta["seed"]),
        settings=settings,
        seconds=float(meta.get("seconds", "0")),
        cached=True,
        extra={
            **({"key_content": json.loads(meta["key_content"])} if "key_content" in meta else {}),
            **({"image_steps": int(meta["image_steps"])} if "image_steps" in meta else {}),
        },
    )



def _entry_problem(shape: tuple[int, ...], steps: int):
    """A check for :meth:`ftlens.store.Cache.compute`: why an entry cannot be this inversion, or None."""

    def check(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str | None:
        need = {"images": shape, "residual": shape[:1], "history": None, "best_history": None}
        for name, want in need.items():
            got = tuple(tensors[name].shape) if name in tensors else "missing"
            ok = got == want if want is not None else (len(got) == 1 and 1 <= got[0] <= steps + 1)
            if not ok:
                return f"its {name} has shape {got}, expected {want or f'(at most {steps + 1},)'}"
        try:
            _inversion_from_entry(tensors, meta)
        except Exception as exc:
            return f"its metadata cannot be read ({type(exc).__name__}: {exc})"
        return None

    return check



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
    cache=True,
    images_hash: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress=False,
):
    """:func:`invert`, looked up in / stored to ``cache`` (:class:`ftlens.store.Cache`) by content.

    ``settings`` (an :class:`InversionSettings`) overrides ``steps``, ``step_size``, ``start`` and
    ``autocast``. ``images_hash`` (from :func:`ftlens.store.tensor_hash`) saves hashing the images
    again. ``cache=None`` computes without a cache. The returned :class:`Inversion` has
    ``cached=True`` when it came from disk. An entry that is not this inversion (another key,
    altered, NaN, wrong shapes) is recomputed with a warning.
    """
    from ftlens.store import canonical_json, resolve_cache, tensor_hash

    if settings is None:
        settings = InversionSettings(steps=steps, step_size=step_size, start=start, autocast=autocast)
    store = resolve_cache(cache)
    (layer,) = _one_layer(model, layer)
    if store is None:
        return _invert(model, layer, images, settings, seed, batch_size=batch_size, device=device, progress=progress)
    model.check_images(images)
    dev = torch.device(device) if device is not None else model.device
    key, content = inversion_key(model, layer, images_hash or tensor_hash(images), seed, settings, dev)
    computed: list[Inversion] = []

    def make() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        inv = _invert(model, layer, images, settings, seed, batch_size=batch_size, device=dev, progress=progress)
        computed.append(inv)
        tensors, meta = _inversion_to_entry(inv)
        meta["key_content"] = canonical_json(content)
        return tensors, meta

    tensors, meta, _ = store.compute(key, make, check=_entry_problem(tuple(images.shape), settings.steps))
    inv = computed[0] if computed else _inversion_from_entry(tensors, meta)
    inv.extra["key"] = key
    return inv


def cached_inversions(
    model,
    jobs,
    settings: InversionSettings,
    *,
    cache=True,
    images_hashes=None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress=None,
) -> list[Inversion] | None:
    """:func:`cached_inversion` for several :class:`~ftlens.inversion.batched.Job` of one model at once.

    The jobs found in ``cache`` are read; the missing ones are computed together in one staged
    batch per step (:func:`~ftlens.inversion.batched.invert_jobs`) and stored, each under its own
    key (the same keys as :func:`cached_inversion`: batching is not part of them). Returns
    ``None`` (nothing computed or read) when the model's layers cannot be staged: the caller
    then runs :func:`cached_inversion` per job. ``images_hashes[i]`` saves hashing job ``i``'s
    images again; ``progress(done, total, mean_residual)`` follows the batch.
    """
    from ftlens.inversion.batched import invert_jobs, stageable
    from ftlens.store import canonical_json, resolve_cache, tensor_hash

    jobs = list(jobs)
    layers = model.resolve_layers(list(dict.fromkeys(job.layer for job in jobs)))
    if not stageable(model, layers):
        return None
    store = resolve_cache(cache)
    dev = torch.device(device) if device is not None else model.device
    results: list[Inversion | None] = [None] * len(jobs)
    keys: list[tuple[str, dict[str, Any]] | None] = [None] * len(jobs)
    for i, job in enumerate(jobs):
        model.check_images(job.images)
        if store is None:
            continue
        digest = images_hashes[i] if images_hashes is not None else tensor_hash(job.images)
        keys[i] = inversion_key(model, job.layer, digest, job.seed, settings, dev)
        found = store.get(keys[i][0])
        if found is not None and _entry_problem(tuple(job.images.shape), settings.steps)(*found) is None:
            results[i] = _inversion_from_entry(*found)
    missing = [i for i, inv in enumerate(results) if inv is None]
    if missing:
        computed = invert_jobs(model, [jobs[i] for i in missing], settings, batch_size=batch_size, device=dev,
                               progress=progress)
        if computed is None:  # cannot happen for a subset of a stageable set; the per-job path then
            computed = [_invert(model, jobs[i].layer, jobs[i].images, settings, jobs[i].seed, batch_size=batch_size,
                                device=dev) for i in missing]
        for i, inv in zip(missing, computed, strict=True):
            results[i] = inv
            if store is None:
                continue
            key, content = keys[i]
            tensors, meta = _inversion_to_entry(inv)
            meta["key_content"] = canonical_json(content)
            got_t, got_m, from_cache = store.compute(key, lambda t=tensors, m=meta: (t, m),
                                                      check=_entry_problem(tuple(jobs[i].images.shape), settings.steps))
            if from_cache:  # another process stored it meanwhile: use theirs, as cached_inversion does
                results[i] = _inversion_from_entry(got_t, got_m)
    for inv, k in zip(results, keys, strict=True):
        if k is not None:
            inv.extra["key"] = k[0]
    return results  # type: ignore[return-value]
