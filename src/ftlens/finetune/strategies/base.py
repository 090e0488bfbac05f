"""What a finetuning strategy decides (ALGORITHMS.md §7), and the defaults most strategies share.

A strategy is a :class:`Strategy` subclass in a module of its own, registered by one line in
:data:`ftlens.finetune.strategies.STRATEGIES`. The run (:mod:`ftlens.finetune.training`) asks it
which phase each epoch is, which parameters train in a phase, whether a penalty is added to the
loss, and how the task model is built; the configuration asks it to check its own options.

Phases (the ``phase`` column of ``metrics.csv``):

- ``init``: epoch 0, the starting point, before any training;
- ``lp``: the linear probe (closed form, backbone frozen); epoch 0 of ``lp-ft``, epoch 1 of ``lp``
  (for reconstruction, ``lp`` trains the linear decoder by gradient with the backbone frozen);
- ``hp``: head probing of ``hp-ft`` (gradient steps on the head alone, backbone frozen);
- ``ft``: finetuning: every parameter (``scratch``, ``ft``, ``lp-ft``, ``hp-ft``, ``l2-sp``) or
  the chosen blocks and the head (``surgical``);
- ``wise``: one row per WiSE-FT interpolation weight.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from ftlens.finetune.tasks import TaskModel, make_decoder

if TYPE_CHECKING:
    from ftlens.finetune.config import FinetuneConfig
    from ftlens.finetune.loop import Runtime
    from ftlens.finetune.result import RunResult
    from ftlens.models import ModelWrapper

#: Phases in which only the task head trains (the backbone is frozen and stays in eval mode).
HEAD_ONLY_PHASES = ("lp", "hp")

#: A penalty added to the training loss: called once per step, returns a scalar tensor.
Penalty = Callable[[], torch.Tensor]


class Strategy:
    """A finetuning strategy; the defaults are plain finetuning (``ft``): every parameter trains
    for ``epochs`` epochs from the starting point, with no penalty.

    Class attributes (override in a subclass):
        name: the registry name (``--strategy NAME``); aliases: other accepted spellings.
        summary: one line for ``--help`` and the docs.
        from_scratch: the run starts from fresh random weights of the architecture.
        pretrained_start: a start without pretrained weights is worth a warning.
        lr_scale: the default peak learning rate is ``DEFAULT_LR * lr_scale``.
        zero_shot_head: ``head_init zero-shot`` applies (False: the head is fitted otherwise or
            the backbone is random).
        measures_energy: train loss/accuracy are recorded where FT starts (``energy.json``).
        probe_sees_augmentation: the linear probe is fitted on one augmented view of each
            image (the features FT trains on), not on the plain images.
        model_loss: the task model computes its own loss: ``model(x, targets=y) -> (loss, logits)``.
        compared: an experiment compares the run's last checkpoint with the pretrained model
            (False: its backbone is the pretrained one, or it repeats another run's weights).
        needs_model: the configuration must name a model (or ``pretrained_from``).
        checkpoint_options: options that evaluating this strategy's checkpoints reads from the
            run's ``config.yaml`` (e.g. FLYP's prompts, when WiSE-FT interpolates a FLYP run).
    """

    name: str = ""
    aliases: tuple[str, ...] = ()
    summary: str = ""
    from_scratch: bool = False
    pretrained_start: bool = True
    lr_scale: float = 1.0
    zero_shot_head: bool = True
    measures_energy: bool = False
    probe_sees_augmentation: bool = False
    model_loss: bool = False
    compared: bool = True
    needs_model: bool = True
    checkpoint_options: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<strategy {self.name}>"

    # ------------------------------------------------------------------ configuration
    def check(self, cfg: FinetuneConfig) -> None:
        """Raise :class:`~ftlens.errors.ConfigError` when ``cfg`` misses or contradicts an option
        this strategy needs (called after the generic checks)."""

    # ------------------------------------------------------------------ schedule
    def initial_phase(self, cfg: FinetuneConfig) -> str:
        """Phase of epoch 0: ``init`` (the starting point as it is) or ``lp`` (a probe fitted first)."""
        return "init"

    def plan_phases(self, cfg: FinetuneConfig) -> list[str]:
        """Phase of each epoch 1..N of a run."""
        return ["ft"] * cfg.epochs

    # ------------------------------------------------------------------ what trains
    def trainable_names(self, task_model: TaskModel, cfg: FinetuneConfig, phase: str) -> list[str]:
        """Names of the parameters that train in ``phase`` (head-only phases: the head; ``ft``:
        :meth:`ft_names` of the parameters left after ``freeze_bn``)."""
        names = [n for n, _ in task_model.named_parameters()]
        if phase in HEAD_ONLY_PHASES:
            return [n for n in names if task_model.is_head(n)]
        if phase != "ft":
            return []
        if cfg.freeze_bn:
            frozen = set(bn_parameter_names(task_model))
            names = [n for n in names if n not in frozen or task_model.is_head(n)]
        return self.ft_names(task_model, cfg, names)

    def ft_names(self, task_model: TaskModel, cfg: FinetuneConfig, names: list[str]) -> list[str]:
        """Which of ``names`` train in FT: all of them, except a head derived from other weights (FLYP)."""
        if task_model.derived_head:
            return [n for n in names if not task_model.is_head(n)]
        return names

    def learning_rate(self, cfg: FinetuneConfig, phase: str) -> float:
        """Peak learning rate of ``phase`` (``lr``)."""
        return cfg.lr

    def label_smoothing(self, cfg: FinetuneConfig, phase: str) -> float:
        """Label smoothing of the loss in ``phase`` (``label_smoothing``)."""
        return cfg.label_smoothing

    def penalty(self, cfg: FinetuneConfig, task_model: TaskModel, phase: str,
                start: Mapping[str, torch.Tensor] | None) -> Penalty | None:
        """A term added to the loss in ``phase`` (None: none). ``start``: the backbone parameters
        of epoch 0 by task-model name (``backbone.*``), given when :attr:`uses_start_weights`."""
        return None

    #: :meth:`penalty` needs the parameters of epoch 0 (read from its checkpoint, also after a resume).
    uses_start_weights: bool = False

    # ------------------------------------------------------------------ models
    def build_task_model(self, cfg: FinetuneConfig, wrapper: ModelWrapper,
                         classes: Sequence[str] | None) -> TaskModel | None:
        """The task model of a run when this strategy has its own (FLYP); None: the default head."""
        return None

    def checkpoint_model(self, cfg: FinetuneConfig, wrapper: ModelWrapper, task: str,
                         classes: Sequence[str] | None) -> TaskModel:
        """The task model that evaluates weights this strategy saved (WiSE-FT's endpoints)."""
        return TaskModel(wrapper, task, make_decoder(wrapper) if task == "reconstruction" else None)

    # ------------------------------------------------------------------ running
    def run(self, cfg: FinetuneConfig, runtime: Runtime, *, resume: bool, overwrite: bool,
            stop_after: int | None, progress: bool | None) -> RunResult | None:
        """A strategy that trains no epochs runs itself here (WiSE-FT); None: the epoch loop runs it."""
        return None


# --------------------------------------------------------------------------- shared helpers


def ft_start_epoch(phases: Sequence[str]) -> int | None:
    """The epoch whose end is the start of FT (the model whose "energy" is measured), or None."""
    for i, phase in enumerate(phases):
        if phase == "ft":
            return i  # phases[i] is epoch i + 1, so FT starts from the weights of epoch i
    return None


def set_trainable(task_model: TaskModel, names: Sequence[str]) -> list[torch.nn.Parameter]:
    """Turn ``requires_grad`` on for ``names`` and off for every other parameter."""
    keep = set(names)
    params = []
    for n, p in task_model.named_parameters():
        p.requires_grad_(n in keep)
        if n in keep:
            params.append(p)
    return params


def bn_parameter_names(task_model: TaskModel) -> list[str]:
    """Names of the affine parameters of the backbone's BatchNorm layers."""
    out = []
    for mname, module in task_model.backbone.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            out += [f"backbone.{mname}.{p}" for p, _ in module.named_parameters(recurse=False)]
    return out


def set_train_mode(task_model: TaskModel, phase: str, freeze_bn: bool = False) -> None:
    """``train()`` for FT; a frozen backbone stays in ``eval()`` (fixed features, BN statistics).

    In FT, BatchNorm layers whose parameters are all frozen (surgical, ``freeze_bn``) stay in
    ``eval()`` so their running statistics do not move either."""
    task_model.train()
    if phase in HEAD_ONLY_PHASES:
        task_model.backbone.eval()
        if task_model.decoder is not None:
            task_model.decoder.train()
        else:
            task_model.backbone.get_classifier().train()
        return
    # modules whose parameters are all frozen (surgical) keep their normalisation statistics
    for module in task_model.backbone.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            if freeze_bn or not any(p.requires_grad for p in module.parameters()):
                module.eval()

