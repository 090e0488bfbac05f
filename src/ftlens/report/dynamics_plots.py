"""Figures of a finetuning run over epochs (paper Fig. 5, 11-13)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ftlens.report.figures import layer_label, styled

METRICS = {
    "learning": "learning (STIR, unitless)",
    "forgetting": "forgetting (STIR, unitless)",
    "cka_divergence": "cka divergence (1 - CKA)",
}


@styled
def metric_over_epochs(dyn: pd.DataFrame, *, estimator: str = "biased CKA") -> Figure:
    """One panel per metric: a line per layer over epochs (colour = depth)."""
    layers = list(dict.fromkeys(dyn["layer"]))
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 3, figsize=(10.4, 3.8), sharex=True)
    for ax, (metric, label) in zip(axes, METRICS.items(), strict=False):
        for k, layer in enumerate(layers):
            d = dyn[dyn["layer"] == layer].sort_values("epoch")
            colour = cmap(k / max(1, len(layers) - 1))
            ax.plot(d["epoch"], d[metric], color=colour, lw=1.4, label=f"layer {layer_label(layer)}")
            lo, hi, std = f"{metric}_lo", f"{metric}_hi", f"{metric}_std"
            if lo in d.columns and hi in d.columns and d[lo].notna().any():  # the 95% interval: the noise floor
                ax.fill_between(d["epoch"], d[lo], d[hi], color=colour, alpha=0.12, lw=0)
            elif std in d.columns and d[std].notna().any():
                ax.fill_between(d["epoch"], d[metric] - d[std], d[metric] + d[std], color=colour, alpha=0.12, lw=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.axhline(0, color="0.6", lw=0.7)
        ax.set_title(metric.replace("_", " "))
    ncol = 1 if len(layers) <= 14 else 2
    axes[-1].legend(ncol=ncol, title="layer", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    band = "95% interval" if f"{next(iter(METRICS))}_lo" in dyn.columns else "±1 std over seeds"
    fig.suptitle(f"Dynamics against the pretrained model ({estimator}; band = {band})", fontsize=10)
    fig.tight_layout()
    return fig


@styled
def accuracy_over_epochs(metrics: pd.DataFrame, severities: pd.DataFrame | None = None) -> Figure:
    """ID test accuracy and corrupted accuracy per severity over epochs (paper Fig. 5c, 13)."""
    m = metrics.drop_duplicates("epoch", keep="last").sort_values("epoch")
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    if "test_acc" in m.columns:
        ax.plot(m["epoch"], m["test_acc"], color="black", lw=2, marker="o", ms=3, label="clean test (ID)")
    if severities is not None and not severities.empty:
        cmap = plt.get_cmap("autumn")
        for k, col in enumerate(severities.columns):
            ax.plot(severities.index, severities[col], color=cmap(k / max(1, len(severities.columns))), lw=1.3,
                    marker=".", label=f"corrupted, {col}")
    if "corrupted_acc_mean" in m.columns:
        ax.plot(m["epoch"], m["corrupted_acc_mean"], color="tab:red", lw=2, ls="--", label="corrupted, mean")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (fraction correct)")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title("Accuracy over finetuning epochs", fontsize=10)
    fig.tight_layout()
    return fig


@styled
def residual_per_layer(per_layer: dict[str, pd.DataFrame]):
    """Mean final inversion residual per layer, one line per comparison (lower = better inversion)."""
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for name, df in per_layer.items():
        cols = [c for c in df.columns if c.startswith("residual") and not c.endswith("_std")]
        for col in cols:
            ax.plot([layer_label(x) for x in df.index], df[col], marker="o", ms=3, label=f"{name}: {col}")
    ax.set_xlabel("layer (1 = first block)")
    ax.set_ylabel("relative L2 residual ||r(x') - r(x)|| / ||r(x)||")
    ax.set_title("Inversion quality per layer", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig
