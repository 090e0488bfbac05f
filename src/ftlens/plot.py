"""The figures of ftlens, public: each function returns a matplotlib Figure (nothing is shown or saved).

- per-layer metrics:  :func:`per_layer` (one comparison, three panels), :func:`overlay` (several
  runs on shared axes, one figure per metric), :func:`flow` (InvarianceFlow heat map)
- similarity:         :func:`cka` (layer x layer heat map, adaptive scale, values in the cells)
- over epochs:        :func:`dynamics`, :func:`accuracy_over_epochs`, :func:`overlay_epochs`
- robustness:         :func:`correlation_scatter`, :func:`top_hypotheses`, :func:`prefix_correlation`
- distortion:         :func:`distortion`, :func:`energy_vs_distortion`
- :func:`save` writes a Figure as PNG atomically; :data:`STYLE` is the style every figure uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ftlens.report.analysis_plots import plot_correlation_scatter as correlation_scatter
from ftlens.report.analysis_plots import plot_distortion as distortion
from ftlens.report.analysis_plots import plot_energy_vs_distortion as energy_vs_distortion
from ftlens.report.analysis_plots import plot_prefix_correlation as prefix_correlation
from ftlens.report.analysis_plots import plot_top_hypotheses as top_hypotheses
from ftlens.report.dynamics_plots import accuracy_over_epochs
from ftlens.report.dynamics_plots import metric_over_epochs as dynamics
from ftlens.report.figures import STYLE, overlay_epochs
from ftlens.report.figures import cka_heatmap as cka
from ftlens.report.figures import save_figure as save
from ftlens.report.invariance_plots import flow_heatmap as flow
from ftlens.report.invariance_plots import metric_panels as per_layer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "STYLE",
    "accuracy_over_epochs",
    "cka",
    "correlation_scatter",
    "distortion",
    "dynamics",
    "energy_vs_distortion",
    "flow",
    "overlay",
    "overlay_epochs",
    "per_layer",
    "prefix_correlation",
    "save",
    "top_hypotheses",
]

_LABELS = {
    "learning": "learning = STIR(ft|ft) - STIR(pt|ft)",
    "forgetting": "forgetting = STIR(pt|pt) - STIR(ft|pt)",
    "cka_divergence": "cka divergence = 1 - CKA(ft, pt)",
}


def overlay(comparisons: Mapping[str, Any], metric: str = "forgetting", *, title: str | None = None) -> Figure:
    """One line per run over layers for ``metric`` (``learning``, ``forgetting``, ``cka_divergence``
    or any ``per_layer`` column), bands = intervals or ± std over seeds.

    ``comparisons``: ``{label: Comparison or per-layer table}``.
    """
    from ftlens.report.figures import overlay_per_layer

    tables = {k: getattr(v, "per_layer", v) for k, v in comparisons.items()}
    return overlay_per_layer(tables, metric, ylabel=_LABELS.get(metric, metric),
                             title=title or metric.replace("_", " ").capitalize())
