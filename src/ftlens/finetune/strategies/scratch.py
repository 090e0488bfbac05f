"""``scratch``: the same architecture trained from fresh random weights (the control run)."""

from __future__ import annotations

from ftlens.finetune.strategies.base import Strategy


class Scratch(Strategy):
    """Keeps only the architecture of the start: the weights are drawn again after
    ``torch.manual_seed(seed)``, then every parameter trains."""

    name = "scratch"
    summary = "train every parameter from random weights"
    from_scratch = True
    pretrained_start = False
    zero_shot_head = False  # the backbone is random: its features match no text tower


STRATEGY = Scratch()
