"""Finetuning strategies, one module each, behind one registry (ALGORITHMS.md §7).

:data:`STRATEGIES` maps a strategy's name to the module that defines it (imported on first use;
the module's ``STRATEGY`` is a :class:`~ftlens.finetune.strategies.base.Strategy`) or to a
``Strategy`` itself. The configuration's ``strategy`` choices, ``--strategy`` of the CLI, the
run and the experiment all read it. A new strategy is one module here (a ``Strategy`` subclass
and ``STRATEGY = MyStrategy()``) and one line below.
"""

from __future__ import annotations

import importlib

from ftlens.errors import ConfigError
from ftlens.finetune.strategies.base import Strategy

STRATEGIES: dict[str, str | Strategy] = {
    "scratch": "ftlens.finetune.strategies.scratch",
    "ft": "ftlens.finetune.strategies.ft",
    "lp": "ftlens.finetune.strategies.lp",
    "lp-ft": "ftlens.finetune.strategies.lp_ft",
    "hp-ft": "ftlens.finetune.strategies.hp_ft",
    "l2-sp": "ftlens.finetune.strategies.l2_sp",
    "surgical": "ftlens.finetune.strategies.surgical",
    "wise-ft": "ftlens.finetune.strategies.wise_ft",
    "flyp": "ftlens.finetune.strategies.flyp",
}


def find_strategy(name: str | None) -> Strategy | None:
    """The registered strategy called ``name``, or None (no such strategy)."""
    entry = STRATEGIES.get(name) if name is not None else None
    if isinstance(entry, str):
        entry = importlib.import_module(entry).STRATEGY
    return entry


def get_strategy(name: str) -> Strategy:
    """The registered strategy called ``name``, in any accepted spelling (``LP_FT``, ``lpft``)."""
    strategy = find_strategy(name) or find_strategy(canonical_name(name))
    if strategy is None:
        raise ConfigError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return strategy


def canonical_name(text: str) -> str:
    """The registry name of a spelling: lower case, ``_`` -> ``-``, aliases resolved (``L2SP`` -> ``l2-sp``)."""
    text = str(text).strip().lower().replace("_", "-")
    return aliases().get(text, text)


def aliases() -> dict[str, str]:
    """``{alias: name}`` over the registered strategies (``l2sp`` -> ``l2-sp`` ...)."""
    return {alias: name for name in STRATEGIES for alias in get_strategy(name).aliases}


__all__ = ["STRATEGIES", "Strategy", "aliases", "canonical_name", "find_strategy", "get_strategy"]
