"""Checks and normalisation of what a comparison is given: models, image pool, seeds, layers."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ftlens.errors import ConfigError, ImageError, ImageSizeError, LayerError
from ftlens.models import ModelWrapper, load_model

__all__ = ["ModelLike", "as_model", "check_input_sizes", "check_pool", "resolve_shared_layers", "seed_list"]

ModelLike = ModelWrapper | str | os.PathLike

def as_model(model: ModelLike | torch.nn.Module, what: str, image_size: int | Sequence[int] | None = None
             ) -> ModelWrapper:
    """``model`` as a :class:`~ftlens.models.ModelWrapper` (a spec or a module object is loaded,
    at ``image_size`` when given; a wrapper must already take that size, or any size)."""
    if isinstance(model, ModelWrapper):
        if image_size is not None and model.input_size is not None and not model._any_size:
            from ftlens.models.load import hw_of

            hw = hw_of(image_size)
            if tuple(model.input_size[1:]) != hw:
                raise ImageSizeError(
                    f"the {what} model {model.name} was loaded for {model.input_size[1]}x{model.input_size[2]} "
                    f"images, not {hw[0]}x{hw[1]}; load it with ftlens.load_model(..., image_size={hw[0]}) "
                    "or pass the spec or module instead of the wrapper")
        return model
    return load_model(model, **({"image_size": image_size} if image_size is not None else {}))


def check_input_sizes(models: Mapping[str, ModelWrapper], images: torch.Tensor | None = None) -> None:
    """ImageError unless every model expects the same input size (C, H, W). A model loaded
    without an input size (a plain module) takes it from ``images``."""
    for m in models.values():
        m.adopt_input_size(images)
    sizes = {label: m.input_size for label, m in models.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{label} {m.name}: {sizes[label]}" for label, m in models.items())
        if all(hasattr(m, "max_length") for m in models.values()):  # text models: tokens per text
            raise ImageSizeError(
                f"the text models read different numbers of tokens ({listed}); load them with the same "
                "max_length (ftlens.load_model(..., max_length=N), --max-length on the command line)")
        raise ImageSizeError(
            f"the models expect different input sizes ({listed}), so no image set fits all of them; "
            "pass the same image_size for all of them (ftlens.load_model / ftlens.compare image_size=..., "
            "--image-size on the command line)"
        )


def check_pool(images: torch.Tensor, model: ModelWrapper, n_images: int | None) -> int:
    """Validate the pool (n, C, H, W) for ``model``; returns the images per seed (default: the pool)."""
    model.check_images(images)
    pool = int(images.shape[0])
    if n_images is None:
        n_images = pool
    if not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise ConfigError(f"n_images must be a positive integer, got {n_images!r}")
    if pool < n_images:
        raise ImageError(
            f"asked for n_images={n_images} per seed but only {pool} images were given; pass a pool "
            f"of at least {n_images} images or lower n_images to at most {pool}"
        )
    if n_images < 2:
        raise ImageError("CKA needs at least 2 images per seed (n_images >= 2)")
    return int(n_images)


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """A count ``k`` -> ``[0, ..., k-1]``; an explicit list is checked (distinct, >= 0)."""
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ConfigError(f"seeds must be >= 1 (a count) or a list of seeds, got {seeds}")
        return list(range(int(seeds)))
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise ConfigError(f"seeds must be distinct integers >= 0, got {list(seeds)}")
    return out


def resolve_shared_layers(models: Mapping[str, ModelWrapper], layers) -> list[str]:
    """Resolve ``layers`` on the first model and check every other model has the same names."""
    labels = list(models)
    first = models[labels[0]]
    try:
        resolved = first.resolve_layers(layers)
    except LayerError as exc:
        raise LayerError(f"{labels[0]} model {first.name}: {exc}") from None
    for label in labels[1:]:
        m = models[label]
        missing = [layer for layer in resolved if layer not in m.available_layers]
        if missing:
            raise LayerError(
                f"layer(s) {missing} of the {labels[0]} model {first.name} are missing from the {label} "
                f"model {m.name}; pass layers=[...] that both models have (its layers: {m.layers[:8]}"
                f"{' ...' if len(m.layers) > 8 else ''})"
            )
        try:
            m.resolve_layers(resolved)
        except LayerError as exc:
            raise LayerError(f"{label} model {m.name}: {exc}") from None
    return resolved
