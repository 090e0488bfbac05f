"""The settings of an inversion (:class:`InversionSettings`) and its named schedules.

``schedule="fixed"`` is the paper's loop (every image takes every step of length
``step_size``); ``"adaptive"`` keeps its normalised-gradient direction and adapts each image's
step length; the default ``"adam"`` takes Adam steps on the pixels. The last two stop an image
early (see :mod:`ftlens.inversion.rules`). Every field that can change the result is in
the cache key (:meth:`InversionSettings.schedule_key`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ftlens.errors import ConfigError
from ftlens.settings import PAPER

__all__ = ["SCHEDULES", "SCHEDULE_PRESETS", "STOP_RESIDUAL", "InversionSettings", "schedule_fields"]

_AUTOCAST_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def _autocast_dtype(autocast: torch.dtype | str | None) -> torch.dtype | None:
    if autocast is None or autocast is False:
        return None
    if isinstance(autocast, torch.dtype):
        if autocast in (torch.float32, torch.float64):
            return None
        return autocast
    name = str(autocast).lower()
    if name in ("none", "fp32", "float32", "off", ""):
        return None
    if name not in _AUTOCAST_NAMES:
        raise ConfigError(f"autocast must be None, 'bf16' or 'fp16' (or a torch dtype), got {autocast!r}")
    return _AUTOCAST_NAMES[name]


#: Accepted values of ``schedule``.
SCHEDULES = ("fixed", "adaptive", "adam")
#: The residual at which the adaptive schedule stops an image: ``PAPER.stop_fraction *
#: PAPER.residual_threshold`` (the convergence gate's threshold, :mod:`ftlens.settings`).
STOP_RESIDUAL = PAPER.stop_fraction * PAPER.residual_threshold


@dataclass(frozen=True)
class InversionSettings:
    """Everything besides model, layer, images and seed that determines an inversion.

    Attributes:
        steps: number of gradient steps (the paper's text: 50; the authors' scripts: 500; the
            project's default :data:`ftlens.settings.PAPER` ``.steps``); with early stopping, the
            most any image takes.
        step_size: L2 length of each step in pixel space, per image (default 0.5).
        start: ``"noise"`` | ``"mixed"`` | ``"uniform"`` (see the module docstring).
        autocast: ``None`` (float32) or ``"bf16"`` / ``"fp16"``: the forward runs under
            autocast on CUDA only (ignored on the CPU); residuals are always float32.
        schedule: ``"adam"`` (default: Adam on the pixels with step ``lr``), ``"adaptive"`` or
            ``"fixed"`` (the paper: every step has length ``step_size``). Adaptive: each image has its own step length, starting at
            ``step_size``, multiplied by ``grow`` after a step that lowered its best residual
            (up to ``max_step_size``) and by ``decay`` after one that did not; the direction is
            the normalised gradient in both.
        lr: Adam's step (learning rate) in [0, 1] pixel units (``schedule="adam"`` only).
        lr_drops: Adam: how often a stalled image lowers its ``lr`` by ``decay`` (with a fresh
            ``patience`` window each time) before a stall stops it; 0: a stall stops it.
        decay: step-length factor after a failed step (adaptive) or a stall (Adam), in (0, 1).
        grow: step-length factor after a successful step, in [1, 10] (1: decay only).
        max_step_size: cap of the adaptive step length (default ``8 * step_size``).
        patience: early stop on a stall. ``"adam"``: an image stops once its best residual is
            not ``min_improvement`` (relative) below its best ``patience`` evaluations earlier;
            ``"adaptive"``: once ``patience`` evaluations in a row lowered it by less than
            ``min_improvement``; ``None``: never.
        min_improvement: relative improvement of the best residual that resets ``patience``.
        stop_residual: an image stops once its best residual is at most this (the inversion
            default :data:`STOP_RESIDUAL`, a fraction of the convergence gate's threshold);
            ``None``: never.

    ``steps`` is the cap: with early stopping an image may take fewer. :meth:`paper` (or
    ``schedule="fixed"`` in every API, ``--schedule fixed`` on the CLI) is the paper's fixed
    schedule without early stopping. Every field that can change the result is in the cache key.
    """

    steps: int = PAPER.steps
    step_size: float = PAPER.step_size
    start: str = PAPER.start
    autocast: str | None = None
    schedule: str = PAPER.schedule
    lr: float = PAPER.lr
    lr_drops: int = 2
    decay: float = 0.5
    grow: float = 1.5
    max_step_size: float | None = None
    patience: int | None = PAPER.patience
    min_improvement: float = 0.01
    stop_residual: float | None = STOP_RESIDUAL

    def __post_init__(self) -> None:
        from ftlens.checks import choice, integer, inversion_options, number

        steps, step_size, _ = inversion_options(self.steps, self.step_size, self.start)  # ConfigError
        choice("schedule", self.schedule, SCHEDULES)
        object.__setattr__(self, "lr", number("lr", self.lr, low=0.0, high=1.0, low_open=True))
        object.__setattr__(self, "lr_drops", integer("lr_drops", self.lr_drops, minimum=0))
        object.__setattr__(self, "decay", number("decay", self.decay, low=0.0, high=0.999, low_open=True))
        object.__setattr__(self, "grow", number("grow", self.grow, low=1.0, high=10.0))
        if self.max_step_size is not None:
            object.__setattr__(self, "max_step_size", number("max_step_size", self.max_step_size, low=step_size))
        if self.patience is not None:
            object.__setattr__(self, "patience", integer("patience", self.patience, minimum=1))
        object.__setattr__(self, "min_improvement", number("min_improvement", self.min_improvement, low=0.0,
                                                           high=0.999))
        if self.stop_residual is not None:
            object.__setattr__(self, "stop_residual", number("stop_residual", self.stop_residual, low=0.0))
        dtype = _autocast_dtype(self.autocast)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "step_size", step_size)
        object.__setattr__(self, "autocast", None if dtype is None else str(dtype).removeprefix("torch."))

    @classmethod
    def paper(cls, **changes: Any) -> InversionSettings:
        """The paper's schedule: every image takes ``steps`` steps of length ``step_size``."""
        return cls(**{**SCHEDULE_PRESETS["fixed"], **changes})

    @property
    def adaptive(self) -> bool:
        """Whether anything but the paper's fixed schedule runs (decay or early stopping)."""
        return self.schedule != "fixed" or self.early_stop

    @property
    def early_stop(self) -> bool:
        """Whether images can stop before ``steps``."""
        return self.patience is not None or self.stop_residual is not None

    def effective_autocast(self, device: torch.device | str) -> str | None:
        """The autocast dtype actually used on ``device`` (``None`` on the CPU)."""
        return None if torch.device(device).type == "cpu" else self.autocast

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def schedule_key(self) -> dict[str, Any]:
        """The schedule fields of a cache key: empty for the paper's fixed schedule (so its keys
        are those of earlier versions), every schedule field otherwise (``lr`` and ``lr_drops``
        only for Adam, so the keys of the other schedules are those of earlier versions)."""
        if not self.adaptive:
            return {}
        return {k: getattr(self, k) for k in _SCHEDULE_FIELDS if k not in _ADAM_ONLY or self.schedule == "adam"}


#: Named schedules for ``schedule=`` arguments (``compare``, ``stir``, ``invert``, the CLI).
SCHEDULE_PRESETS: dict[str, dict[str, Any]] = {
    "adam": {},  # the defaults of InversionSettings
    "adaptive": {"schedule": "adaptive", "patience": 3},  # the default of ftlens 0.x before Adam
    "fixed": {"schedule": "fixed", "patience": None, "stop_residual": None},  # the paper
}


def schedule_fields(schedule: str | Mapping[str, Any] | InversionSettings | None) -> dict[str, Any]:
    """The :class:`InversionSettings` schedule fields that ``schedule`` names.

    ``None`` or ``"adam"``: the defaults (Adam, early stopping); ``"adaptive"``: the adaptive
    normalised step with its early stop; ``"fixed"``:
    the paper's fixed schedule (:meth:`InversionSettings.paper`); a mapping: explicit fields (``schedule``, ``decay``, ``patience``, ``min_improvement``,
    ``stop_residual``); an :class:`InversionSettings`: its schedule fields.
    """
    if schedule is None:
        return {}
    if isinstance(schedule, InversionSettings):
        return {k: getattr(schedule, k) for k in _SCHEDULE_FIELDS}
    if isinstance(schedule, str):
        if schedule not in SCHEDULE_PRESETS:
            raise ConfigError(f"schedule must be one of {tuple(SCHEDULE_PRESETS)} or a mapping of "
                             f"{_SCHEDULE_FIELDS}, got {schedule!r}")
        return dict(SCHEDULE_PRESETS[schedule])
    unknown = sorted(set(schedule) - set(_SCHEDULE_FIELDS))
    if unknown:
        raise ConfigError(f"unknown schedule field(s) {unknown}; known: {_SCHEDULE_FIELDS}")
    return dict(schedule)


_SCHEDULE_FIELDS = ("schedule", "lr", "lr_drops", "decay", "grow", "max_step_size", "patience", "min_improvement", "stop_residual")

#: Fields that only Adam reads (and only Adam's cache keys hold).
_ADAM_ONLY = ("lr", "lr_drops")
