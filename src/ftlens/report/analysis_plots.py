"""Figures of the analyses: robustness correlation, prefix correlation, feature distortion.

Every function returns a matplotlib Figure (headless Agg backend) with axis labels, units, a
legend and a title; the caller saves or embeds it (e.g. ``ftlens.report.figures.figure_png``,
which also closes it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ftlens.analysis import correlation as corr  # noqa: E402
from ftlens.analysis.distortion import MEASURES  # noqa: E402
from ftlens.errors import FtlensError  # noqa: E402
from ftlens.report.figures import styled  # noqa: E402

FAMILY_COLORS = {"stir": "C0", "cka_divergence": "C1", "subspace_similarity": "C2"}
FAMILY_LABELS = {
    "stir": "STIR (learning / forgetting)",
    "cka_divergence": "cka divergence (baseline)",
    "subspace_similarity": "subspace similarity (baseline)",
}
MEASURE_LABELS = {
    "mean_squared_difference": "mean squared difference (feature units²)",
    "cosine_distance": "mean cosine distance 1 - cos (unitless)",
    "dot_product": "mean dot product z_t · z_0 (feature units²)",
    "norm": "mean norm ||z_t|| (feature units)",
    "euclidean_distance": "mean Euclidean distance ||z_t - z_0|| (feature units)",
}
ACCURACY_LABEL = "mean corrupted accuracy (fraction correct)"


def _fmt_p(p: float) -> str:
    return "nan" if not np.isfinite(p) else (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")


def _unit_of(hyp: corr.Hypothesis) -> str:
    if hyp.family == "stir":
        return "STIR difference, unitless"
    return "unitless"


# ----------------------------------------------------------------------------- correlation


@styled
def plot_correlation_scatter(
    table: pd.DataFrame,
    accuracy: Any,
    hypothesis: Any = None,
    *,
    layers: Sequence[str] | None = None,
    accuracy_label: str = ACCURACY_LABEL,
    title: str | None = None,
) -> Figure:
    """Per-epoch aggregate (default: std of forgetting over layers 2..L) vs corrupted accuracy.

    One point per epoch, coloured by epoch; the legend gives Pearson r, p and the number of
    epochs; a least-squares line is drawn when r is defined.
    """
    matrices, acc = corr.aligned_inputs(table, accuracy, layers)
    n_layers = next(iter(matrices.values())).shape[1]
    hyp = corr.resolve_hypothesis(hypothesis, n_layers)
    x = hyp.evaluate(matrices).to_numpy()
    y = acc.to_numpy()
    r, p, n, note = corr.pearson(x, y)
    epochs = np.asarray(acc.index, dtype=float)
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    label = f"epochs (r = {r:.3f}, p = {_fmt_p(p)}, n = {n})" if np.isfinite(r) else f"epochs (r undefined: {note})"
    sc = ax.scatter(x, y, c=epochs, cmap="viridis", s=28, edgecolors="k", linewidths=0.4, label=label)
    mask = np.isfinite(x) & np.isfinite(y)
    if np.isfinite(r) and mask.sum() >= 2:
        slope, intercept = np.polyfit(x[mask], y[mask], 1)
        xs = np.linspace(np.min(x[mask]), np.max(x[mask]), 50)
        ax.plot(xs, slope * xs + intercept, "k--", lw=1, label="least-squares line")
    cbar = fig.colorbar(sc, ax=ax, label="epoch")
    cbar.locator = MaxNLocator(integer=True)
    cbar.update_ticks()
    ax.set_xlabel(f"{hyp.label} ({_unit_of(hyp)})")
    ax.set_ylabel(accuracy_label)
    ax.set_title(title or f"Robustness vs {hyp.name}", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), borderaxespad=0, ncol=2)
    fig.tight_layout()
    return fig


@styled
def plot_top_hypotheses(
    results: pd.DataFrame,
    k: int = 10,
    *,
    include_headline: bool = True,
    title: str | None = None,
) -> Figure:
    """Horizontal bars of Pearson r for the ``k`` hypotheses with the largest |r|.

    Colour = family; hatched = not significant after Bonferroni; the headline (std of
    forgetting over layers 2..L) is added when it is not among the top k and outlined in black.
    """
    top = corr.best_hypotheses(results, k)
    if include_headline and "is_headline" in results.columns and results["is_headline"].any():
        head = results[results["is_headline"]]
        if head["hypothesis"].iloc[0] not in set(top["hypothesis"]):
            top = pd.concat([top, head], ignore_index=True)
    fig, ax = plt.subplots(figsize=(8.5, 0.35 * max(len(top), 3) + 1.4))
    if top.empty:
        ax.text(0.5, 0.5, "no hypothesis has a defined r", ha="center", va="center", transform=ax.transAxes)
    ys = np.arange(len(top))[::-1]
    for yv, (_, row) in zip(ys, top.iterrows(), strict=True):
        r = row["r"] if np.isfinite(row["r"]) else 0.0
        ax.barh(
            yv,
            r,
            color=FAMILY_COLORS.get(row["family"], "C7"),
            hatch=None if row["significant"] else "//",
            alpha=1.0 if row["significant"] else 0.55,
            edgecolor="k" if row.get("is_headline", False) else "none",
            linewidth=1.5 if row.get("is_headline", False) else 0,
        )
    is_head = top["is_headline"] if "is_headline" in top.columns else pd.Series(False, index=top.index)
    labels = [f"{h}  [headline]" if hd else h for h, hd in zip(top["hypothesis"], is_head, strict=True)]
    ax.set_yticks(ys, labels)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("Pearson r with mean corrupted accuracy (unitless)")
    ax.set_ylabel("hypothesis: aggregate(metric) over layers (1-based)")
    handles = [Patch(color=FAMILY_COLORS[f], label=FAMILY_LABELS[f]) for f in FAMILY_COLORS if f in set(top["family"])]
    handles.append(Patch(facecolor="white", edgecolor="grey", hatch="//", label="not significant (Bonferroni)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    n_top = min(k, int(results["r"].notna().sum())) if len(results) else 0
    extra = " + headline" if len(top) > n_top else ""
    ax.set_title(title or f"Top {n_top}{extra} of {len(results)} hypotheses by |r|", fontsize=10)
    fig.tight_layout()
    return fig


@styled
def plot_prefix_correlation(
    prefix: pd.DataFrame | Mapping[str, pd.DataFrame],
    *,
    title: str | None = None,
) -> Figure:
    """Pearson r over epochs 0..n against n (the paper's Fig. 14).

    ``prefix``: a :func:`ftlens.analysis.correlation.prefix_correlation` table, or several
    keyed by a label (e.g. ``{"CIFAR-10-C": ..., "CIFAR-100-C": ...}``).
    """
    series = {"": prefix} if isinstance(prefix, pd.DataFrame) else dict(prefix)
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    plotted = 0
    for label, df in series.items():
        if df.empty:
            continue
        plotted += 1
        hyp = df["hypothesis"].iloc[0]
        ax.plot(df["epoch"], df["r"], "o-", ms=3.5, label=f"{label}: {hyp}" if label else hyp)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("last epoch n included (correlation over epochs 0..n)")
    ax.set_ylabel("Pearson r with corrupted accuracy (unitless)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = ax.get_xlim()
    if hi - lo < 2:  # one or two epochs: integer ticks need room
        mid = (lo + hi) / 2
        ax.set_xlim(mid - 1.5, mid + 1.5)
    if plotted:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.text(0.5, 0.5, "too few epochs for a prefix correlation", ha="center", transform=ax.transAxes)
    ax.set_title(title or "Correlation up to epoch n (cf. paper Fig. 14)", fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- distortion


def _as_model_frame(distortion: pd.DataFrame | Mapping[str, pd.DataFrame], model_column: str) -> pd.DataFrame:
    if isinstance(distortion, pd.DataFrame):
        if model_column not in distortion.columns:
            return distortion.assign(**{model_column: "finetuned"})
        return distortion
    frames = [df.assign(**{model_column: name}) for name, df in distortion.items()]
    if not frames:
        raise FtlensError("no distortion tables given; pass {model or strategy name: feature_distortion table}")
    return pd.concat(frames, ignore_index=True)


@styled
def plot_distortion(
    distortion: pd.DataFrame | Mapping[str, pd.DataFrame],
    *,
    measure: str = "mean_squared_difference",
    layer: str = "pre_logits",
    model_column: str = "model",
    title: str | None = None,
) -> Figure:
    """Grouped bars of one distortion measure: one group per model / strategy, one bar per split.

    ``distortion``: ``{strategy: feature_distortion table}`` (e.g. FT, LP-FT) or one table with
    a ``model_column`` column.
    """
    df = _as_model_frame(distortion, model_column)
    if measure not in set(df["measure"]):
        raise FtlensError(f"no measure {measure!r} in the table; present: {sorted(set(df['measure']))}")
    if layer not in set(df["layer"]):
        raise FtlensError(f"no layer {layer!r} in the table; present: {list(pd.unique(df['layer']))}")
    sub = df[(df["measure"] == measure) & (df["layer"] == layer)]
    pivot = sub.pivot_table(index=model_column, columns="split", values="value", aggfunc="mean", sort=False)
    models, splits = list(pivot.index), list(pivot.columns)
    width = 0.8 / max(len(splits), 1)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.2 * len(models) + 2), 3.8))
    x = np.arange(len(models))
    for j, split in enumerate(splits):
        ax.bar(x + (j - (len(splits) - 1) / 2) * width, pivot[split].to_numpy(), width, label=f"{split} data")
    ax.set_xticks(x, models)
    ax.set_xlabel("model / finetuning strategy")
    ax.set_ylabel(MEASURE_LABELS.get(measure, measure))
    ax.legend(title="images", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title or f"Feature distortion from the pretrained model at {layer}", fontsize=10)
    fig.tight_layout()
    return fig


@styled
def plot_energy_vs_distortion(
    ev: pd.DataFrame,
    *,
    measures: Sequence[str] = MEASURES,
    layer: str = "pre_logits",
    title: str | None = None,
) -> Figure:
    """Each distortion measure against the energy at the start of FT (HP-FT sweep; Ren et al. 2023).

    ``ev``: :func:`ftlens.analysis.distortion.energy_vs_distortion`. One panel per measure, one
    line per split, runs sorted by energy (train loss at the start of FT).
    """
    if layer not in set(ev["layer"]):
        raise FtlensError(f"no layer {layer!r} in the table; present: {list(pd.unique(ev['layer']))}")
    measures = [m for m in measures if m in set(ev["measure"])]
    if not measures:
        raise FtlensError(f"none of the measures is in the table; present: {sorted(set(ev['measure']))}")
    ncols = min(3, len(measures))
    nrows = -(-len(measures) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.7 * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat[len(measures):]:
        ax.set_visible(False)
    sub = ev[ev["layer"] == layer]
    for ax, measure in zip(axes.flat, measures, strict=False):
        for split, g in sub[sub["measure"] == measure].groupby("split", sort=False):
            g = g.groupby("run").agg(energy=("energy", "first"), value=("value", "mean")).sort_values("energy")
            ax.plot(g["energy"], g["value"], "o-", ms=4, label=f"{split} data")
        ax.set_xlabel("train loss at start of FT (nats)")
        ax.set_ylabel(MEASURE_LABELS.get(measure, measure))
        ax.set_title(measure.replace("_", " "), fontsize=9)
        ax.legend()
    fig.suptitle(title or f"Distortion at {layer} vs energy at the start of FT (HP-FT sweep)", fontsize=10)
    fig.tight_layout()
    return fig
