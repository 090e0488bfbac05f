"""Feature distortion: how far finetuning moved the features (Kumar et al. 2022; Ren et al. 2023).

Paired features ``z0`` (pretrained, or the start of finetuning) and ``zt`` (finetuned), each
(n, d) with row i the same input image, are compared by:

- ``mean_squared_difference``: mean over all n x d elements of ``(zt - z0)^2`` (Kumar et al.'s
  "feature distortion"; squared feature units);
- ``cosine_distance``: mean over examples of ``1 - cos(zt_i, z0_i)`` (unitless, in [0, 2]);
- ``dot_product``: mean over examples of ``zt_i . z0_i`` (squared feature units);
- ``norm``: mean over examples of ``||zt_i||_2`` (feature units);
- ``euclidean_distance``: mean over examples of ``||zt_i - z0_i||_2`` (feature units).

For identical features: 0, 0, mean ``||z0_i||^2``, mean ``||z0_i||``, 0. A zero vector has no
direction: cos(0, 0) is taken as 1 (identical) and cos(0, z) for z != 0 as 0 (orthogonal).
All arithmetic is float64.

Each measure is a mean over examples of a per-example value (:func:`per_example_measures`; for
the mean squared difference the per-example value is the mean over the d features of
``(zt_i - z0_i)^2``, which averages to the same number since every example has d features).
Its interval is the percentile interval of the mean over a seeded bootstrap of the examples
(:func:`bootstrap_indices`, :func:`mean_interval`); :func:`difference_interval` does the same for
a difference of two means, paired (the same images in both: one resample applied to both) or
unpaired (each side resampled on its own).

:func:`feature_distortion` applies them per layer (and at ``pre_logits``, the features the
head sees) to two :class:`~ftlens.models.ModelWrapper` on several image splits (ID, OOD).
:func:`energy_vs_distortion` and :func:`energy_trend_check` test Ren et al. (2023)'s claim over an HP-FT
sweep: as the energy at the start of FT grows (higher train loss, lower train accuracy),
Euclidean and cosine distance grow while dot product and norm first rise then fall. The check
computes the trend from the numbers; it is never assumed.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from ftlens import io
from ftlens.errors import DistortionError, NumericalError
from ftlens.layers import layer_numbers
from ftlens.settings import PAPER
from ftlens.stats import percentile_interval

MEASURES: tuple[str, ...] = (
    "mean_squared_difference",
    "cosine_distance",
    "dot_product",
    "norm",
    "euclidean_distance",
)
"""Names of the distortion measures, in the order of the output tables."""

GROWING: tuple[str, ...] = ("euclidean_distance", "cosine_distance")
"""Seed 003: these grow with energy."""
RISE_THEN_FALL: tuple[str, ...] = ("dot_product", "norm")
"""Seed 003: these first rise then fall as energy grows."""

ENERGY_KEYS: tuple[str, ...] = ("train_acc", "train_loss")

_KEY_SEP = "|"  # joins (run, split, layer, measure) into one array name of the saved per-example values


# ----------------------------------------------------------------------------- pure functions


def _pair(z0: Any, zt: Any) -> tuple[torch.Tensor, torch.Tensor]:
    z0 = torch.as_tensor(z0).detach().to("cpu", torch.float64)
    zt = torch.as_tensor(zt).detach().to("cpu", torch.float64)
    if z0.ndim < 2 or zt.ndim < 2:
        raise DistortionError(
            f"features must be (n, d) with one row per example, got shapes {tuple(z0.shape)} and "
            f"{tuple(zt.shape)}; add a batch dimension (x[None]) for a single example"
        )
    z0 = z0.reshape(z0.shape[0], -1)
    zt = zt.reshape(zt.shape[0], -1)
    if z0.shape != zt.shape:
        raise DistortionError(
            f"paired features differ in shape: z0 {tuple(z0.shape)} vs zt {tuple(zt.shape)}; both "
            "models must see the same images at layers of the same width"
        )
    if z0.shape[0] == 0 or z0.shape[1] == 0:
        raise DistortionError(f"features are empty (shape {tuple(z0.shape)}); pass at least one image")
    if not (torch.isfinite(z0).all() and torch.isfinite(zt).all()):
        raise NumericalError("NaN/inf in the features; check the models (a diverged checkpoint?)")
    return z0, zt


def mean_squared_difference(z0: Any, zt: Any) -> float:
    """Mean over all elements of ``(zt - z0)^2`` (squared feature units)."""
    z0, zt = _pair(z0, zt)
    return float(((zt - z0) ** 2).mean())


def cosine_similarities(z0: Any, zt: Any) -> torch.Tensor:
    """Per-example ``cos(zt_i, z0_i)``, float64 (n,); 1 for two zero vectors, 0 for one."""
    z0, zt = _pair(z0, zt)
    n0 = torch.linalg.vector_norm(z0, dim=1)
    nt = torch.linalg.vector_norm(zt, dim=1)
    dot = (z0 * zt).sum(dim=1)
    denom = n0 * nt
    cos = torch.where(denom > 0, dot / torch.where(denom > 0, denom, torch.ones_like(denom)), 0.0)
    cos = torch.where((n0 == 0) & (nt == 0), torch.ones_like(cos), cos)
    return cos.clamp(-1.0, 1.0)


def cosine_distance(z0: Any, zt: Any) -> float:
    """Mean over examples of ``1 - cos(zt_i, z0_i)`` (unitless, 0 = same direction, 1 = orthogonal)."""
    return float((1.0 - cosine_similarities(z0, zt)).mean())


def dot_product(z0: Any, zt: Any) -> float:
    """Mean over examples of ``zt_i . z0_i`` (squared feature units)."""
    z0, zt = _pair(z0, zt)
    return float((z0 * zt).sum(dim=1).mean())


def norm(z0: Any, zt: Any) -> float:
    """Mean over examples of ``||zt_i||_2``, the finetuned features' norm (``z0`` only checks pairing)."""
    z0, zt = _pair(z0, zt)
    return float(torch.linalg.vector_norm(zt, dim=1).mean())


