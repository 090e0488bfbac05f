"""Robustness correlation: the paper's hypothesis grid (Merlin et al. 2023, section 4.4, E.1).

Question: does some per-epoch aggregate of the per-layer metrics track the per-epoch mean
corrupted accuracy during finetuning? Each *hypothesis* is one per-epoch series

    aggregate over layers in S of combination(layer, epoch)

correlated (Pearson r, two-sided p from :func:`scipy.stats.pearsonr`) with the per-epoch mean
corrupted accuracy. Families:

- ``"stir"``: combination in {learning, forgetting, learning + forgetting, learning -
  forgetting} (computed per layer, then aggregated), aggregate in {mean, std, min, max};
- ``"cka_divergence"`` and ``"subspace_similarity"`` (baselines): the metric itself, same
  layer sets and aggregates.

**Layer sets.** Layers are numbered 1..L (1-based) in the order of the table (see
:func:`layer_order`). The paper reports 352 STIR hypotheses and 88 cka divergence ones for its
12-layer ViT, i.e. 352 / (4 x 4) = 88 / 4 = 22 layer sets. "Each single layer, first n and last
n for n = 2..L" gives 12 + 11 + 11 = 34 sets (33 distinct: first 12 = last 12), not 22. The
definition that gives 22 for L = 12 and contains both sets the paper names (forgetting over
layers 2-12 = last 11, cka divergence over layers 1-8 = first 8) is: for every split point
k = 1..L-1, the first k layers (1..k) and the remaining L-k layers (k+1..L). That is "first n"
and "last n" for n = 1..L-1: the two single-layer sets are layer 1 and layer L, the full set
1..L is not included. This is ``scheme="paper"`` (the default); 2(L-1) sets, 32(L-1) STIR
hypotheses and 8(L-1) per baseline family. ``scheme="extended"`` is every single layer plus
first n and last n for n = 2..L with the full set once (3L - 3 sets: 33 for L = 12, 528 STIR
hypotheses). For L = 1 both schemes hold the one layer.

**std.** The population standard deviation over the layers of the set (``ddof=0``, numpy's
default). Pearson r is unchanged by the choice: for a fixed layer set the ddof=1 value is the
ddof=0 value times the constant sqrt(n/(n-1)).

**Bonferroni.** ``p_bonferroni = min(1, p * m)`` with m the number of hypotheses of the family
(the grid size, 352 / 88 for L = 12: hypotheses that could not be tested, e.g. a constant std
over one layer, still count, as they are part of the family that was searched);
``bonferroni_scope="all"`` uses the size of the whole grid instead. ``significant`` is
``p_bonferroni < alpha``.

**Headline.** std of forgetting over layers 2..L (the paper: r = 0.78 with CIFAR-10-C over its 12
layers). It is part of both schemes, flagged by the ``is_headline`` column and returned by
:func:`headline`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ftlens.errors import CorrelationError

COMBINATIONS: tuple[str, ...] = (
    "learning",
    "forgetting",
    "learning + forgetting",
    "learning - forgetting",
)
AGGREGATES: tuple[str, ...] = ("mean", "std", "min", "max")
FAMILIES: tuple[str, ...] = ("stir", "cka_divergence", "subspace_similarity")
SCHEMES: tuple[str, ...] = ("paper", "extended")
MIN_EPOCHS = 3
"""Fewest epochs with finite values for which a correlation is computed."""

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


# ----------------------------------------------------------------------------- hypotheses


@dataclass(frozen=True)
class Hypothesis:
    """One per-epoch series: ``aggregate`` over layers ``first_layer..last_layer`` of ``combination``.

    Layer numbers are 1-based and inclusive. ``family`` is ``"stir"`` (combination one of
    :data:`COMBINATIONS`) or a baseline family whose combination is the family's own column
    (``"cka_divergence"``, ``"subspace_similarity"``).
    """

    family: str
    combination: str
    aggregate: str
    first_layer: int
    last_layer: int

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise CorrelationError(f"unknown family {self.family!r}; use one of {FAMILIES}")
        allowed = COMBINATIONS if self.family == "stir" else (self.family,)
        if self.combination not in allowed:
            raise CorrelationError(
                f"combination {self.combination!r} does not belong to family {self.family!r}; "
                f"use one of {allowed}"
            )
        if self.aggregate not in AGGREGATES:
            raise CorrelationError(f"unknown aggregate {self.aggregate!r}; use one of {AGGREGATES}")
        if not 1 <= self.first_layer <= self.last_layer:
            raise CorrelationError(
                f"layer range {self.first_layer}..{self.last_layer} is empty or not 1-based; "
                "layers are numbered from 1 and first_layer <= last_layer"
            )

    @property
    def layer_set(self) -> str:
        """``"layer 3"`` or ``"layers 2-12"`` (1-based, inclusive)."""
        if self.first_layer == self.last_layer:
            return f"layer {self.first_layer}"
        return f"layers {self.first_layer}-{self.last_layer}"

    @property
    def name(self) -> str:
        """e.g. ``"std(forgetting) over layers 2-12"``; unique within a grid."""
        return f"{self.aggregate}({self.combination}) over {self.layer_set}"

    @property
    def label(self) -> str:
        """A readable axis label, e.g. ``"std of forgetting over layers 2-12"``."""
        return f"{self.aggregate} of {self.combination} over {self.layer_set}"

    def evaluate(self, columns: Mapping[str, pd.DataFrame]) -> pd.Series:
        """Per-epoch values from per-layer matrices ``{column: DataFrame (epoch x layer)}``."""
        if self.family == "stir":
            learning = _require(columns, "learning")
            forgetting = _require(columns, "forgetting")
            values = {
                "learning": learning,
                "forgetting": forgetting,
                "learning + forgetting": learning + forgetting,
                "learning - forgetting": learning - forgetting,
            }[self.combination]
        else:
            values = _require(columns, self.family)
        n_layers = values.shape[1]
        if self.last_layer > n_layers:
            raise CorrelationError(
                f"hypothesis {self.name!r} needs layer {self.last_layer} but the table has "
                f"{n_layers} layers"
            )
        block = values.iloc[:, self.first_layer - 1 : self.last_layer].to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            if self.aggregate == "mean":
                out = block.mean(axis=1)
            elif self.aggregate == "std":
                out = block.std(axis=1, ddof=0)
            elif self.aggregate == "min":
                out = block.min(axis=1)
            else:
                out = block.max(axis=1)
        return pd.Series(out, index=values.index, name=self.name)


def _require(columns: Mapping[str, pd.DataFrame], name: str) -> pd.DataFrame:
    if name not in columns:
        raise CorrelationError(
            f"the table has no {name!r} column; a dynamics table (ftlens.analysis.dynamics) "
            "has epoch, layer, learning, forgetting, cka_divergence"
        )
    return columns[name]


def layer_sets(n_layers: int, scheme: str = "paper") -> list[tuple[int, int]]:
    """The layer sets as 1-based inclusive ``(first, last)`` pairs (see the module docstring).

    ``"paper"``: first k and last L-k layers for k = 1..L-1 (22 sets for L = 12);
    ``"extended"``: each single layer, first n and last n for n = 2..L, the full set once
    (33 sets for L = 12).
    """
    if n_layers < 1:
        raise CorrelationError(f"need at least one layer, got {n_layers}")
    if scheme not in SCHEMES:
        raise CorrelationError(f"unknown layer-set scheme {scheme!r}; use one of {SCHEMES}")
    L = n_layers
    if L == 1:
        return [(1, 1)]
    if scheme == "paper":
        return [(1, k) for k in range(1, L)] + [(k + 1, L) for k in range(1, L)]
    sets = [(i, i) for i in range(1, L + 1)]
    sets += [(1, n) for n in range(2, L + 1)]
    sets += [(L - n + 1, L) for n in range(2, L)]  # last L == first L: kept once
    return sets


def hypothesis_grid(
    n_layers: int,
    families: Sequence[str] = FAMILIES,
    *,
    scheme: str = "paper",
) -> list[Hypothesis]:
    """Every hypothesis of the given families, in a fixed order (family, layer set, combination, aggregate).

    For L = 12 and ``scheme="paper"``: 352 ``"stir"`` hypotheses, 88 per baseline family.
    To correlate them with accuracy, call :func:`correlation_table`.
    """
    if not isinstance(n_layers, (int, np.integer)) or isinstance(n_layers, bool):
        raise CorrelationError(
            f"hypothesis_grid(n_layers) takes the number of layers, got {type(n_layers).__name__}; "
            "to correlate a dynamics table with accuracy call correlation_table(table, accuracy)"
        )
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise CorrelationError(f"unknown families {unknown}; use some of {FAMILIES}")
    sets = layer_sets(n_layers, scheme)
    grid: list[Hypothesis] = []
    for family in FAMILIES:
        if family not in families:
            continue
        combos = COMBINATIONS if family == "stir" else (family,)
        for first, last in sets:
            for combo in combos:
                for agg in AGGREGATES:
                    grid.append(Hypothesis(family, combo, agg, first, last))
    return grid


def headline_hypothesis(n_layers: int) -> Hypothesis:
    """std of forgetting over layers 2..L (the paper's headline; needs L >= 2)."""
    if n_layers < 2:
        raise CorrelationError(
            f"the headline (std of forgetting over layers 2..L) needs at least 2 layers, got {n_layers}"
        )
    return Hypothesis("stir", "forgetting", "std", 2, n_layers)


# ----------------------------------------------------------------------------- inputs


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


# ----------------------------------------------------------------------------- statistics


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


# ----------------------------------------------------------------------------- the analysis


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


def resolve_hypothesis(hypothesis: Any, n_layers: int) -> Hypothesis:
    """A :class:`Hypothesis` from None (the headline), a name such as ``"std(forgetting) over
    layers 2-12"``, a Hypothesis, or a row of :func:`correlation_table`."""
    if hypothesis is None:
        return headline_hypothesis(n_layers)
    if isinstance(hypothesis, Hypothesis):
        return hypothesis
    if isinstance(hypothesis, (pd.Series, Mapping)):
        return Hypothesis(
            str(hypothesis["family"]),
            str(hypothesis["combination"]),
            str(hypothesis["aggregate"]),
            int(hypothesis["first_layer"]),
            int(hypothesis["last_layer"]),
        )
    if isinstance(hypothesis, str):
        m = re.fullmatch(r"(\w+)\((.+)\) over layers? (\d+)(?:-(\d+))?", hypothesis.strip())
        if m:
            agg, combo, first, last = m.group(1), m.group(2), int(m.group(3)), m.group(4)
            family = "stir" if combo in COMBINATIONS else combo
            return Hypothesis(family, combo, agg, first, int(last) if last else first)
        raise CorrelationError(
            f"unknown hypothesis {hypothesis!r}; names look like 'std(forgetting) over layers 2-12' "
            "(see correlation_table(...)['hypothesis'])"
        )
    raise CorrelationError(
        f"hypothesis must be None (the headline), a name, a Hypothesis or a results row, got "
        f"{type(hypothesis).__name__}"
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
