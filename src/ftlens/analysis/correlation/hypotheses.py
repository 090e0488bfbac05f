"""The hypothesis grid: which aggregate of which per-layer combination over which layers."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

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


