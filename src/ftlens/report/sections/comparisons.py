"""The comparisons: learning, forgetting and cka divergence per layer, InvarianceFlow, inversion quality."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ftlens.invariance import load_comparison
from ftlens.layers import layer_numbers
from ftlens.report import invariance_plots as ip
from ftlens.report.figures import fmt_value, overlay_per_layer
from ftlens.report.html import Section, Table, esc
from ftlens.report.inputs import Source
from ftlens.report.sections.common import METRIC_TEXT, Labels, figure_block, layer_index
from ftlens.vocabulary import FINETUNED, PRETRAINED, residual_column, stir_column


def _load_comparisons(sources: Sequence[Source], label: Labels) -> dict[str, tuple[Source, Any]]:
    out = {}
    for src in sources:
        for name, folder in src.compare.items():
            out[label(src, name)] = (src, load_comparison(folder))
    return out


def _group_key(src: Source, cmp: Any) -> tuple:
    cfg = cmp.config
    data = (cfg.get("data") or {}).get("name") or src.config.get("data") or ""
    return (cfg.get("pretrained", {}).get("name", ""), len(cmp.layers), data)


def _layer_no(table: pd.DataFrame, i: int) -> int:
    """The 1-based position in the model of row ``i`` of a per-layer table (not its row number)."""
    if "layer_number" in table.columns:
        return int(table["layer_number"].iloc[i])
    return layer_numbers([str(n) for n in table.index])[i]


def _describe_metric(tables: dict[str, pd.DataFrame], metric: str) -> str:
    """What the overlaid figure shows, from its numbers."""
    means = {k: float(t[metric].mean()) for k, t in tables.items() if metric in t.columns}
    if not means:
        return ""
    name = METRIC_TEXT[metric][0].lower() if metric in METRIC_TEXT else metric
    if len(means) == 1:
        (label, t), = ((k, tables[k]) for k in means)
        v = t[metric].to_numpy(dtype=float)
        top = int(np.nanargmax(v))
        return (f"{label}: {name} averages {fmt_value(means[label])} over {len(v)} layers, from {fmt_value(v[0])} at "
                f"layer {_layer_no(t, 0)} to {fmt_value(v[-1])} at layer {_layer_no(t, len(v) - 1)}; largest at layer "
                f"{_layer_no(t, top)} ({fmt_value(v[top])}).")
    hi = max(means, key=means.get)
    lo = min(means, key=means.get)
    peak_run, peak_layer, peak = "", 0, -np.inf
    for k, t in tables.items():
        if metric in t.columns:
            v = t[metric].to_numpy(dtype=float)
            if np.isfinite(v).any() and np.nanmax(v) > peak:
                peak, peak_run, peak_layer = float(np.nanmax(v)), k, _layer_no(t, int(np.nanargmax(v)))
    return (f"Mean {name} over layers is highest for {hi} ({fmt_value(means[hi])}) and lowest for {lo} "
            f"({fmt_value(means[lo])}); the largest single value is {fmt_value(peak)} ({peak_run}, layer {peak_layer}).")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _flow_caption(label: str, cmp: Any) -> str:
    """Where the flow points on this run: the corrected flow when the baseline is known, else the raw one."""
    corrected = getattr(cmp, "flow_corrected", None)
    flow = (corrected if corrected is not None else cmp.flow).to_numpy(dtype=float)
    which = "corrected InvarianceFlow (raw minus the pretrained model's own flow)" if corrected is not None \
        else "InvarianceFlow (eq. 5; no baseline recorded, so this includes STIR's own asymmetry)"
    below = flow[np.tril_indices_from(flow, k=-1)]
    above = flow[np.triu_indices_from(flow, k=1)]
    if not below.size:
        return f"{label}: {which} (one layer: nothing off the diagonal)."
    where = "below" if np.nanmean(below) > np.nanmean(above) else "above"
    meaning = "compression toward shallower layers" if where == "below" else "expansion toward deeper layers"
    return (f"{label}: {which}, rows = pretrained layer i, columns = finetuned layer j. Mean below the "
            f"diagonal {fmt_value(np.nanmean(below))}, above {fmt_value(np.nanmean(above))}: on this run the flow points "
            f"{where} the diagonal ({meaning}).")


def section(sources: Sequence[Source], label: Labels) -> Section | None:
    loaded = _load_comparisons(sources, label)
    if not loaded:
        return None
    s = Section("Invariances per layer: learning, forgetting, flow",
                "Every finetuned model against its pretrained one, runs overlaid on shared axes: one figure per metric, "
                "one line per run (scratch: the same architecture trained from random weights, compared with the "
                "pretrained model as in the paper). " + _inversion_quality({k: c for k, (_, c) in loaded.items()})
                + _model_notes({k: c for k, (_, c) in loaded.items()}))
    groups: dict[tuple, dict[str, Any]] = {}
    for lab, (src, cmp) in loaded.items():
        groups.setdefault(_group_key(src, cmp), {})[lab] = cmp
    for (model, _, data), cmps in groups.items():
        tables = {k: c.per_layer for k, c in cmps.items()}
        est = "/".join(sorted({c.estimator for c in cmps.values()}))
        where = f" ({model}{', ' + data if data else ''})" if len(groups) > 1 else ""
        for metric, (title, ylabel) in METRIC_TEXT.items():
            fig = overlay_per_layer(tables, metric, ylabel=ylabel, title=f"{title}{where}; {ip.similarity_note(est)}")
            s.blocks.append(figure_block(fig, _describe_metric(tables, metric)))
        finite = [np.abs(c.flow.to_numpy(dtype=float)) for c in cmps.values()]
        vmax = max((float(np.nanmax(f)) for f in finite if np.isfinite(f).any()), default=1.0) or 1.0
        for lab, cmp in cmps.items():
            if getattr(cmp, "flow_baseline", None) is not None:
                # raw, baseline and corrected side by side: the raw matrix alone mostly shows STIR's own asymmetry
                s.blocks.append(figure_block(ip.flow_panels(cmp, title=lab), f"{lab}: InvarianceFlow (eq. 5) of the finetuned "
                                     "model (raw), next to the pretrained model's own flow (baseline: STIR is "
                                     "directional, so a model compared with itself already has one) and their "
                                     "difference (corrected = raw - baseline, what finetuning changed), on one colour "
                                     "scale. " + _sentence(_flow_caption(lab, cmp).split(": ", 1)[1])))
            else:
                s.blocks.append(figure_block(ip.plot_flow(cmp, title=f"InvarianceFlow: {lab}", vmax=vmax),
                                     _flow_caption(lab, cmp)
                                     + (" Same colour scale for every run." if len(cmps) > 1 else "")))
    for lab, (_, cmp) in loaded.items():
        cols = [c for c in cmp.per_layer.columns if not c.startswith("residual")]
        s.blocks.append(Table(layer_index(cmp.per_layer[cols]), f"{lab}: per-layer metrics ({ip.similarity_note(cmp.estimator)}); *_std is over seeds, *_lo / *_hi the 95% interval (seeds and a bootstrap over "
                              "images); converged: every inversion of the layer ended below the residual threshold "
                              "(unconverged layers are hatched in the figures); stir_pretrained_given_pretrained / "
                              "stir_finetuned_given_finetuned are the measured first terms (inversion quality; 1 = perfect).", f"{lab}: per layer",
                              collapsed=True))
        res = [c for c in cmp.per_layer.columns if c.startswith("residual")]
        res = ["layer_number", *res] if res else res
        if res:
            s.blocks.append(Table(layer_index(cmp.per_layer[res]), f"{lab}: mean final relative inversion residual "
                                  "||r(x') - r(x)|| / ||r(x)|| per layer and reference model (0 = converged).",
                                  f"{lab}: inversion residuals", collapsed=True))
    return s


def _model_notes(comparisons: dict) -> str:
    """Sentences on how models were read: LoRA adapters merged, a token mode other than all tokens."""
    notes = []
    for lab, cmp in comparisons.items():
        for role in ("pretrained", "finetuned"):
            m = cmp.config.get(role) or {}
            lora = m.get("lora")
            if lora:
                notes.append(f"{esc(lab)}: the {role} model {esc(m.get('name', ''))} is a LoRA finetune (rank "
                             f"{esc(lora.get('r'))}, adapter {esc(lora.get('adapter'))}), analysed with its adapters "
                             "merged into the base weights.")
            if m.get("tokens", "all") != "all":
                notes.append(f"{esc(lab)}: layers of the {role} model are read as {esc(m['tokens'])} tokens "
                             "(not all tokens flattened).")
    return (" " + " ".join(notes)) if notes else ""


def _inversion_quality(comparisons: dict) -> str:
    """One sentence on how well the inversions converged (residuals and self-STIR), from the numbers."""
    first = next(iter(comparisons.values()))
    pl = first.per_layer
    parts = []
    res = residual_column(PRETRAINED)
    if res in pl.columns:
        parts.append(f"final relative residual of the pretrained-side inversions: {fmt_value(pl[res].iloc[0])} "
                     f"at layer {_layer_no(pl, 0)} to {fmt_value(pl[res].iloc[-1])} at layer "
                     f"{_layer_no(pl, len(pl) - 1)}")
    selfs = [c.per_layer[col] for c in comparisons.values()
             for col in (stir_column(PRETRAINED, PRETRAINED), stir_column(FINETUNED, FINETUNED))
             if col in c.per_layer.columns]
    if selfs:
        lo = min(float(v.min()) for v in selfs)
        hi = max(float(v.max()) for v in selfs)
        parts.append(f"STIR of a layer with itself (1 = perfect inversion) between {fmt_value(lo)} and {fmt_value(hi)}")
    if not parts:
        return ""
    return ("Inversion quality: " + "; ".join(parts) + ". Learning and forgetting use these measured self-STIR "
            "terms, so inversion error largely cancels; the residual tables give every layer.")


