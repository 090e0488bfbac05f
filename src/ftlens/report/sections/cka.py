"""CKA between every layer of two models (``ftlens cka``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ftlens.cka import load_cka
from ftlens.report.figures import cka_heatmap, decimals_for, fmt_num, layer_label
from ftlens.report.html import Section, Table
from ftlens.report.inputs import Source
from ftlens.report.sections.common import Labels, figure_block


def section(sources: Sequence[Source], label: Labels) -> Section | None:
    items = [(label(src, name), folder) for src in sources for name, folder in src.cka.items()]
    if not items:
        return None
    s = Section("CKA between layers", "Linear CKA (or the measure named in the figure) between every layer of one "
                "model and every layer of another on the same images (CKA: 1 = identical up to rotation and scale).")
    for lab, folder in items:
        result = load_cka(folder)
        matrix, meta = result.matrix, result.config
        a, b = meta.get("first", "the first model"), meta.get("second", "the second model")
        what = "CKA" if "cka" in result.measure else result.measure  # ftlens cka --measure NAME
        fig = cka_heatmap(matrix, title=f"{result.title}: {lab}", xlabel=f"layer of {b}", ylabel=f"layer of {a}",
                          colorbar=result.colorbar)
        values = matrix.to_numpy(dtype=float)
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        digits = decimals_for(hi - lo)
        caption = (f"{lab}: {what} from {fmt_num(lo, digits)} to {fmt_num(hi, digits)} (the colour scale spans this "
                   "range)")
        if values.shape[0] == values.shape[1]:
            caption += f"; mean on the diagonal (same layer) {fmt_num(np.nanmean(np.diag(values)), digits)}"
        if meta.get("images"):
            caption += f"; {meta['images']} images of {meta.get('data', '?')}"
        s.blocks.append(figure_block(fig, caption + "."))
        s.blocks.append(Table(matrix.rename(index=layer_label, columns=layer_label).rename_axis(f"{a} \\ {b}"),
                              f"{lab}: {what} values (rows: layers of {a}; columns: layers of {b}; 1-based).",
                              f"{lab}: {what}", digits=digits, collapsed=True))
    return s


