"""The strategy registry: name -> strategy object, filled by :mod:`ftlens.finetune.strategies`.

A leaf of :mod:`ftlens.finetune` (it imports only :mod:`ftlens.errors`): the configuration
(:mod:`ftlens.finetune.config`) checks strategy names and asks a strategy to check its own
options through it, without importing the strategies, whose base class types its configuration.
:mod:`ftlens.finetune.strategies` registers the built-in strategies when it is imported, and
:mod:`ftlens.finetune` imports it, so the registry is full before any configuration is checked.
A new strategy is one module in that package and one line in its list; ``STRATEGIES[name] =
strategy`` (or :func:`register`) adds one from outside.
"""

from __future__ import annotations

from typing import Any, Protocol

from ftlens.errors import ConfigError

__all__ = ["STRATEGIES", "StrategyLike", "aliases", "canonical_name", "find_strategy", "get_strategy", "register"]


class StrategyLike(Protocol):
    """What the configuration reads of a strategy (:class:`ftlens.finetune.strategies.Strategy`
    has all of it)."""

    name: str
    aliases: tuple[str, ...]
    lr_scale: float
    zero_shot_head: bool
    needs_model: bool

    def check(self, cfg: Any) -> None: ...


#: registry name -> strategy, in registration order (the order ``--help`` and errors list them)
STRATEGIES: dict[str, Any] = {}


def register(strategy: Any) -> Any:
    """Add ``strategy`` under ``strategy.name`` (replacing one of the same name); returns it."""
    if not isinstance(getattr(strategy, "name", None), str) or not strategy.name:
        raise ConfigError(f"a strategy needs a name (its registry name), got {strategy!r}")
    STRATEGIES[strategy.name] = strategy
    return strategy


def find_strategy(name: str | None) -> Any | None:
    """The registered strategy called ``name``, or None (no such strategy)."""
    return STRATEGIES.get(name) if name is not None else None


def get_strategy(name: str) -> Any:
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
    return {alias: name for name, strategy in STRATEGIES.items() for alias in strategy.aliases}
