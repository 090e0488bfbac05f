"""ftlens: what happens inside a pretrained vision model when it is finetuned.

The public API (importing :mod:`ftlens` stays cheap: each name loads its module on first use;
``dir(ftlens)``, tab completion and type checkers see all of them):

- models:      :func:`load_model`, :class:`ModelWrapper`, :func:`save_checkpoint`
- similarity:  :func:`linear_cka`, :func:`rbf_cka`, :func:`cka_matrix`, :class:`MinibatchCKA`,
  :func:`subspace_similarity`, :func:`procrustes_distance`, and the one-liner
  ``ftlens.CKA(first, second).compare(loader).plot()`` (:class:`CKA`, :func:`load_cka`)
- invariance:  :func:`invert`, :func:`stir`, :func:`compare`, :class:`Comparison`, :func:`load_comparison`
- weights:     :func:`weight_diff` (what finetuning changed in the weights, per layer)
- finetuning:  :func:`finetune`; over epochs: :func:`dynamics`
- experiments: :func:`run_experiment`, :class:`ExperimentLayout`, :func:`build_report`
- figures:     :mod:`ftlens.plot`; images from a tensor, Dataset or DataLoader: :func:`as_images`
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ftlens._version import __version__

_EXPORTS = {
    "load_model": "ftlens.models",
    "ModelWrapper": "ftlens.models",
    "save_checkpoint": "ftlens.models",
    "linear_cka": "ftlens.similarity",
    "rbf_cka": "ftlens.similarity",
    "cka_matrix": "ftlens.similarity",
    "MinibatchCKA": "ftlens.similarity",
    "subspace_similarity": "ftlens.similarity",
    "procrustes_distance": "ftlens.similarity",
    "CKA": "ftlens.cka",
    "CKAResult": "ftlens.cka",
    "load_cka": "ftlens.cka",
    "invert": "ftlens.inversion",
    "Inversion": "ftlens.inversion",
    "stir": "ftlens.invariance",
    "compare": "ftlens.invariance",
    "Comparison": "ftlens.invariance",
    "load_comparison": "ftlens.invariance",
    "finetune": "ftlens.finetune",
    "dynamics": "ftlens.analysis.dynamics",
    "weight_diff": "ftlens.analysis.weight_space",
    "WeightDiff": "ftlens.analysis.weight_space",
    "load_weight_diff": "ftlens.analysis.weight_space",
    "run_experiment": "ftlens.experiment",
    "ExperimentLayout": "ftlens.layout",
    "build_report": "ftlens.report.build",
    "as_images": "ftlens.images",
}
_SUBMODULES = ("plot",)

__all__ = [
    "__version__",
    "load_model",
    "ModelWrapper",
    "save_checkpoint",
    "linear_cka",
    "rbf_cka",
    "cka_matrix",
    "MinibatchCKA",
    "subspace_similarity",
    "procrustes_distance",
    "CKA",
    "CKAResult",
    "load_cka",
    "invert",
    "Inversion",
    "stir",
    "compare",
    "Comparison",
    "load_comparison",
    "finetune",
    "dynamics",
    "weight_diff",
    "WeightDiff",
    "load_weight_diff",
    "run_experiment",
    "ExperimentLayout",
    "build_report",
    "as_images",
    "plot",
]
assert set(__all__) == {"__version__", *_EXPORTS, *_SUBMODULES}

if TYPE_CHECKING:  # what the lazy exports resolve to, for type checkers and IDEs
    from ftlens import plot
    from ftlens.analysis.dynamics import dynamics
    from ftlens.analysis.weight_space import WeightDiff, load_weight_diff, weight_diff
    from ftlens.cka import CKA, CKAResult, load_cka
    from ftlens.experiment import run_experiment
    from ftlens.finetune import finetune
    from ftlens.images import as_images
    from ftlens.invariance import Comparison, compare, load_comparison, stir
    from ftlens.inversion import Inversion, invert
    from ftlens.layout import ExperimentLayout
    from ftlens.models import ModelWrapper, load_model, save_checkpoint
    from ftlens.report.build import build_report
    from ftlens.similarity import (
        MinibatchCKA,
        cka_matrix,
        linear_cka,
        procrustes_distance,
        rbf_cka,
        subspace_similarity,
    )


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"ftlens.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ftlens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
