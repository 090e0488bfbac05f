"""Planning: the inversions (work items) a STIR computation needs.

One inversion per (reference model, reference layer, seed) serves every target layer and
every target model, so a comparison of two models with ``L`` layers needs ``2 L`` inversions
per seed, not ``L^2``. Each item carries its content key in the cache
(:func:`ftlens.inversion.inversion_key`), so items with the same key are computed once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ftlens.errors import ConfigError, LayerError
from ftlens.invariance.inputs import check_input_sizes, check_pool, seed_list
from ftlens.invariance.pool import sample_indices
from ftlens.inversion import InversionSettings, inversion_key
from ftlens.models import ModelWrapper
from ftlens.store import tensor_hash

__all__ = ["Plan", "WorkItem", "plan_inversions"]


@dataclass(frozen=True)
class WorkItem:
    """One inversion: ``reference`` model's ``layer`` on seed ``seed``'s images and start noise.

    ``key`` is its content key in the cache (:func:`ftlens.inversion.inversion_key`); two items
    with the same key (e.g. a model compared with an exact copy) are computed once.
    """

    reference: str
    layer: str
    seed: int
    key: str

    def describe(self) -> str:
        return f"{self.reference} {self.layer} seed {self.seed}"


@dataclass
class Plan:
    """What a STIR computation needs: reference models, layers, seeds, samples and work items.

    ``samples[seed]`` are the indices into the pool of the images seed ``seed`` uses.
    """

    references: dict[str, ModelWrapper]
    layers: dict[str, list[str]]
    seeds: list[int]
    n_images: int
    pool_size: int
    samples: dict[int, list[int]]
    sample_hashes: dict[int, str]
    settings: InversionSettings
    items: list[WorkItem]
    device: torch.device | None = None

    def sample(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """The images (n_images, C, H, W) of ``seed``."""
        return images[self.samples[seed]]

    @property
    def unique_items(self) -> list[WorkItem]:
        """The items with distinct keys, in plan order (what actually has to be computed)."""
        return list({item.key: item for item in self.items}.values())

    @property
    def unique_keys(self) -> list[str]:
        return list(dict.fromkeys(item.key for item in self.items))

    def item_costs(self) -> list[float]:
        """Relative cost of each unique item: its layer's depth in its model (1-based).

        The forward (and backward) of an inversion stops at its layer, so for a stack of equal
        blocks the cost grows linearly with the depth.
        """
        return [float(self.layers[it.reference].index(it.layer) + 1) for it in self.unique_items]


def plan_inversions(
    references: Mapping[str, ModelWrapper],
    images: torch.Tensor,
    *,
    layers: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    seeds: int | Sequence[int] = 1,
    n_images: int | None = None,
    settings: InversionSettings | None = None,
    device: str | torch.device | None = None,
) -> Plan:
    """List the inversions (work items) for ``references``, one per (reference, layer, seed).

    Args:
        references: ``{label: model}`` of the models whose layers are inverted.
        images: the image pool (n, C, H, W) in [0, 1]; each seed samples ``n_images`` of it
            (:func:`ftlens.invariance.pool.sample_indices`).
        layers: per label (a dict) or the same for every model; default ``model.layers``.
        seeds: a count (seeds 0..k-1) or explicit seeds; each has its own sample and start noise.
        n_images: images per seed (default: the whole pool).
        settings: inversion settings (steps, step size, start, autocast).
    """
    settings = settings or InversionSettings()
    refs = dict(references)
    if not refs:
        raise ConfigError("plan_inversions needs at least one reference model: pass {name: model}")
    check_input_sizes(refs, images)
    first = next(iter(refs.values()))
    n_images = check_pool(images, first, n_images)
    seeds_ = seed_list(seeds)
    per_model: dict[str, list[str]] = {}
    for label, model in refs.items():
        wanted = layers.get(label) if isinstance(layers, Mapping) else layers
        try:
            per_model[label] = model.resolve_layers(wanted)
        except LayerError as exc:
            raise LayerError(f"reference {label} ({model.name}): {exc}") from None
    pool = int(images.shape[0])
    samples = {s: sample_indices(pool, n_images, s) for s in seeds_}
    hashes = {s: tensor_hash(images[samples[s]]) for s in seeds_}
    dev = torch.device(device) if device is not None else None
    items = []
    for seed in seeds_:
        for label, model in refs.items():
            for layer in per_model[label]:
                key, _ = inversion_key(model, layer, hashes[seed], seed, settings, dev or model.device)
                items.append(WorkItem(label, layer, seed, key))
    return Plan(refs, per_model, seeds_, n_images, pool, samples, hashes, settings, items, dev)