def euclidean_distance(z0: Any, zt: Any) -> float:
    """Mean over examples of ``||zt_i - z0_i||_2`` (feature units)."""
    z0, zt = _pair(z0, zt)
    return float(torch.linalg.vector_norm(zt - z0, dim=1).mean())


def distortion_measures(z0: Any, zt: Any) -> dict[str, float]:
    """Every measure of :data:`MEASURES` for one pair of (n, d) feature matrices."""
    z0, zt = _pair(z0, zt)
    return {
        "mean_squared_difference": mean_squared_difference(z0, zt),
        "cosine_distance": cosine_distance(z0, zt),
        "dot_product": dot_product(z0, zt),
        "norm": norm(z0, zt),
        "euclidean_distance": euclidean_distance(z0, zt),
    }


def per_example_measures(z0: Any, zt: Any) -> dict[str, np.ndarray]:
    """Every measure of :data:`MEASURES` per example: float64 (n,) vectors whose means are the measures."""
    z0, zt = _pair(z0, zt)
    diff = zt - z0
    return {
        "mean_squared_difference": (diff**2).mean(dim=1).numpy(),
        "cosine_distance": (1.0 - cosine_similarities(z0, zt)).numpy(),
        "dot_product": (z0 * zt).sum(dim=1).numpy(),
        "norm": torch.linalg.vector_norm(zt, dim=1).numpy(),
        "euclidean_distance": torch.linalg.vector_norm(diff, dim=1).numpy(),
    }


# ----------------------------------------------------------------------------- bootstrap over examples


def bootstrap_indices(n: int, resamples: int = PAPER.bootstrap, seed: int = 0) -> np.ndarray:
    """(resamples, n) int64 example indices drawn with replacement; the same for the same seed."""
    if n < 1 or resamples < 1:
        raise DistortionError(f"a bootstrap needs at least one example and one resample (got n={n}, "
                              f"resamples={resamples})")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n), dtype=np.int64)


