"""The similarity measures by name: ``measure(a (n, d_a), b (n, d_b)) -> float`` with declared
invariances (:class:`ftlens.similarity.measure.Measure`).

Adding a measure: one file in this package that defines its function and its :class:`Measure`,
and one line in :data:`BUILTIN`. The property table (``tests/test_properties.py``), the API
(``ftlens.CKA(..., measure=NAME)``) and the CLI (``ftlens cka --measure NAME``) read the registry.
"""

from __future__ import annotations

import importlib

from ftlens.errors import ConfigError
from ftlens.similarity.measure import Measure

__all__ = ["BUILTIN", "get_measure", "measure_names", "measures", "register", "unregister"]

#: ``"module:ATTRIBUTE"`` of every built-in :class:`Measure`, one line each
BUILTIN: tuple[str, ...] = (
    "ftlens.similarity.cka:LINEAR_CKA",
    "ftlens.similarity.cka:LINEAR_CKA_DEBIASED",
    "ftlens.similarity.cka:RBF_CKA",
    "ftlens.similarity.cka:RBF_CKA_DEBIASED",
    "ftlens.similarity.procrustes:PROCRUSTES_DISTANCE",
    "ftlens.similarity.subspace:SUBSPACE_FEATURES",
    "ftlens.similarity.subspace:SUBSPACE_SAMPLES",
    "ftlens.similarity.cca:CCA",
    "ftlens.similarity.svcca:SVCCA",
    "ftlens.similarity.pwcca:PWCCA",
    "ftlens.similarity.rsa:RSA_CORRELATION_SPEARMAN",
    "ftlens.similarity.rsa:RSA_EUCLIDEAN_PEARSON",
    "ftlens.similarity.rsa:RSA_COSINE_SPEARMAN",
    "ftlens.similarity.mutual_knn:MUTUAL_KNN",
)

_MEASURES: dict[str, Measure] = {}


def register(measure: Measure, *, replace: bool = False) -> Measure:
    """Add ``measure`` under ``measure.name`` (``replace=True`` to redefine a name); returns it."""
    if not isinstance(measure, Measure):
        raise ConfigError(f"register() takes a ftlens.similarity.Measure, got {type(measure).__name__}.")
    if measure.name in _MEASURES and not replace:
        raise ConfigError(f"a measure named {measure.name!r} is registered already; pick another "
                          "name or pass replace=True.")
    _MEASURES[measure.name] = measure
    return measure


def unregister(name: str) -> Measure:
    """Remove the measure called ``name`` and return it."""
    return _MEASURES.pop(get_measure(name).name)


def get_measure(measure: str | Measure) -> Measure:
    """The registered measure called ``measure`` (a :class:`Measure` is returned as it is)."""
    if isinstance(measure, Measure):
        return measure
    try:
        return _MEASURES[measure]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown similarity measure {measure!r}; known measures: "
                          f"{', '.join(measure_names())}.") from None


def measure_names() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(_MEASURES)


def measures() -> dict[str, Measure]:
    """A copy of the registry: name -> :class:`Measure`."""
    return dict(_MEASURES)


for _entry in BUILTIN:
    _module, _attribute = _entry.split(":")
    register(getattr(importlib.import_module(_module), _attribute))
