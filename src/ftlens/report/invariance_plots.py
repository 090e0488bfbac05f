"""Plots of a comparison: learning / forgetting / cka divergence per layer, and the flow matrix.

Every function takes a :class:`~ftlens.invariance.Comparison` (or its tables) and returns a
matplotlib Figure (headless Agg backend); :func:`save_figure` writes it as PNG atomically.
Layers are numbered from 1 in labels (``blocks.0`` is layer 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ftlens.layers import layer_numbers  # noqa: E402
from ftlens.report.figures import fmt_num, layer_label, save_figure, styled  # noqa: E402

__all__ = [
    "METRICS",
    "flow_heatmap",
    "flow_panels",
    "metric_panels",
    "metrics_figure",
    "plot_flow",
    "plot_per_layer",
    "save_comparison_plots",
    "save_figure",
]

#: metric column -> (panel title, y label)
METRICS: dict[str, tuple[str, str]] = {
    "learning": ("Learning", "learning = STIR(ft|ft) - STIR(pt|ft)"),
    "forgetting": ("Forgetting", "forgetting = STIR(pt|pt) - STIR(ft|pt)"),
    "cka_divergence": ("CKA divergence", "cka divergence = 1 - CKA(ft, pt)"),
}


def _per_layer(obj: Any) -> pd.DataFrame:
    return obj.per_layer if hasattr(obj, "per_layer") else obj


def _estimator(obj: Any, table: pd.DataFrame) -> str:
    cfg = getattr(obj, "config", None) or {}
    return str(cfg.get("estimator") or table.attrs.get("estimator") or "biased")


def similarity_note(estimator: str) -> str:
    """How a figure names STIR's similarity: ``linear CKA, biased HSIC`` or the measure's name (``--measure``)."""
    parts = estimator.split("/")
    if all(p in ("biased", "debiased") for p in parts):
        return f"linear CKA, {estimator} HSIC"
    return f"STIR by {estimator}"


def _numbers(layers: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    return np.asarray(layer_numbers(list(layers)), dtype=float), [layer_label(layer) for layer in layers]


@styled
def metric_panels(
    comparisons: Any | Mapping[str, Any],
    metrics: Sequence[str] = ("learning", "forgetting", "cka_divergence"),
    *,
    title: str | None = None,
) -> Figure:
    """One panel per metric: mean over seeds per layer with a band of +- one std.

    Args:
        comparisons: a Comparison (or its ``per_layer`` table), or ``{label: comparison}`` to
            draw several finetuned models in the same panels (the paper's Fig. 1-3 style).
        metrics: columns of ``per_layer`` (each with an optional ``<metric>_std``).
        title: figure title; the CKA estimator and the first-term convention are appended.

    Returns:
        the Figure (x = layer, 1-based; y = metric).
    """
    if not isinstance(comparisons, Mapping):
        cfg = getattr(comparisons, "config", None) or {}
        label = (f"{cfg['finetuned']['name']} vs {cfg['pretrained']['name']}"
                 if "finetuned" in cfg and "pretrained" in cfg else "finetuned vs pretrained")
        comparisons = {label: comparisons}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.6), squeeze=False)
    estimators, first_terms, intervals = set(), set(), set()
    for label, obj in comparisons.items():
        table = _per_layer(obj)
        estimators.add(_estimator(obj, table))
        first_terms.add(str((getattr(obj, "config", None) or {}).get("first_term") or table.attrs.get("first_term", "measured")))
        x, ticks = _numbers(list(table.index))
        if "layer_number" in table:  # the layers' true positions (a subset keeps its numbers)
            x = table["layer_number"].to_numpy(dtype=float)
            ticks = [str(int(k)) for k in x]
        unconverged = x[~table["converged"].to_numpy(dtype=bool)] if "converged" in table else np.array([])
        for ax, metric in zip(axes[0], metrics, strict=True):
            if metric not in table:
                raise KeyError(f"per_layer has no column {metric!r}; columns: {list(table.columns)}")
            mean = table[metric].to_numpy(dtype=float)
            (line,) = ax.plot(x, mean, marker="o", ms=3.5, label=label)
            if f"{metric}_lo" in table:
                intervals.add(True)
                lo, hi = table[f"{metric}_lo"].to_numpy(dtype=float), table[f"{metric}_hi"].to_numpy(dtype=float)
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
            elif f"{metric}_std" in table:
                intervals.add(False)
                std = np.nan_to_num(table[f"{metric}_std"].to_numpy(dtype=float), nan=0.0)
                ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
            for k in unconverged:  # the convergence gate: layers whose inversions did not converge
                ax.axvspan(k - 0.5, k + 0.5, facecolor="0.85", hatch="//", edgecolor="0.6", linewidth=0, zorder=0)
            ax.set_xticks(x, ticks)
    for ax, metric in zip(axes[0], metrics, strict=True):
        name, ylabel = METRICS.get(metric, (metric, metric))
        ax.set_title(name)
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    estimator = "/".join(sorted(estimators))
    note = f"{similarity_note(estimator)}; " + ("mean and 95% interval" if True in intervals
                                                 else "mean \u00b1 std over seeds")
    if "one" in first_terms:
        note += "; first term = 1 (paper form)"
    fig.suptitle(f"{title + ' - ' if title else ''}{note}", fontsize=10)
    fig.tight_layout()
    return fig


def metrics_figure(comparison: Any, *, title: str | None = None):
    """The three per-layer metrics of one comparison in one figure (three panels)."""
    return metric_panels(comparison, title=title)


@styled
def flow_heatmap(
    comparison: Any,
    *,
    relative: bool = False,
    title: str | None = None,
    annotate: bool | None = None,
    vmax: float | None = None,
) -> Figure:
    """Heat map of the InvarianceFlow matrix (paper Fig. 4 style).

    Rows (y) = pretrained layer ``i``, columns (x) = finetuned layer ``j``; a diverging colour
    map centred at 0. ``relative=False``: eq. 5 as printed,
    ``STIR(ft^[j] | pt^[i]) - STIR(ft^[i] | pt^[j])``; ``relative=True``:
    ``STIR(ft^[j] | pt^[i]) - STIR(ft^[i] | pt^[i])``. Below the diagonal (j < i) positive
    values mean compression, above it expansion.

    Args:
        comparison: a Comparison, or a flow DataFrame (rows pretrained, columns finetuned).
        annotate: write the values in the cells (default: when there are at most 12 layers).
        vmax: the colour limit (default: the largest |value|); give several runs the same one
            to compare them.
    """
    if isinstance(comparison, pd.DataFrame):
        matrix, estimator = comparison, comparison.attrs.get("estimator", "biased")
    else:
        matrix = comparison.flow_relative if relative else comparison.flow
        estimator = _estimator(comparison, matrix)
    values = matrix.to_numpy(dtype=float)
    n = values.shape[0]
    if vmax is None:
        finite = np.abs(values[np.isfinite(values)])
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    fig, ax = plt.subplots(figsize=(max(5.6, 0.5 * n + 1.8), max(4.8, 0.5 * n + 1.0)))
    im = ax.imshow(values, cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax), origin="upper")
    ax.set_xticks(range(matrix.shape[1]), [layer_label(c) for c in matrix.columns])
    ax.set_yticks(range(n), [layer_label(r) for r in matrix.index])
    ax.set_xlabel("finetuned layer j")
    ax.set_ylabel("pretrained layer i")
    if annotate is None:
        annotate = n <= 12
    if annotate:
        decimals = max(2, 1 - int(np.floor(np.log10(vmax))))
        for i in range(n):
            for j in range(matrix.shape[1]):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, fmt_num(values[i, j], decimals), ha="center", va="center", fontsize=9,
                            color="white" if abs(values[i, j]) > 0.6 * vmax else "black")
    definition = ("STIR(ft[j]|pt[i]) - STIR(ft[i]|pt[i])" if relative
                  else "STIR(ft[j]|pt[i]) - STIR(ft[i]|pt[j]) (eq. 5)")
    head = title or ("InvarianceFlow (relative to the diagonal)" if relative else "InvarianceFlow")
    ax.set_title(f"{head}\n{similarity_note(estimator)}", fontsize=10)
    fig.colorbar(im, ax=ax, label=f"flow = {definition}", shrink=0.9)
    fig.tight_layout()
    return fig


def flow_panels(comparison: Any, *, relative: bool = False, title: str | None = None):
    """The flow, the pretrained model's own flow (baseline) and their difference, side by side.

    One colour scale for the three panels (symmetric around 0, the largest absolute value of
    any), so a cell's colour means the same number in each. Rows = pretrained layer ``i``,
    columns = finetuned layer ``j``; an exact copy of the model gives a white corrected panel.
    """
    suffix = "_relative" if relative else ""
    names = {"flow": f"flow{suffix}", "baseline": f"flow{suffix}_baseline", "corrected": f"flow{suffix}_corrected"}
    mats = {k: getattr(comparison, v) for k, v in names.items()}
    if mats["baseline"] is None:
        return flow_heatmap(comparison, relative=relative, title=title)
    finite = np.concatenate([np.abs(m.to_numpy(dtype=float)).ravel() for m in mats.values()])
    finite = finite[np.isfinite(finite)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    fig, axes = plt.subplots(1, 3, figsize=(14.5, 4.6))
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)
    heads = {"flow": "finetuned vs pretrained (raw)", "baseline": "baseline: pretrained vs itself",
             "corrected": "corrected = raw - baseline"}
    im = None
    for ax, (key, m) in zip(axes, mats.items(), strict=True):
        im = ax.imshow(m.to_numpy(dtype=float), cmap="RdBu_r", norm=norm, origin="upper")
        ax.set_xticks(range(m.shape[1]), [layer_label(c) for c in m.columns])
        ax.set_yticks(range(m.shape[0]), [layer_label(r) for r in m.index])
        ax.set_xlabel("finetuned layer j")
        ax.set_ylabel("pretrained layer i")
        ax.set_title(heads[key], fontsize=10)
    definition = ("STIR(ft[j]|pt[i]) - STIR(ft[i]|pt[i])" if relative else "STIR(ft[j]|pt[i]) - STIR(ft[i]|pt[j]) (eq. 5)")
    fig.suptitle(f"{title + ' - ' if title else ''}InvarianceFlow{' (relative)' if relative else ''}: {definition}; "
                 f"{similarity_note(_estimator(comparison, mats['flow']))}; one colour scale", fontsize=10)
    fig.colorbar(im, ax=list(axes), label="flow", shrink=0.9)
    return fig


#: Names used by the report builder.
plot_per_layer = metrics_figure
plot_flow = flow_heatmap


def save_comparison_plots(comparison: Any, directory: str | os.PathLike, *, title: str | None = None) -> list[Path]:
    """Write ``metrics.png``, ``flow.png``, ``flow_relative.png`` and ``flow_baseline.png`` (raw,
    baseline and corrected flow on one colour scale) into ``directory``."""
    d = Path(directory)
    return [
        save_figure(metrics_figure(comparison, title=title), d / "metrics.png"),
        save_figure(flow_heatmap(comparison), d / "flow.png"),
        save_figure(flow_heatmap(comparison, relative=True), d / "flow_relative.png"),
        save_figure(flow_panels(comparison), d / "flow_baseline.png"),
    ]
