"""The correlation grid: each hypothesis's Pearson r with corrupted accuracy over epochs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ftlens.analysis import correlation as corr
from ftlens.analysis.dynamics import corrupted_accuracy, read_dynamics, run_metrics
from ftlens.layout import MARKERS
from ftlens.report import analysis_plots as ap
from ftlens.report.figures import fmt_value
from ftlens.report.html import Section, Table, Text, esc
from ftlens.report.inputs import Source
from ftlens.report.sections.common import Labels, figure_block


def section(sources: Sequence[Source], label: Labels) -> Section | None:
    items = [(label(src, name), src, name, path) for src in sources for name, path in src.correlation.items()]
    if not items:
        return None
    s = Section("Forgetting and robustness: the hypothesis grid",
                "Pearson correlation over epochs between each aggregate of the per-layer metrics and the mean corrupted "
                "accuracy; Bonferroni-corrected within each family. The paper's headline hypothesis (std of forgetting "
                "over layers 2..L) is always shown.")
    for lab, src, name, path in items:
        grid = pd.read_csv(path)
        cols = [c for c in ("hypothesis", "family", "r", "p", "p_bonferroni", "significant", "n_epochs") if c in grid.columns]
        head = grid[grid["is_headline"].astype(bool)] if "is_headline" in grid.columns else grid.iloc[:0]
        best = corr.best_hypotheses(grid, k=10)
        dyn_folder = src.dynamics.get(name)
        run = src.run_of(name)
        if dyn_folder is not None and run is not None:
            dyn = read_dynamics(dyn_folder / MARKERS["dynamics"])
            acc = corrupted_accuracy(run_metrics(run))
            s.blocks.append(figure_block(ap.plot_correlation_scatter(dyn, acc), _headline_caption(lab, head)))
            try:
                prefix = corr.prefix_correlation(dyn, acc)
                s.blocks.append(figure_block(ap.plot_prefix_correlation(prefix), f"{lab}: the headline r computed on epochs "
                                     "0..n (paper Fig. 14); where it settles early, forgetting could guide early stopping."))
            except Exception as exc:  # too few epochs
                s.blocks.append(Text(f"<p class='caption'>prefix correlation not available: {esc(exc)}</p>"))
        s.blocks.append(figure_block(ap.plot_top_hypotheses(grid, k=10), f"{lab}: r of the strongest hypotheses per family "
                             "(STIR metrics vs the cka-divergence and subspace baselines); hatched = not significant."))
        s.blocks.append(Table(best[cols].set_index("hypothesis"), f"{lab}: the 10 hypotheses with the largest |r| "
                              f"({len(grid)} tested).", f"{lab}: best hypotheses"))
        if not head.empty:
            s.blocks.append(Table(head[cols].set_index("hypothesis"), "The paper's headline hypothesis on this run "
                                  "(the paper reports r = 0.78 on CIFAR-10-C).", f"{lab}: headline"))
    return s


def _headline_caption(label: str, head: pd.DataFrame) -> str:
    if head.empty:
        return f"{label}: one point per epoch."
    row = head.iloc[0]
    r, p = float(row["r"]), float(row["p"])
    if not np.isfinite(r):
        return f"{label}: one point per epoch; r is undefined on this run."
    sign = "rises" if r > 0 else "falls"
    sig = "significant" if p < 0.05 else "not significant"
    return (f"{label}: one point per epoch. Corrupted accuracy {sign} with the std of forgetting over layers 2..L: "
            f"r = {fmt_value(r)}, p = {p:.2g} ({sig} at 0.05) over {int(row.get('n_epochs', 0))} epochs.")


