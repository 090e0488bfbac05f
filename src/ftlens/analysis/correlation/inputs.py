"""The inputs of the correlation: per-layer metric matrices (epochs x layers) and accuracy per epoch."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ftlens.errors import CorrelationError


def layer_order(table: pd.DataFrame, layers: Sequence[str] | None = None) -> list[str]:
    """The ordered layers (layer 1 first) used for the layer sets.

    ``layers`` given: exactly those, in that order (each must be in the table; other layers of
    the table, e.g. ``pre_logits``, are ignored). Otherwise: the categories of an ordered
    categorical ``layer`` column; else, when every name is ``<prefix><number>`` with one common
    prefix (``blocks.0``, ``blocks.1``, ...), by that number (so a table sorted as strings,
    ``blocks.10`` before ``blocks.2``, still comes out right); else the order of first
    appearance in the table (the execution order of a dynamics table).
    """
    if "layer" not in table.columns:
        raise CorrelationError(
            f"the table has no 'layer' column (columns: {list(table.columns)}); pass the tidy "
            "per-epoch, per-layer table of ftlens.analysis.dynamics"
        )
    present = list(pd.unique(table["layer"].astype(str)))
    if layers is not None:
        layers = [str(x) for x in layers]
        missing = [x for x in layers if x not in present]
        if missing:
            raise CorrelationError(f"layers {missing} are not in the table; it has {present}")
        if len(set(layers)) != len(layers):
            raise CorrelationError(f"layers {layers} name a layer twice")
        return layers
    col = table["layer"]
    if isinstance(col.dtype, pd.CategoricalDtype) and col.dtype.ordered:
        return [str(c) for c in col.dtype.categories if str(c) in present]
    matches = [re.fullmatch(r"(.*?)(\d+)", name) for name in present]
    if present and all(matches) and len({m.group(1) for m in matches if m}) == 1:
        return sorted(present, key=lambda name: int(re.fullmatch(r"(.*?)(\d+)", name).group(2)))  # type: ignore[union-attr]
    return present


def _long_to_wide(table: pd.DataFrame) -> pd.DataFrame:
    """Accept the long form (``metric``, ``value`` columns) as well as the wide one."""
    if {"metric", "value"} <= set(table.columns) and not (
        {"learning", "forgetting", "cka_divergence"} & set(table.columns)
    ):
        keys = [c for c in ("epoch", "layer", "metric") if c in table.columns]
        grouped = table.groupby(keys, sort=False, observed=True)["value"].mean()
        return grouped.unstack("metric").reset_index()
    return table


def metric_matrices(
    table: pd.DataFrame,
    layers: Sequence[str] | None = None,
    columns: Sequence[str] = ("learning", "forgetting", "cka_divergence", "subspace_similarity"),
) -> dict[str, pd.DataFrame]:
    """``{column: DataFrame (epoch x layer)}`` for the columns present, epochs sorted, layers ordered.

    Several rows for one (epoch, layer) (e.g. one per seed) are averaged.
    """
    table = _long_to_wide(table)
    if "epoch" not in table.columns:
        raise CorrelationError(
            f"the table has no 'epoch' column (columns: {list(table.columns)}); pass the tidy "
            "per-epoch, per-layer table of ftlens.analysis.dynamics"
        )
    order = layer_order(table, layers)
    sub = table[table["layer"].astype(str).isin(order)].copy()
    sub["layer"] = sub["layer"].astype(str)
    epochs = sorted(pd.unique(sub["epoch"]))
    out: dict[str, pd.DataFrame] = {}
    for column in columns:
        if column not in sub.columns:
            continue
        values = pd.to_numeric(sub[column], errors="coerce")
        wide = (
            values.groupby([sub["epoch"], sub["layer"]]).mean().unstack("layer")
            .reindex(index=epochs, columns=order)
        )
        wide.index.name = "epoch"
        wide.columns.name = "layer"
        out[column] = wide.astype(np.float64)
    return out


def accuracy_by_epoch(accuracy: Any, epochs: Sequence[Any] | None = None) -> pd.Series:
    """The per-epoch mean corrupted accuracy as a float Series indexed by epoch.

    ``accuracy``: a Series indexed by epoch, a mapping ``{epoch: accuracy}``, or a 1-D sequence
    aligned with ``epochs`` (sorted; required then, same length).
    """
    if isinstance(accuracy, pd.DataFrame):
        raise CorrelationError(
            "accuracy is a DataFrame; pass one per-epoch Series indexed by epoch, e.g. "
            "ftlens.analysis.dynamics.corrupted_accuracy(metrics)"
        )
    if isinstance(accuracy, pd.Series):
        series = accuracy.astype(np.float64)
    elif isinstance(accuracy, Mapping):
        series = pd.Series({k: float(v) for k, v in accuracy.items()}, dtype=np.float64)
    else:
        values = np.asarray(accuracy, dtype=np.float64)
        if values.ndim != 1:
            raise CorrelationError(f"accuracy must be 1-D (one value per epoch), got shape {values.shape}")
        if epochs is None or len(epochs) != len(values):
            raise CorrelationError(
                f"accuracy is a plain sequence of {len(values)} values but the table has "
                f"{'no' if epochs is None else len(epochs)} epochs; pass a Series indexed by epoch"
            )
        series = pd.Series(values, index=list(epochs), dtype=np.float64)
    if series.index.has_duplicates:
        raise CorrelationError("accuracy has several values for one epoch; give one value per epoch")
    series = series.sort_index()
    series.index.name = "epoch"
    series.name = "corrupted_accuracy"
    return series


def aligned_inputs(
    table: pd.DataFrame, accuracy: Any, layers: Sequence[str] | None = None
) -> tuple[dict[str, pd.DataFrame], pd.Series]:
    """``(metric matrices {column: epoch x layer}, accuracy Series)`` on the epochs both share.

    Epochs in only one input are dropped with a warning that lists them.
    """
    matrices = metric_matrices(table, layers)
    if not matrices:
        raise CorrelationError(
            "the table has none of the metric columns learning, forgetting, cka_divergence, "
            f"subspace_similarity (columns: {list(table.columns)})"
        )
    epochs = list(next(iter(matrices.values())).index)
    acc = accuracy_by_epoch(accuracy, epochs)
    common = [e for e in epochs if e in acc.index]
    dropped_table = [e for e in epochs if e not in acc.index]
    dropped_acc = [e for e in acc.index if e not in set(epochs)]
    if not common:
        raise CorrelationError(
            f"no epoch is in both the table ({epochs[:5]}...) and the accuracy series "
            f"({list(acc.index)[:5]}...); check that both are indexed by the same epoch numbers"
        )
    if dropped_table or dropped_acc:
        warnings.warn(
            f"correlation uses the {len(common)} epochs present in both inputs; dropped "
            f"table-only epochs {dropped_table} and accuracy-only epochs {dropped_acc}",
            stacklevel=3,
        )
    matrices = {k: v.loc[common] for k, v in matrices.items()}
    return matrices, acc.loc[common]


