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

from ftlens.analysis.correlation.grid import (
    RESULT_COLUMNS,
    best_hypotheses,
    correlation_table,
    headline,
    hypothesis_series,
    prefix_correlation,
)
from ftlens.analysis.correlation.hypotheses import (
    AGGREGATES,
    COMBINATIONS,
    FAMILIES,
    SCHEMES,
    Hypothesis,
    headline_hypothesis,
    hypothesis_grid,
    layer_sets,
    resolve_hypothesis,
)
from ftlens.analysis.correlation.inputs import (
    accuracy_by_epoch,
    aligned_inputs,
    layer_order,
    metric_matrices,
)
from ftlens.analysis.correlation.significance import MIN_EPOCHS, bonferroni, pearson
from ftlens.errors import CorrelationError

__all__ = [
    "AGGREGATES", "COMBINATIONS", "CorrelationError", "FAMILIES", "Hypothesis", "MIN_EPOCHS",
    "RESULT_COLUMNS", "SCHEMES", "accuracy_by_epoch", "aligned_inputs", "best_hypotheses", "bonferroni",
    "correlation_table", "headline", "headline_hypothesis", "hypothesis_grid", "hypothesis_series",
    "layer_order", "layer_sets", "metric_matrices", "pearson", "prefix_correlation", "resolve_hypothesis",
]
