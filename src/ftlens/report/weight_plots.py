"""Figures of a weight-space diff: change and effective rank of ``ΔW`` per layer, and weight change
against forgetting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ftlens.report.figures import fmt_value, layer_label, line_styles, styled

__all__ = ["moved_vs_forgetting_scatter", "weight_change_per_layer"]


@styled
def weight_change_per_layer(tables: Mapping[str, pd.DataFrame]):
    """Two panels over layers (1-based), one line per run: ``||ΔW|| / ||W_pt||`` and the effective rank of ``ΔW``.

    ``tables``: ``{run label: WeightDiff.per_layer}`` (index: layer names).
    """
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.8))
    styles = line_styles(list(tables))
    longest: list[str] = []
    for label, table in tables.items():
        layers = [str(i) for i in table.index]
        longest = layers if len(layers) > len(longest) else longest
        x = np.arange(1, len(layers) + 1)
        colour, dash = styles[label]
        for ax, column in zip(axes, ("relative_change", "effective_rank"), strict=True):
            ax.plot(x, table[column].to_numpy(dtype=float), marker="o", ms=4, lw=1.8, color=colour, ls=dash,
                    label=label)
    ticks = [layer_label(name) for name in longest]
    for ax, (ylabel, title) in zip(axes, (("||ΔW|| / ||W_pretrained||", "How far the weights moved"),
                                          ("effective rank of ΔW", "Effective rank of the change")), strict=True):
        if longest:
            ax.set_xticks(np.arange(1, len(longest) + 1), ticks, rotation=90 if max(map(len, ticks)) > 3 else 0)
        ax.set_xlabel("layer (1 = first block)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, title="run")
    fig.tight_layout()
    return fig


@styled
def moved_vs_forgetting_scatter(points: Mapping[str, tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]]):
    """Weight change (x) against forgetting (y), one point per layer labelled by its number, one colour per run.

    ``points``: ``{run label: (weights per-layer table, comparison per-layer table, moved_vs_forgetting result)}``.
    """
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    styles = line_styles(list(points))
    for label, (weights, per_layer, rel) in points.items():
        layers = rel["layers"]
        x = weights.loc[layers, rel["moved"]].to_numpy(dtype=float)
        y = per_layer.loc[layers, rel["metric"]].to_numpy(dtype=float)
        colour, _ = styles[label]
        rho = f"rho = {fmt_value(rel['rho'])} [{fmt_value(rel['lo'])}, {fmt_value(rel['hi'])}]"
        ax.scatter(x, y, color=colour, s=28, label=f"{label}: {rho}")
        numbers = weights.loc[layers, "layer_number"].tolist() if "layer_number" in weights.columns else layers
        for xi, yi, n in zip(x, y, numbers, strict=True):
            ax.annotate(str(n), (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=9, color=colour)
    ax.set_xlabel("||ΔW|| / ||W_pretrained|| of the layer")
    ax.set_ylabel("forgetting = STIR(pt|pt) - STIR(ft|pt)")
    ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
    ax.grid(alpha=0.3)
    ax.set_title("Do the layers that moved most forget most?")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, title="run (Spearman)")
    fig.tight_layout()
    return fig
