"""Shared invariances: STIR, learning, forgetting, cka divergence and InvarianceFlow.

The package follows the data, one module per step:

- :mod:`~ftlens.invariance.inputs`: checks of models, pool, seeds and layers;
- :mod:`~ftlens.invariance.pool`: the image pool and each seed's images;
- :mod:`~ftlens.invariance.plan`: the inversions (work items) a computation needs;
- :mod:`~ftlens.invariance.run`: running them (the :class:`Executor` interface; in process here,
  local processes and ``torch.distributed`` in :mod:`ftlens.distributed`);
- :mod:`~ftlens.invariance.score`: inversions -> tidy STIR and CKA tables;
- :mod:`~ftlens.invariance.metrics`: tables -> learning, forgetting, cka divergence, flows;
- :mod:`~ftlens.invariance.result`: :class:`Comparison` and its persistence;
- :mod:`~ftlens.invariance.api`: :func:`compare` and :func:`stir`, the entry points.

``STIR(target^[i] | reference^[j]) = CKA(target^[i](X), target^[i](X'))`` where ``X'`` is
inverted on ``reference^[j]`` (:mod:`ftlens.inversion`); the metrics are defined in
:mod:`ftlens.invariance.metrics` and in ``docs/quantities.md``.

Names are exported lazily, so importing one submodule does not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PRETRAINED": "ftlens.invariance.score",
    "FINETUNED": "ftlens.invariance.score",
    "STIR_COLUMNS": "ftlens.invariance.score",
    "score": "ftlens.invariance.score",
    "cka_table": "ftlens.invariance.score",
    "FIRST_TERMS": "ftlens.invariance.metrics",
    "derive_metrics": "ftlens.invariance.metrics",
    "Plan": "ftlens.invariance.plan",
    "WorkItem": "ftlens.invariance.plan",
    "plan_inversions": "ftlens.invariance.plan",
    "sample_indices": "ftlens.invariance.pool",
    "image_pool": "ftlens.invariance.pool",
    "ImagePool": "ftlens.invariance.pool",
    "Execution": "ftlens.invariance.run",
    "Executor": "ftlens.invariance.run",
    "InProcess": "ftlens.invariance.run",
    "run_item": "ftlens.invariance.run",
    "run_plan": "ftlens.invariance.run",
    "Comparison": "ftlens.invariance.result",
    "load_comparison": "ftlens.invariance.result",
    "compare": "ftlens.invariance.api",
    "compare_plan": "ftlens.invariance.api",
    "stir": "ftlens.invariance.api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ftlens.invariance' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
