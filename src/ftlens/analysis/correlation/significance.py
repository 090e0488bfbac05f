"""Pearson's r with its two-sided p, and the Bonferroni correction."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import stats

from ftlens.errors import CorrelationError

MIN_EPOCHS = 3
"""Fewest epochs with finite values for which a correlation is computed."""


def pearson(x: Any, y: Any, *, min_epochs: int = MIN_EPOCHS) -> tuple[float, float, int, str]:
    """``(r, p, n, note)``: Pearson r and two-sided p over the pairs where both are finite.

    NaN r and p, with a note saying why, when fewer than ``min_epochs`` pairs remain or one
    side is constant (e.g. a std over one layer, always 0). Never raises on such data.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mask = np.isfinite(x) & np.isfinite(y)
    n = int(mask.sum())
    if n < max(min_epochs, 2):
        return np.nan, np.nan, n, f"only {n} epochs with finite values; need at least {max(min_epochs, 2)}"
    x, y = x[mask], y[mask]
    for values, what in ((x, "aggregate"), (y, "accuracy")):
        span = float(np.ptp(values))
        if span == 0.0 or span <= 8 * np.finfo(np.float64).eps * float(np.max(np.abs(values))):
            extra = " (e.g. the std over a single layer is 0)" if what == "aggregate" else ""
            return np.nan, np.nan, n, f"{what} is constant over the epochs{extra}: r undefined"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.pearsonr(x, y)
    return float(res.statistic), float(res.pvalue), n, ""


def bonferroni(p: Any, m: Any) -> np.ndarray:
    """``min(1, p * m)`` elementwise (``m``: the number of hypotheses, scalar or per p); NaN stays NaN."""
    m = np.asarray(m, dtype=np.float64)
    if np.any(m < 1):
        raise CorrelationError(f"the number of hypotheses must be >= 1, got {m}")
    p = np.asarray(p, dtype=np.float64)
    return np.where(np.isnan(p), np.nan, np.minimum(1.0, p * m))


