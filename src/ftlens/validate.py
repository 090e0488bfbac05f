"""Sanity checks of the measures on a user's own model (in the spirit of the ReSi benchmark).

:func:`validate` runs four checks and returns one table, one row per check (and layer):

- ``exact copy``: the model against an exact copy of itself gives learning, forgetting,
  cka divergence and corrected flow of exactly 0 (pass: the largest absolute value <= 1e-12);
- ``random init``: a model of the same architecture with freshly initialised weights is
  clearly different (pass: cka divergence ``1 - CKA(random^[i], model^[i])`` > ``min_divergence``
  at some layer);
- ``shuffled order``: the representations of the images in another order are detected as
  mismatched (pass: ``CKA(model^[i](X), model^[i](X)[perm])`` < ``max_shuffled_cka`` at every layer);
- ``inversion residual``: per layer, the worst mean relative residual of the inversions at the
  chosen settings is at most ``residual_threshold`` (the convergence gate).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ftlens.invariance import compare
from ftlens.models import ModelWrapper
from ftlens.settings import PAPER
from ftlens.similarity import cka_from_grams, gram_linear

__all__ = ["random_init", "validate"]

VALIDATE_COLUMNS = ["check", "layer", "value", "criterion", "passed"]


def random_init(model: ModelWrapper, seed: int = 0) -> ModelWrapper:
    """A copy of ``model`` whose every module with ``reset_parameters`` is freshly initialised (seeded)."""
    fresh = model.copy()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for module in fresh.module.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return fresh


def validate(
    model: ModelWrapper,
    images: torch.Tensor,
    *,
    layers: Sequence[str] | None = None,
    n_images: int | None = None,
    seeds: int = 2,
    steps: int = PAPER.steps,
    step_size: float = PAPER.step_size,
    residual_threshold: float = PAPER.residual_threshold,
    min_divergence: float = 0.1,
    max_shuffled_cka: float = 0.8,
    cache=True,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Run the four checks (module docstring) -> DataFrame ``check, layer, value, criterion, passed``.

    ``images``: the pool (n, C, H, W) in [0, 1]; ``n_images`` per seed (default: all of it / seeds).
    """
    n_images = n_images or max(2, images.shape[0] // max(1, seeds))
    layer_list = model.resolve_layers(layers)
    rows = []
    same = compare(model, model.copy(), images, layers=layer_list, seeds=seeds, n_images=n_images, steps=steps,
                   step_size=step_size, cache=cache, batch_size=batch_size, progress=progress, bootstrap=0,
                   residual_threshold=residual_threshold)
    pl = same.per_layer
    worst = max(float(np.abs(pl[c]).max()) for c in ("learning", "forgetting", "cka_divergence"))
    worst = max(worst, float(np.abs(same.flow_corrected.to_numpy()).max()))
    rows.append(("exact copy", "all", worst, "max |learning, forgetting, cka divergence, corrected flow| <= 1e-12",
                 worst <= 1e-12))

    x = images[:n_images]
    fresh = random_init(model)
    reps = model.representations(x, layer_list, batch_size=batch_size or 256)
    other = fresh.representations(x, layer_list, batch_size=batch_size or 256)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    divergences, shuffled = {}, {}
    for layer in layer_list:
        g = gram_linear(reps[layer])
        divergences[layer] = 1.0 - cka_from_grams(g, gram_linear(other[layer]))
        shuffled[layer] = cka_from_grams(g, g[perm][:, perm])
    best = max(divergences, key=divergences.get)
    rows.append(("random init", best, divergences[best],
                 f"cka divergence to a randomly initialised copy > {min_divergence:g} at some layer",
                 divergences[best] > min_divergence))
    for layer in layer_list:
        rows.append(("shuffled order", layer, shuffled[layer], f"CKA with the images shuffled < {max_shuffled_cka:g}",
                     shuffled[layer] < max_shuffled_cka))
    for layer in layer_list:
        value = float(pl.loc[layer, "residual_max"])
        rows.append(("inversion residual", layer, value,
                     f"worst mean relative residual <= {residual_threshold:g} ({steps} steps of {step_size:g})",
                     value <= residual_threshold))
    table = pd.DataFrame(rows, columns=VALIDATE_COLUMNS)
    table.attrs.update({"model": model.name, "n_images": n_images, "seeds": seeds, "steps": steps,
                        "step_size": step_size})
    return table
