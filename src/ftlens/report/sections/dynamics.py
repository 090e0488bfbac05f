"""Dynamics over finetuning epochs: the per-layer metrics of each epoch next to accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ftlens.analysis.dynamics import read_dynamics, run_metrics, severity_accuracy
from ftlens.layout import MARKERS
from ftlens.report import dynamics_plots as dp
from ftlens.report.figures import fmt_value, layer_label, overlay_epochs
from ftlens.report.html import Section, Table
from ftlens.report.inputs import Source
from ftlens.report.sections.common import METRIC_TEXT, Labels, figure_block


def section(sources: Sequence[Source], label: Labels) -> Section | None:
    items = [(label(src, name), src, name, folder) for src in sources for name, folder in src.dynamics.items()]
    if not items:
        return None
    s = Section("Dynamics over finetuning epochs",
                "Each epoch's checkpoint against the pretrained model (pretrained-side inversions computed once and "
                "reused), next to clean and corrupted accuracy.")
    means = {}
    for lab, src, name, folder in items:
        dyn = read_dynamics(folder / MARKERS["dynamics"])
        means[lab] = dyn.groupby("epoch")[["learning", "forgetting", "cka_divergence"]].mean()
        est = str(dyn["estimator"].iloc[0]) if "estimator" in dyn.columns and len(dyn) else "biased"
        similarity = f"{est} CKA" if est in ("biased", "debiased") else f"STIR by {est}"
        s.blocks.append(figure_block(dp.metric_over_epochs(dyn, estimator=similarity), _dynamics_caption(lab, dyn)))
        run = src.run_of(name)
        metrics = run_metrics(run) if run is not None else pd.DataFrame()
        if not metrics.empty:
            s.blocks.append(figure_block(dp.accuracy_over_epochs(metrics, severity_accuracy(metrics)),
                                 _accuracy_epochs_caption(lab, metrics)))
        s.blocks.append(Table(means[lab], f"{lab}: mean over layers per epoch.", f"{lab}: per epoch"))
    if len(means) > 1:  # several runs: overlaid first, one figure per metric

        overlays = []
        for metric, (title, ylabel) in METRIC_TEXT.items():
            last = {k: float(v[metric].iloc[-1]) for k, v in means.items()}
            hi = max(last, key=last.get)
            overlays.append(figure_block(overlay_epochs(means, metric, ylabel=ylabel, title=f"{title}, mean over layers"),
                                 f"{title} averaged over layers, one line per run; at the last epoch highest for {hi} "
                                 f"({fmt_value(last[hi])})."))
        s.blocks = overlays + s.blocks
    return s


def _dynamics_caption(label: str, dyn: pd.DataFrame) -> str:
    last = dyn[dyn["epoch"] == dyn["epoch"].max()]
    if last.empty or "forgetting" not in last.columns:
        return f"{label}: per-layer metrics over epochs (colour = depth)."
    order = list(dict.fromkeys(dyn["layer"]))
    f = last.set_index("layer")["forgetting"].reindex(order)
    top = f.idxmax()
    low = f.idxmin()
    return (f"{label}: learning, forgetting and cka divergence per layer over epochs (colour = depth). At the last "
            f"epoch ({int(dyn['epoch'].max())}) forgetting is largest at layer {layer_label(str(top))} "
            f"({fmt_value(f[top])}) and smallest at layer {layer_label(str(low))} ({fmt_value(f[low])}).")


def _accuracy_epochs_caption(label: str, metrics: pd.DataFrame) -> str:
    m = metrics.drop_duplicates("epoch", keep="last").sort_values("epoch")
    parts = [f"{label}: clean accuracy and accuracy per corruption severity over epochs"]
    if "test_acc" in m.columns and m["test_acc"].notna().any():
        parts.append(f"clean accuracy goes from {fmt_value(m['test_acc'].iloc[0])} (epoch {int(m['epoch'].iloc[0])}) to "
                     f"{fmt_value(m['test_acc'].iloc[-1])} (epoch {int(m['epoch'].iloc[-1])})")
    if "corrupted_acc_mean" in m.columns and m["corrupted_acc_mean"].notna().any():
        parts.append(f"mean corrupted accuracy from {fmt_value(m['corrupted_acc_mean'].iloc[0])} to "
                     f"{fmt_value(m['corrupted_acc_mean'].iloc[-1])}")
    return "; ".join(parts) + "."


