"""``lp``: linear probing, the backbone frozen (ALGORITHMS.md §7).

Classification: one epoch, a logistic-regression head fitted in closed form
(:mod:`ftlens.finetune.linear_probe`). Reconstruction: ``epochs`` epochs of gradient steps on
the linear decoder alone.
"""

from __future__ import annotations

from ftlens.finetune.strategies.base import Strategy


class LinearProbing(Strategy):
    name = "lp"
    summary = "fit the head alone on frozen features"
    zero_shot_head = False  # the head is fitted by logistic regression
    compared = False  # the backbone is the pretrained one

    def plan_phases(self, cfg):
        return ["lp"] if cfg.task == "classification" else ["lp"] * cfg.epochs


STRATEGY = LinearProbing()
