"""Finetuning strategies, one module each, behind one registry (ALGORITHMS.md §7).

:data:`STRATEGIES` maps a strategy's name to its :class:`~ftlens.finetune.strategies.base.Strategy`
(the registry itself lives in the leaf :mod:`ftlens.finetune.registry`, so that the
configuration can read it without importing the strategies). The configuration's ``strategy``
choices, ``--strategy`` of the CLI, the run and the experiment all read it. A new strategy is one
module here (a ``Strategy`` subclass and ``STRATEGY = MyStrategy()``) and one line in
:data:`BUILTIN` below.
"""

from __future__ import annotations

from typing import cast

from ftlens.finetune import registry
from ftlens.finetune.registry import STRATEGIES, aliases, canonical_name, register
from ftlens.finetune.strategies import (
    flyp,
    ft,
    hp_ft,
    l2_sp,
    lp,
    lp_ft,
    scratch,
    surgical,
    wise_ft,
)
from ftlens.finetune.strategies.base import Strategy

#: the built-in strategies, in the order they are listed (one line each)
BUILTIN: tuple[Strategy, ...] = (
    scratch.STRATEGY,
    ft.STRATEGY,
    lp.STRATEGY,
    lp_ft.STRATEGY,
    hp_ft.STRATEGY,
    l2_sp.STRATEGY,
    surgical.STRATEGY,
    wise_ft.STRATEGY,
    flyp.STRATEGY,
)
for _strategy in BUILTIN:
    register(_strategy)


def find_strategy(name: str | None) -> Strategy | None:
    """The registered strategy called ``name``, or None (no such strategy)."""
    return cast("Strategy | None", registry.find_strategy(name))


def get_strategy(name: str) -> Strategy:
    """The registered strategy called ``name``, in any accepted spelling (``LP_FT``, ``lpft``)."""
    return cast(Strategy, registry.get_strategy(name))


__all__ = ["BUILTIN", "STRATEGIES", "Strategy", "aliases", "canonical_name", "find_strategy", "get_strategy",
           "register"]
