"""Feature distortion: how far the finetuned features moved from the pretrained ones, ID and OOD."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ftlens.findings import energy_sweep
from ftlens.report import analysis_plots as ap
from ftlens.report.figures import fmt_value
from ftlens.report.html import Section, Table
from ftlens.report.inputs import Source
from ftlens.report.sections.common import Labels, figure_block
from ftlens.settings import PAPER


def section(sources: Sequence[Source], label: Labels) -> Section | None:
    items = [(src, pd.read_csv(src.distortion)) for src in sources if src.distortion is not None]
    if not items:
        return None
    s = Section("Feature distortion (Kumar et al.)",
                "Pre-logit and per-layer features of each finetuned model against the pretrained ones, on clean (ID) "
                "and corrupted (OOD) test images.")
    for src, d in items:
        d = d.assign(run=[label(src, r) for r in d["run"]])
        pl = d[d["layer"] == "pre_logits"].pivot_table(index="run", columns=["split", "measure"], values="value")
        s.blocks.append(figure_block(ap.plot_distortion(d, measure="mean_squared_difference", model_column="run"),
                             _distortion_caption(pl, "mean_squared_difference", "mean squared difference")))
        s.blocks.append(figure_block(ap.plot_distortion(d, measure="cosine_distance", model_column="run"),
                             _distortion_caption(pl, "cosine_distance", "mean cosine distance")))
        table, with_ci = _with_intervals(d[d["layer"] == "pre_logits"], pl)
        table.columns = [f"{split}: {measure}" for split, measure in table.columns]
        s.blocks.append(Table(table, "Pre-logit distortion per run (feature units; cosine distance unitless)"
                              + (f"; in brackets the {PAPER.confidence:.0%} interval from a bootstrap over the "
                                 "images." if with_ci else "."),
                              "Distortion" + (f": {src.name}" if label.many else "")))
        energy = energy_sweep(src.root, pd.read_csv(src.distortion)) if src.experiment else None
        if energy is not None and not energy.empty:
            s.blocks.append(figure_block(ap.plot_energy_vs_distortion(energy), "HP-FT sweep: each point is one run, placed by "
                                 "its training loss when full finetuning started (the energy left for finetuning); "
                                 "one line per image split (Ren et al. 2023)."))
    return s


def _with_intervals(rows: pd.DataFrame, pl: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """``pl``'s values as "value [low, high]" when the table has intervals (results of older versions have none)."""
    if not {"ci_low", "ci_high"} <= set(rows.columns):
        return pl.copy(), False
    lo = rows.pivot_table(index="run", columns=["split", "measure"], values="ci_low").reindex_like(pl)
    hi = rows.pivot_table(index="run", columns=["split", "measure"], values="ci_high").reindex_like(pl)
    text = pl.copy().astype(object)
    for col in pl.columns:
        text[col] = [f"{fmt_value(v)} [{fmt_value(a)}, {fmt_value(b)}]"
                     for v, a, b in zip(pl[col], lo[col], hi[col], strict=True)]
    return text, True


def _distortion_caption(pl: pd.DataFrame, measure: str, words: str) -> str:
    try:
        id_col = pl[("ID", measure)]
    except KeyError:
        return f"Pre-logit {words} to the pretrained features, ID vs OOD."
    hi, lo = id_col.idxmax(), id_col.idxmin()
    return (f"Pre-logit {words} to the pretrained features on ID images: largest for {hi} ({fmt_value(id_col[hi])}), "
            f"smallest for {lo} ({fmt_value(id_col[lo])}).")