def mean_interval(values: Any, idx: np.ndarray, level: float = PAPER.confidence) -> tuple[float, float]:
    """Percentile ``level`` interval of the mean of ``values`` (n,) over the resamples ``idx`` (B, n)."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = percentile_interval(v[idx].mean(axis=1), level)
    return float(lo), float(hi)


def difference_interval(a: Any, b: Any, *, paired: bool, level: float = PAPER.confidence,
                        resamples: int = PAPER.bootstrap, seed: int = 0) -> tuple[float, float, float]:
    """``(mean(a) - mean(b), lo, hi)``: bootstrap percentile interval of the difference of two means.

    ``paired``: element i of ``a`` and of ``b`` come from the same image (equal lengths), and one
    resample of the images is applied to both; otherwise each side is resampled on its own.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if paired:
        if a.shape != b.shape:
            raise DistortionError(f"paired values differ in length ({a.shape} vs {b.shape}); pass the "
                                  "same images to both, or paired=False")
        lo, hi = mean_interval(a - b, bootstrap_indices(len(a), resamples, seed), level)
        return float(a.mean() - b.mean()), lo, hi
    rng = np.random.default_rng(seed)
    if len(a) < 1 or len(b) < 1:
        raise DistortionError("a difference of means needs at least one value on each side")
    ia = rng.integers(0, len(a), size=(resamples, len(a)), dtype=np.int64)
    ib = rng.integers(0, len(b), size=(resamples, len(b)), dtype=np.int64)
    lo, hi = percentile_interval(a[ia].mean(axis=1) - b[ib].mean(axis=1), level)
    return float(a.mean() - b.mean()), float(lo), float(hi)


# ----------------------------------------------------------------------------- models


def _default_layers(model: Any) -> list[str]:
    layers = list(model.layers)
    if "pre_logits" in getattr(model, "available_layers", []) and "pre_logits" not in layers:
        layers.append("pre_logits")
    return layers


def feature_distortion(
    pretrained: Any,
    finetuned: Any,
    images_by_split: Mapping[str, torch.Tensor],
    layers: str | Sequence[str] | None = None,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    level: float = PAPER.confidence,
    resamples: int = PAPER.bootstrap,
    seed: int = 0,
    examples: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[tuple[str, str, str], np.ndarray]]:
    """Distortion of ``finetuned``'s features from ``pretrained``'s, per split and layer, with intervals.

    Args:
        pretrained, finetuned: :class:`~ftlens.models.ModelWrapper` of the same architecture.
        images_by_split: e.g. ``{"id": clean test images, "ood": corrupted ones}``, each
            (n, C, H, W) float in [0, 1]; row i of both models' features is image i.
        layers: names or globs; default the model's layers plus ``pre_logits`` (when it has one).
        batch_size, device: passed to :meth:`ModelWrapper.representations`.
        level, resamples, seed: the interval: percentile ``level`` interval of the mean over
            ``resamples`` bootstrap resamples of the split's images, drawn from ``seed`` (one
            draw per split, shared by its layers and measures).
        examples: also return the per-example values.

    Returns:
        tidy DataFrame with columns ``split, layer, layer_number, measure, value, ci_low, ci_high,
        n_images, n_features`` (``layer_number``: 1-based position in the model), layers in
        execution order and measures in the order of :data:`MEASURES`; with ``examples`` also
        ``{(split, layer, measure): float64 (n_images,) per-example values}`` (their mean is ``value``).
    """
    if not isinstance(images_by_split, Mapping) or not images_by_split:
        raise DistortionError(
            "images_by_split must be a non-empty dict {split name: images (n, C, H, W)}, "
            'e.g. {"id": clean, "ood": corrupted}'
        )
    wanted = _default_layers(pretrained) if layers is None else pretrained.resolve_layers(layers)
    wanted = pretrained.resolve_layers(wanted)
    ft_layers = finetuned.resolve_layers(wanted)
    if ft_layers != wanted:
        raise DistortionError(
            f"the two models order the layers differently ({wanted} vs {ft_layers}); "
            "compare models of the same architecture"
        )
    number = dict(zip(wanted, layer_numbers(wanted, pretrained), strict=True))
    rows = []
    per_example: dict[tuple[str, str, str], np.ndarray] = {}
    for split, images in images_by_split.items():
        z0 = pretrained.representations(images, wanted, batch_size=batch_size, device=device)
        zt = finetuned.representations(images, wanted, batch_size=batch_size, device=device)
        idx = bootstrap_indices(int(images.shape[0]), resamples, seed)
        for layer in wanted:
            a, b = z0[layer], zt[layer]
            if a.shape != b.shape:
                raise DistortionError(
                    f"layer {layer!r} has {a.shape[1]} features in {pretrained.name} but "
                    f"{b.shape[1]} in {finetuned.name}; compare models of the same architecture"
                )
            values = per_example_measures(a, b)
            for measure, value in distortion_measures(a, b).items():
                per_example[(str(split), layer, measure)] = values[measure]
                lo, hi = mean_interval(values[measure], idx, level)
                rows.append(
                    {
                        "split": str(split),
                        "layer": layer,
                        "layer_number": number[layer],
                        "measure": measure,
                        "value": value,
                        "ci_low": lo,
                        "ci_high": hi,
                        "n_images": int(a.shape[0]),
                        "n_features": int(a.shape[1]),
                    }
                )
    df = pd.DataFrame(rows, columns=["split", "layer", "layer_number", "measure", "value", "ci_low", "ci_high",
                                     "n_images", "n_features"])
    return (df, per_example) if examples else df


