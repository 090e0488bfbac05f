"""``ft``: plain finetuning, every parameter trains from the starting point (ALGORITHMS.md §7)."""

from __future__ import annotations

from ftlens.finetune.strategies.base import Strategy


class Finetune(Strategy):
    name = "ft"
    summary = "finetune every parameter"


STRATEGY = Finetune()
