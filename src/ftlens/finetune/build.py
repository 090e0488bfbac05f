"""The model of a run: its starting point and the task model around it (head or decoder).

The strategy decides what it can: :attr:`Strategy.from_scratch` (fresh random weights of the
architecture) and :meth:`Strategy.build_task_model` (a task model of its own, FLYP's).
"""

from __future__ import annotations

import torch

from ftlens.errors import ConfigError, FtlensError, RandomWeightsWarning
from ftlens.finetune.config import FinetuneConfig
from ftlens.finetune.loop import epoch_seed
from ftlens.finetune.strategies import get_strategy
from ftlens.finetune.tasks import TaskModel, make_decoder, reset_classifier
from ftlens.models import ModelWrapper, load_model, rebuild, takes_pretrained
from ftlens.warn import warn

#: Random stream of the fresh task head (``epoch_seed``'s third argument).
SEED_HEAD = 7


def start_model(cfg: FinetuneConfig) -> ModelWrapper:
    """The model finetuning starts from (before the task head is set).

    ``pretrained_from`` (or a checkpoint/run ``model``) gives weights and architecture; an
    ``ftlens:`` preset starts from random weights drawn after ``torch.manual_seed(cfg.seed)``; a
    strategy ``from_scratch`` (``scratch``) keeps only the architecture and draws fresh weights after
    ``torch.manual_seed(cfg.seed)`` (the same weights as ``torch.manual_seed(seed); load_model(spec)``
    for a preset).
    """
    from_scratch = get_strategy(cfg.strategy).from_scratch
    spec = cfg.pretrained_from or cfg.model
    torch.manual_seed(cfg.seed)  # a randomly initialised start (a preset) is the same for a seed
    timm_pretrained = cfg.pretrained and takes_pretrained(str(spec)) and not from_scratch
    size = {"image_size": cfg.image_size} if cfg.image_size else {}
    wrapper = load_model(spec, pretrained=timm_pretrained, **size) if timm_pretrained else load_model(spec, **size)
    if cfg.pretrained_from and cfg.model and cfg.model != cfg.pretrained_from:
        model_arch = cfg.model if cfg.model.startswith(("timm:", "ftlens:")) else load_model(cfg.model).source.spec
        if model_arch != wrapper.source.spec:
            raise ConfigError(
                f"model {cfg.model!r} and pretrained_from {cfg.pretrained_from!r} (architecture "
                f"{wrapper.source.spec}) disagree; give only --pretrained-from"
            )
    if cfg.max_length is not None:
        if not hasattr(wrapper, "set_max_length"):
            raise ConfigError(f"max_length applies to text models; {wrapper.name} reads images (use image_size)")
        wrapper.set_max_length(cfg.max_length)
    if from_scratch:
        torch.manual_seed(cfg.seed)
        wrapper = rebuild(wrapper)
    return wrapper


def warn_if_random(cfg: FinetuneConfig, wrapper: ModelWrapper) -> None:
    """A :class:`RandomWeightsWarning` when finetuning (a strategy with ``pretrained_start``)
    starts from random weights."""
    if wrapper.random_init and get_strategy(cfg.strategy).pretrained_start:
        warn(
            f"{cfg.pretrained_from or cfg.model} starts from random weights (no pretrained weights were loaded), "
            "so this is training from scratch, not finetuning; pass a pretrained model (timm:NAME with "
            "--pretrained, a checkpoint, or --pretrained-from RUN@last)",
            RandomWeightsWarning,
        )


def build_task_model(cfg: FinetuneConfig, wrapper: ModelWrapper, num_classes: int,
                     classes: list[str] | None = None) -> TaskModel:
    """Attach a fresh task head (seeded; ``head_init`` zero-shot: from the class prompts) and
    bundle normalisation, backbone and head. A strategy with a task model of its own builds it."""
    torch.manual_seed(epoch_seed(cfg.seed, 0, SEED_HEAD))
    own = get_strategy(cfg.strategy).build_task_model(cfg, wrapper, classes)
    if own is not None:
        return own
    if cfg.task == "classification":
        reset_classifier(wrapper, num_classes)
        if cfg.head_init == "zero-shot":
            from ftlens.models.families.clip.zero_shot import zero_shot_head

            if not classes:
                raise FtlensError(f"dataset {cfg.data!r} has no class names; a zero-shot head needs them")
            zero_shot_head(wrapper, classes, cfg.prompts)
        return TaskModel(wrapper, "classification")
    head = wrapper.module.get_classifier() if hasattr(wrapper.module, "get_classifier") else None
    if head is not None and any(True for _ in head.parameters()):
        reset_classifier(wrapper, 0)  # reconstruction does not use the classifier: drop it
    decoder = make_decoder(wrapper)
    return TaskModel(wrapper, "reconstruction", decoder)
