"""Do the layers whose weights moved most also forget most? A rank correlation over layers.

Spearman's rho between a weight-change column of :attr:`WeightDiff.per_layer` (default
``relative_change``) and a per-layer metric of a comparison (default ``forgetting``) over the
layers both have, with the Fisher-z interval of Bonett & Wright
(:func:`ftlens.stats.correlation_interval`) and a verdict (:func:`ftlens.stats.decide`) on the
claim rho > 0: ``held`` when the interval is above 0, ``did not hold`` when below, otherwise
``inconclusive`` (always with fewer than 4 layers, or when an inversion of a layer did not
converge). The interval treats the layers as independent pairs and the metric's own uncertainty
(seeds, images) is not in it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ftlens.errors import ConfigError
from ftlens.settings import PAPER
from ftlens.stats import correlation_interval, decide

__all__ = ["moved_vs_forgetting"]


def moved_vs_forgetting(weights: pd.DataFrame, per_layer: pd.DataFrame, *, moved: str = "relative_change",
                        metric: str = "forgetting", level: float = PAPER.confidence) -> dict[str, Any]:
    """Spearman rho of ``weights[moved]`` and ``per_layer[metric]`` over their shared layers.

    Args:
        weights: a weight diff's per-layer table (index: layer names).
        per_layer: a comparison's per-layer table (index: layer names; a ``converged`` column
            is used when present).

    Returns:
        ``{"rho", "lo", "hi", "n_layers", "layers", "verdict", "reason", "moved", "metric", "level",
        "method"}``.
    """
    for table, column, what in ((weights, moved, "the weight diff"), (per_layer, metric, "the comparison")):
        if column not in table.columns:
            raise ConfigError(f"{what} has no per-layer column {column!r}; it has {list(table.columns)}")
    layers = [layer for layer in weights.index if layer in per_layer.index]
    x = weights.loc[layers, moved].to_numpy(dtype=float)
    y = per_layer.loc[layers, metric].to_numpy(dtype=float)
    rho, lo, hi, n = correlation_interval(x, y, level, method="spearman")
    reasons = []
    if n < 4:
        reasons.append(f"{n} layer(s) with both values (a rank correlation over layers needs at least 4)")
    if "converged" in per_layer.columns:
        bad = [layer for layer in layers if not bool(per_layer.loc[layer, "converged"])]
        if bad:
            reasons.append(f"the inversions of layer(s) {', '.join(bad)} did not converge")
    verdict, reason = decide(lo, hi, direction="greater", reasons=reasons)
    return {"rho": rho, "lo": lo, "hi": hi, "n_layers": n, "layers": layers, "verdict": verdict, "reason": reason,
            "moved": moved, "metric": metric, "level": level,
            "method": "Spearman rank correlation over layers; Fisher-z interval (Bonett & Wright standard error)"}