# ----------------------------------------------------------------------------- saved per-example values


def write_examples(path: Any, values: Mapping[tuple[str, str, str, str], np.ndarray],
                   sources: Mapping[str, np.ndarray]) -> Any:
    """Save per-example values ``{(run, split, layer, measure): (n,)}`` and each split's image sources.

    ``sources[split][i]`` is the index of the clean (ID) image that row i of the split was made
    from (a corrupted copy, for OOD). Written as an ``.npz`` of float64/int64 arrays (no pickle).
    """
    arrays = {_KEY_SEP.join(("value", *map(str, key))): np.asarray(v, np.float64) for key, v in values.items()}
    arrays.update({_KEY_SEP.join(("source", str(s))): np.asarray(v, np.int64) for s, v in sources.items()})
    return io.write_arrays(path, arrays)


def read_examples(path: Any) -> tuple[dict[tuple[str, str, str, str], np.ndarray], dict[str, np.ndarray]]:
    """``(values, sources)`` as written by :func:`write_examples`."""
    values, sources = {}, {}
    for key, arr in io.read_arrays(path).items():
        kind, *rest = key.split(_KEY_SEP)
        if kind == "value" and len(rest) == 4:
            values[tuple(rest)] = arr
        elif kind == "source" and len(rest) == 1:
            sources[rest[0]] = arr
    return values, sources



# ----------------------------------------------------------------------------- HP-FT energy


def energy_vs_distortion(runs: Sequence[tuple[Mapping[str, Any], pd.DataFrame]]) -> pd.DataFrame:
    """Join the energy at the start of FT of each run of a sweep with its distortion table.

    Args:
        runs: one ``(energy, distortion)`` per run. ``energy`` has ``train_acc`` (fraction) and
            ``train_loss`` (nats) measured at the start of FT (after head probing), plus any
            descriptive keys (``hp_epochs``, ``label_smoothing``, ``run``...), which become
            columns. ``distortion`` is a :func:`feature_distortion` table of the run's final
            model against the features at the start of FT.

    Returns:
        tidy DataFrame, one row per (run, split, layer, measure): ``run, train_acc,
        train_loss, energy, <other energy keys>, split, layer, measure, value``. ``energy`` is
        the train loss at the start of FT (higher loss, more energy left for the features).
    """
    if not runs:
        raise DistortionError("no runs given; pass [(energy dict, distortion table), ...]")
    frames = []
    for i, item in enumerate(runs):
        try:
            energy, table = item
        except (TypeError, ValueError):
            raise DistortionError(
                f"run {i} is not an (energy dict, distortion DataFrame) pair"
            ) from None
        missing = [k for k in ENERGY_KEYS if k not in energy]
        if missing:
            raise DistortionError(
                f"run {i}: the energy dict lacks {missing} (has {sorted(energy)}); record the "
                "training accuracy and loss at the start of FT"
            )
        need = {"split", "layer", "measure", "value"}
        if not need <= set(table.columns):
            raise DistortionError(
                f"run {i}: the distortion table lacks columns {sorted(need - set(table.columns))}; "
                "pass the output of feature_distortion"
            )
        frame = (
            table.groupby(["split", "layer", "measure"], sort=False)["value"].mean().reset_index()
        )
        extra = {k: v for k, v in energy.items() if k not in ("run", *ENERGY_KEYS, "energy")}
        frame.insert(0, "run", energy.get("run", i))
        frame.insert(1, "train_acc", float(energy["train_acc"]))
        frame.insert(2, "train_loss", float(energy["train_loss"]))
        frame.insert(3, "energy", float(energy["train_loss"]))
        for j, (k, v) in enumerate(extra.items()):
            frame.insert(4 + j, k, v)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _rise_then_fall(energy: np.ndarray, values: np.ndarray) -> tuple[bool, float, float]:
    """(interior strict maximum, energy at the maximum, quadratic coefficient of a fit)."""
    order = np.lexsort((values, energy))
    e, v = energy[order], values[order]
    i = int(np.argmax(v))
    interior = 0 < i < len(v) - 1 and v[i] > v[0] and v[i] > v[-1]
    quad = np.nan
    if len(np.unique(e)) >= 3:
        quad = float(np.polyfit(e, v, 2)[0])
    return bool(interior), float(e[i]), quad


