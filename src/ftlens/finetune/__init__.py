"""Finetuning engine: tasks, strategies, the training loop and resumable run directories.

``finetune(config_or_kwargs) -> RunResult`` runs one configured run (:class:`FinetuneConfig`);
``ftlens finetune ...`` is the same from the command line. See ALGORITHMS.md §5 and §7.

Modules: ``config`` (the validated options) -> ``run`` (:func:`finetune`) -> ``build`` (start
model, task model) + ``sources`` (data) -> ``training`` (the epoch loop, over ``loop``'s
optimiser, scheduler and train/eval steps) -> ``evaluation`` / ``robustness`` (metrics rows) ->
``rundir`` (files, resumption) -> ``result``. ``strategies/``: one module per strategy,
registered into ``registry`` (``STRATEGIES``, which ``config`` reads); ``tasks`` (heads,
decoder), ``linear_probe``.
"""

from ftlens.finetune.config import TASKS, ConfigError, FinetuneConfig
from ftlens.finetune.linear_probe import LinearProbe, fit_linear_probe, linear_probe
from ftlens.finetune.run import RunResult, finetune
from ftlens.finetune.strategies import STRATEGIES, Strategy
from ftlens.finetune.strategies.l2_sp import l2sp_penalty
from ftlens.finetune.strategies.wise_ft import interpolate_state_dicts
from ftlens.finetune.tasks import PatchDecoder, TaskModel

__all__ = [
    "STRATEGIES",
    "TASKS",
    "ConfigError",
    "FinetuneConfig",
    "LinearProbe",
    "PatchDecoder",
    "RunResult",
    "Strategy",
    "TaskModel",
    "finetune",
    "fit_linear_probe",
    "interpolate_state_dicts",
    "l2sp_penalty",
    "linear_probe",
]
