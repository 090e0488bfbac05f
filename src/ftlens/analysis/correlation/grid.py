"""The analysis: every hypothesis of the grid correlated with corrupted accuracy over epochs."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ftlens.analysis.correlation.hypotheses import (
    headline_hypothesis,
    hypothesis_grid,
    resolve_hypothesis,
)
from ftlens.analysis.correlation.inputs import aligned_inputs, metric_matrices
from ftlens.analysis.correlation.significance import MIN_EPOCHS, bonferroni, pearson
from ftlens.errors import CorrelationError

RESULT_COLUMNS: tuple[str, ...] = (
    "hypothesis",
    "family",
    "layer_set",
    "first_layer",
    "last_layer",
    "combination",
    "aggregate",
    "r",
    "p",
    "p_bonferroni",
    "significant",
    "n_epochs",
    "n_hypotheses",
    "is_headline",
    "note",
)


def _families_present(matrices: Mapping[str, pd.DataFrame], families: Sequence[str] | None) -> list[str]:
    have = []
    if "learning" in matrices and "forgetting" in matrices:
        have.append("stir")
    have += [f for f in ("cka_divergence", "subspace_similarity") if f in matrices]
    if families is None:
        if ("learning" in matrices) != ("forgetting" in matrices):
            warnings.warn(
                "the table has only one of learning / forgetting: the STIR family needs both "
                "and is skipped",
                stacklevel=3,
            )
        return have
    missing = [f for f in families if f not in have]
    if missing:
        raise CorrelationError(
            f"families {missing} need columns the table lacks (stir: learning and forgetting; "
            f"baselines: a column of the family's name); present: {list(matrices)}"
        )
    return list(families)


def correlation_table(
    table: pd.DataFrame,
    accuracy: Any,
    *,
    layers: Sequence[str] | None = None,
    families: Sequence[str] | None = None,
    scheme: str = "paper",
    alpha: float = 0.05,
    bonferroni_scope: str = "family",
    min_epochs: int = MIN_EPOCHS,
) -> pd.DataFrame:
    """The hypothesis grid, each hypothesis correlated with the per-epoch corrupted accuracy.

    Args:
        table: tidy per-epoch, per-layer table with columns ``epoch, layer, learning,
            forgetting, cka_divergence`` and optionally ``subspace_similarity`` (long form with
            ``metric, value`` columns also accepted); several rows per (epoch, layer) are averaged.
        accuracy: per-epoch mean corrupted accuracy (Series indexed by epoch, mapping, or a
            sequence aligned with the sorted epochs). Only epochs in both inputs are used.
        layers: the ordered layers (layer 1 first); default :func:`layer_order`.
        families: default every family whose columns are present.
        scheme: layer sets, ``"paper"`` (22 for L = 12) or ``"extended"`` (see the module docstring).
        alpha: significance level after Bonferroni correction.
        bonferroni_scope: ``"family"`` (m = hypotheses of the family) or ``"all"`` (m = whole grid).

    Returns:
        DataFrame, one row per hypothesis, columns :data:`RESULT_COLUMNS` (r, p unitless; NaN
        with a ``note`` when undefined; ``is_headline`` marks std of forgetting over layers 2..L).
    """
    if bonferroni_scope not in ("family", "all"):
        raise CorrelationError(f"bonferroni_scope must be 'family' or 'all', got {bonferroni_scope!r}")
    if not 0 < alpha < 1:
        raise CorrelationError(f"alpha must be in (0, 1), got {alpha}")
    matrices, acc = aligned_inputs(table, accuracy, layers)
    fams = _families_present(matrices, families)
    n_layers = next(iter(matrices.values())).shape[1]
    grid = hypothesis_grid(n_layers, fams, scheme=scheme)
    head = headline_hypothesis(n_layers) if n_layers >= 2 and "stir" in fams else None
    y = acc.to_numpy()
    rows = []
    for hyp in grid:
        r, p, n, note = pearson(hyp.evaluate(matrices).to_numpy(), y, min_epochs=min_epochs)
        rows.append(
            {
                "hypothesis": hyp.name,
                "family": hyp.family,
                "layer_set": hyp.layer_set,
                "first_layer": hyp.first_layer,
                "last_layer": hyp.last_layer,
                "combination": hyp.combination,
                "aggregate": hyp.aggregate,
                "r": r,
                "p": p,
                "n_epochs": n,
                "is_headline": hyp == head,
                "note": note,
            }
        )
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    if bonferroni_scope == "family":
        m = df.groupby("family")["hypothesis"].transform("size").to_numpy(dtype=np.int64)
    else:
        m = np.full(len(df), len(df), dtype=np.int64)
    df["n_hypotheses"] = m
    df["p_bonferroni"] = bonferroni(df["p"].to_numpy(), m)
    df["significant"] = np.asarray(df["p_bonferroni"] < alpha, dtype=bool)  # NaN < alpha is False
    df = df[list(RESULT_COLUMNS)]
    df.attrs.update(
        {
            "n_layers": n_layers,
            "layers": list(next(iter(matrices.values())).columns),
            "epochs": list(acc.index),
            "scheme": scheme,
            "alpha": alpha,
            "bonferroni_scope": bonferroni_scope,
            "std_ddof": 0,
        }
    )
    return df


def best_hypotheses(
    results: pd.DataFrame,
    k: int = 10,
    *,
    family: str | None = None,
    significant_only: bool = False,
) -> pd.DataFrame:
    """The ``k`` hypotheses with the largest ``|r|`` (NaN r last, never ranked), best first."""
    df = results
    if family is not None:
        if family not in set(df["family"]):
            raise CorrelationError(f"no hypotheses of family {family!r}; present: {sorted(set(df['family']))}")
        df = df[df["family"] == family]
    if significant_only:
        df = df[df["significant"]]
    df = df[df["r"].notna()]
    order = df["r"].abs().sort_values(ascending=False, kind="stable").index
    return df.loc[order].head(k).reset_index(drop=True)


def headline(
    table: pd.DataFrame,
    accuracy: Any = None,
    **kwargs: Any,
) -> pd.Series:
    """The row of the headline hypothesis, std of forgetting over layers 2..L.

    Either ``headline(results)`` with the output of :func:`correlation_table`, or
    ``headline(table, accuracy, **correlation_table_kwargs)``. Always returns a row: when the
    headline cannot be computed (fewer than 2 layers, no learning / forgetting columns) r and p
    are NaN and ``note`` says why.
    """
    if accuracy is None:
        if "is_headline" not in table.columns:
            raise CorrelationError(
                "headline(results) needs the output of correlation_table; for a dynamics table "
                "call headline(table, accuracy)"
            )
        results = table
    else:
        results = correlation_table(table, accuracy, **kwargs)
    rows = results[results["is_headline"]] if len(results) else results
    if len(rows):
        return rows.iloc[0].copy()
    n_layers = results.attrs.get("n_layers")
    why = (
        f"the table has {n_layers} layer(s); the headline needs at least 2"
        if n_layers is not None and n_layers < 2
        else "no STIR hypotheses (the table needs learning and forgetting columns)"
    )
    return pd.Series(
        {
            "hypothesis": "std(forgetting) over layers 2-L",
            "family": "stir",
            "layer_set": "layers 2-L",
            "first_layer": 2,
            "last_layer": n_layers if n_layers is not None else np.nan,
            "combination": "forgetting",
            "aggregate": "std",
            "r": np.nan,
            "p": np.nan,
            "p_bonferroni": np.nan,
            "significant": False,
            "n_epochs": 0,
            "n_hypotheses": 0,
            "is_headline": True,
            "note": why,
        }
    )


def hypothesis_series(
    table: pd.DataFrame,
    hypothesis: Any = None,
    *,
    layers: Sequence[str] | None = None,
) -> pd.Series:
    """The per-epoch values of one hypothesis (default the headline), indexed by epoch."""
    matrices = metric_matrices(table, layers)
    if not matrices:
        raise CorrelationError(f"the table has no metric columns (columns: {list(table.columns)})")
    n_layers = next(iter(matrices.values())).shape[1]
    return resolve_hypothesis(hypothesis, n_layers).evaluate(matrices)


def prefix_correlation(
    table: pd.DataFrame,
    accuracy: Any,
    hypothesis: Any = None,
    *,
    layers: Sequence[str] | None = None,
    min_epochs: int = MIN_EPOCHS,
) -> pd.DataFrame:
    """Pearson r over the first epochs only, for every prefix (the paper's Fig. 14).

    Row ``epoch = e`` is the correlation over the epochs up to and including ``e`` (sorted; epochs
    0..n for n >= 2 when epochs start at 0 and ``min_epochs = 3``). The last row equals the
    full correlation. ``hypothesis``: None (headline), a name, a :class:`Hypothesis` or a row
    of :func:`correlation_table`.

    Returns:
        DataFrame with columns ``epoch, n_epochs, r, p, hypothesis, note``.
    """
    matrices, acc = aligned_inputs(table, accuracy, layers)
    n_layers = next(iter(matrices.values())).shape[1]
    hyp = resolve_hypothesis(hypothesis, n_layers)
    x = hyp.evaluate(matrices).to_numpy()
    y = acc.to_numpy()
    epochs = list(acc.index)
    rows = []
    for stop in range(max(min_epochs, 2), len(epochs) + 1):
        r, p, n, note = pearson(x[:stop], y[:stop], min_epochs=min_epochs)
        rows.append({"epoch": epochs[stop - 1], "n_epochs": n, "r": r, "p": p, "hypothesis": hyp.name, "note": note})
    return pd.DataFrame(rows, columns=["epoch", "n_epochs", "r", "p", "hypothesis", "note"])
