"""Intervals and verdicts: the statistics every reported number and finding uses.

- :func:`t_interval`: the ``level`` interval of a mean from ``k`` independent values (seeds),
  Student t with ``k - 1`` degrees of freedom; NaN for fewer than 2 values.
- :func:`welch_interval`: the interval of a difference of two means (Welch-Satterthwaite).
- :func:`percentile_interval`: the percentile interval of bootstrap replicates.
- :func:`bootstrap_interval`: the normal interval ``estimate -+ z * sd(replicates)``. CKA on a
  resample with repeated images is shifted (repeats weigh those images more), so the
  replicates are used for the spread only, centred on the estimate from the real images.
- :func:`correlation_interval`: Pearson or Spearman r over pairs with its Fisher-z interval.
- :func:`decide`: a verdict from an interval and the claimed direction: ``held`` when the
  interval excludes the null on the claimed side, ``did not hold`` when it excludes it on the
  other side, otherwise ``inconclusive``; any reason given (too few seeds, unconverged
  inversions, confounded runs) makes it inconclusive whatever the interval says.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = ["HELD", "INCONCLUSIVE", "NOT_HELD", "VERDICTS", "bootstrap_interval", "correlation_interval", "decide",
           "percentile_interval",
           "t_interval", "welch_interval"]

HELD = "held"
NOT_HELD = "did not hold"
INCONCLUSIVE = "inconclusive"
VERDICTS = (HELD, NOT_HELD, INCONCLUSIVE)


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``mean -+ t_{k-1, (1+level)/2} * sd / sqrt(k)`` along ``axis`` -> ``(lo, hi)`` (NaN if k < 2)."""
    v = np.asarray(values, dtype=np.float64)
    k = v.shape[axis]
    mean = v.mean(axis=axis)
    if k < 2:
        nan = np.full_like(mean, np.nan, dtype=np.float64)
        return nan, nan.copy()
    half = stats.t.ppf(0.5 + level / 2, k - 1) * v.std(axis=axis, ddof=1) / np.sqrt(k)
    return mean - half, mean + half


def welch_interval(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                   level: float = 0.95) -> tuple[float, float]:
    """Interval of ``mean(a) - mean(b)`` (independent samples, unequal variances); NaN if either has < 2."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return float("nan"), float("nan")
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    diff = x.mean() - y.mean()
    se = np.sqrt(vx + vy)
    if se == 0:
        return float(diff), float(diff)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return float(diff - half), float(diff + half)


def percentile_interval(replicates: np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``(1-level)/2`` and ``(1+level)/2`` quantiles of bootstrap replicates along ``axis``."""
    r = np.asarray(replicates, dtype=np.float64)
    if r.shape[axis] == 0:
        shape = np.delete(np.array(r.shape), axis)
        nan = np.full(tuple(shape), np.nan)
        return nan, nan.copy()
    lo, hi = np.quantile(r, [0.5 - level / 2, 0.5 + level / 2], axis=axis)
    return lo, hi


def bootstrap_interval(estimate: np.ndarray, replicates: np.ndarray, level: float = 0.95,
                       axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``estimate -+ z_{(1+level)/2} * sd(replicates)`` (sd along ``axis``, ddof 1); NaN for < 2 replicates."""
    r = np.asarray(replicates, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    if r.shape[axis] < 2:
        nan = np.full_like(est, np.nan)
        return nan, nan.copy()
    half = stats.norm.ppf(0.5 + level / 2) * r.std(axis=axis, ddof=1)
    return est - half, est + half


def decide(lo: float, hi: float, *, direction: str = "greater", null: float = 0.0,
           reasons: Sequence[str] = (), margin: float | None = None) -> tuple[str, str | None]:
    """``(verdict, reason)`` for a claim that the statistic is ``direction`` ('greater'/'less') than ``null``.

    Held when the interval ``[lo, hi]`` lies on the claimed side of ``null``, did not hold when
    it lies on the other side or, with a ``margin``, inside ``(null - margin, null + margin)``
    (equivalence: no effect of at least ``margin`` either way), inconclusive otherwise."""
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    if reasons:
        return INCONCLUSIVE, "; ".join(reasons)
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return INCONCLUSIVE, "no interval (too few independent values)"
    above, below = lo > null, hi < null
    if (above and direction == "greater") or (below and direction == "less"):
        return HELD, None
    if above or below:
        return NOT_HELD, None
    if margin is not None and null - margin < lo and hi < null + margin:
        return NOT_HELD, (f"the interval [{lo:.4g}, {hi:.4g}] lies within +-{margin:g} of {null:g}: "
                          f"no effect of that size either way")
    return INCONCLUSIVE, f"the interval [{lo:.4g}, {hi:.4g}] contains the null value {null:g}"


def correlation_interval(x: Sequence[float], y: Sequence[float], level: float = 0.95,
                         method: str = "spearman") -> tuple[float, float, float, int]:
    """``(r, lo, hi, n)``: Pearson or Spearman correlation of the finite pairs of ``x`` and ``y`` and
    its ``level`` interval from Fisher's z (``atanh r``) with standard error ``1 / sqrt(n - 3)``
    (Pearson) or Bonett & Wright's ``sqrt((1 + r^2 / 2) / (n - 3))`` (Spearman). The interval is
    NaN for fewer than 4 pairs; ``r`` is NaN when either side is constant."""
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan"), float("nan"), n
    r = float((stats.spearmanr if method == "spearman" else stats.pearsonr)(a, b)[0])
    if n < 4:
        return r, float("nan"), float("nan"), n
    se = np.sqrt((1.0 + r * r / 2.0) / (n - 3)) if method == "spearman" else 1.0 / np.sqrt(n - 3)
    z = np.arctanh(np.clip(r, -1 + 1e-15, 1 - 1e-15))
    half = stats.norm.ppf(0.5 + level / 2) * se
    return r, float(np.tanh(z - half)), float(np.tanh(z + half)), n
