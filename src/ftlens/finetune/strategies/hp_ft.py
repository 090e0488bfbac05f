"""``hp-ft``: head probing (``hp_epochs`` of gradient steps on the head, backbone frozen; its own
``hp_lr`` and ``hp_label_smoothing``), then finetuning of every parameter."""

from __future__ import annotations

from ftlens.finetune.strategies.base import Strategy


class HeadProbeThenFinetune(Strategy):
    name = "hp-ft"
    aliases = ("hpft",)
    summary = "train the head alone for hp_epochs, then every parameter"
    measures_energy = True

    def plan_phases(self, cfg):
        return ["hp"] * cfg.hp_epochs + ["ft"] * cfg.epochs

    def learning_rate(self, cfg, phase):
        return cfg.hp_lr if phase == "hp" and cfg.hp_lr is not None else cfg.lr

    def label_smoothing(self, cfg, phase):
        return cfg.hp_label_smoothing if phase == "hp" else cfg.label_smoothing


STRATEGY = HeadProbeThenFinetune()
