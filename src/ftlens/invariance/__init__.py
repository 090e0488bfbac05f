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
    "PRETRAINED": "score",
    "FINETUNED": "score",
    "STIR_COLUMNS": "score",
    "score": "score",
    "cka_table": "score",
    "FIRST_TERMS": "metrics",
    "derive_metrics": "metrics",
    "Plan": "plan",
    "WorkItem": "plan",
    "plan_inversions": "plan",
    "sample_indices": "pool",
    "image_pool": "pool",
    "ImagePool": "pool",
    "Execution": "run",
    "Executor": "run",
    "InProcess": "run",
    "run_item": "run",
    "run_plan": "run",
    "Comparison": "result",
    "load_comparison": "result",
    "compare": "api",
    "compare_plan": "api",
    "stir": "api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ftlens.invariance' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ftlens.invariance.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
