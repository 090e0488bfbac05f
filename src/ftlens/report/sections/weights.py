"""What finetuning changed in the weights (``ftlens weights``, ``weights/`` of a comparison), and whether
the layers whose weights moved most also forget most."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftlens.analysis.weight_space import load_weight_diff, moved_vs_forgetting
from ftlens.invariance import load_comparison
from ftlens.layout import MARKERS
from ftlens.report import weight_plots as wp
from ftlens.report.figures import fmt_value
from ftlens.report.html import Section, Table, Text, esc
from ftlens.report.inputs import Source
from ftlens.report.sections.common import Labels, figure_block, layer_index

COLUMNS = ["layer_number", "relative_change", "cosine", "effective_rank", "stable_rank", "bn_mean_shift",
           "bn_log_var_ratio", "n_parameters"]


def _items(sources: Sequence[Source], label: Labels) -> list[tuple[str, Any, Path | None]]:
    """``(label, WeightDiff, the comparison folder it belongs to or None)``, labelled like the comparisons."""
    out = []
    for src in sources:
        for name, folder in src.weights.items():
            parent = folder.parent
            paired = parent if (parent / MARKERS["compare"]).exists() else None
            if paired is not None:
                name = next((n for n, f in src.compare.items() if Path(f) == parent), parent.name)
            out.append((label(src, name), load_weight_diff(folder), paired))
    return out


def _describe(label: str, per_layer: pd.DataFrame) -> str:
    change = per_layer["relative_change"].to_numpy(dtype=float)
    if not np.isfinite(change).any():
        return f"{label}: no analysis layer has weights of its own."
    top = int(np.nanargmax(change))
    low = int(np.nanargmin(change))
    number = per_layer["layer_number"].astype(int).tolist()
    text = (f"{label}: the weights moved most in layer {number[top]} ({fmt_value(change[top])} of their norm) and "
            f"least in layer {number[low]} ({fmt_value(change[low])})")
    rank = per_layer["effective_rank"].to_numpy(dtype=float)
    if np.isfinite(rank).any():
        text += f"; the effective rank of ΔW ranges from {fmt_value(np.nanmin(rank))} to {fmt_value(np.nanmax(rank))}"
    return text + "."


def _answer(label: str, rel: dict[str, Any]) -> str:
    level = int(round(100 * rel["level"]))
    interval = f"rho = {fmt_value(rel['rho'])}, {level}% interval [{fmt_value(rel['lo'])}, {fmt_value(rel['hi'])}]"
    meaning = {"held": "yes: the layers whose weights moved most also forget most",
               "did not hold": "no: the layers whose weights moved most forget least",
               "inconclusive": "not decided"}[rel["verdict"]]
    why = f" ({rel['reason']})" if rel.get("reason") else ""
    return f"{label}: {meaning}{why}; Spearman {interval} over {rel['n_layers']} layers."


def section(sources: Sequence[Source], label: Labels) -> Section | None:
    items = _items(sources, label)
    if not items:
        return None
    s = Section("What changed in the weights",
                "Per layer, how far finetuning moved the weights (||W_ft - W_pt|| / ||W_pt|| over the layer's "
                "parameters, float64) and the effective rank of the change ΔW (exp of the entropy of its normalised "
                "singular values, weighted over the layer's matrices by ||ΔW||²); a LoRA finetune's adapted weights "
                "use the adapter's own B A · scale. Where the same two models were compared, the layers' weight "
                "change is set against their forgetting: do the layers that moved most forget most?")
    tables = {lab: diff.per_layer for lab, diff, _ in items}
    s.blocks.append(figure_block(wp.weight_change_per_layer(tables),
                                 " ".join(_describe(lab, t) for lab, t in tables.items())))
    points, answers, rows = {}, [], {}
    for lab, diff, folder in items:
        if folder is None:
            continue
        per_layer = load_comparison(folder).per_layer
        rel = moved_vs_forgetting(diff.per_layer, per_layer)
        points[lab] = (diff.per_layer, per_layer, rel)
        answers.append(_answer(lab, rel))
        rows[lab] = {"spearman_rho": rel["rho"], "lo": rel["lo"], "hi": rel["hi"], "layers": rel["n_layers"],
                     "verdict": rel["verdict"], "reason": rel["reason"] or ""}
    if points:
        s.blocks.append(figure_block(wp.moved_vs_forgetting_scatter(points), " ".join(answers)
                                     + " The interval treats the layers as independent pairs; the seeds' and images' "
                                     "uncertainty of forgetting is not in it."))
        s.blocks.append(Table(pd.DataFrame(rows).T.rename_axis("run"), "Spearman rank correlation over layers between "
                              "the relative weight change and forgetting, its Fisher-z interval (Bonett & Wright) and "
                              "the verdict on rho > 0.", "Weights moved vs forgetting"))
    for lab, diff, _ in items:
        cols = [c for c in COLUMNS if c in diff.per_layer.columns and diff.per_layer[c].notna().any()]
        s.blocks.append(Table(layer_index(diff.per_layer[cols]), f"{lab}: weight change per layer (float64): "
                              "relative change and cosine over the layer's parameters; effective / stable rank of ΔW "
                              "(weighted over its matrices); BatchNorm mean shift in pretrained standard deviations and "
                              "log variance ratio (RMS over channels).", f"{lab}: weights per layer", collapsed=True))
        total = diff.config.get("total", {})
        s.blocks.append(Text(f"<p>{esc(lab)}: over all {esc(total.get('n_parameters', '?'))} parameters of the same "
                             f"shape, relative change {esc(fmt_value(total.get('relative_change')))} and cosine "
                             f"{esc(fmt_value(total.get('cosine')))}; outside the analysis layers (stem, embeddings, "
                             f"head) {esc(fmt_value(total.get('outside_layers_relative_change')))}.</p>"))
    return s