def energy_trend_check(
    ev: pd.DataFrame,
    *,
    split: str | None = None,
    layer: str | None = "pre_logits",
) -> pd.DataFrame:
    """Does Ren et al. (2023)'s trend hold in this sweep? Computed from the numbers, per (split, layer, measure).

    - growing measures (:data:`GROWING`): ``held`` when Spearman rho(measure, energy) > 0;
    - rise-then-fall measures (:data:`RISE_THEN_FALL`): ``held`` when, with runs sorted by
      energy, the maximum is strictly inside (above both the lowest- and the highest-energy
      run); ``quad_coef`` (< 0 for a cap shape) is reported alongside.

    ``energy`` is the train loss at the start of FT; ``rho_vs_1_minus_acc`` repeats the rank
    correlation against ``1 - train_acc``. With fewer than 3 runs ``held`` is NA.

    Args:
        ev: output of :func:`energy_vs_distortion`.
        split, layer: restrict to one split / layer (``layer=None``: every layer; the default
            ``pre_logits`` falls back to every layer when the table has no such layer).

    Returns:
        DataFrame with columns ``split, layer, measure, expected, n_runs, spearman_rho,
        spearman_p, rho_vs_1_minus_acc, energy_at_max, quad_coef, held, note``.
    """
    df = ev
    if split is not None:
        if split not in set(df["split"]):
            raise DistortionError(f"no split {split!r}; present: {sorted(set(df['split']))}")
        df = df[df["split"] == split]
    if layer is not None:
        if layer in set(df["layer"]):
            df = df[df["layer"] == layer]
        elif layer != "pre_logits":
            raise DistortionError(f"no layer {layer!r}; present: {list(pd.unique(df['layer']))}")
    rows = []
    for (sp, ly, measure), g in df.groupby(["split", "layer", "measure"], sort=False):
        if measure not in GROWING and measure not in RISE_THEN_FALL:
            continue
        per_run = g.groupby("run").agg(energy=("energy", "first"), acc=("train_acc", "first"), value=("value", "mean"))
        e = per_run["energy"].to_numpy(np.float64)
        v = per_run["value"].to_numpy(np.float64)
        a = 1.0 - per_run["acc"].to_numpy(np.float64)
        n = len(per_run)
        row: dict[str, Any] = {
            "split": sp,
            "layer": ly,
            "measure": measure,
            "expected": "grows with energy" if measure in GROWING else "rises then falls with energy",
            "n_runs": n,
            "spearman_rho": np.nan,
            "spearman_p": np.nan,
            "rho_vs_1_minus_acc": np.nan,
            "energy_at_max": np.nan,
            "quad_coef": np.nan,
            "held": pd.NA,
            "note": "",
        }
        if n < 3:
            row["note"] = f"only {n} runs; need at least 3 to test a trend"
            rows.append(row)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho, p = stats.spearmanr(e, v)
            rho_acc, _ = stats.spearmanr(a, v)
        row.update(spearman_rho=float(rho), spearman_p=float(p), rho_vs_1_minus_acc=float(rho_acc))
        interior, e_max, quad = _rise_then_fall(e, v)
        row.update(energy_at_max=e_max, quad_coef=quad)
        if measure in GROWING:
            row["held"] = bool(np.isfinite(rho) and rho > 0)
            if not np.isfinite(rho):
                row["note"] = "constant energy or measure: rank correlation undefined"
        else:
            row["held"] = interior
        rows.append(row)
    out = pd.DataFrame(
        rows,
        columns=[
            "split", "layer", "measure", "expected", "n_runs", "spearman_rho", "spearman_p",
            "rho_vs_1_minus_acc", "energy_at_max", "quad_coef", "held", "note",
        ],
    )
    out["held"] = out["held"].astype("boolean")
    return out
