"""What a similarity measure is to ftlens: a function of two paired representations plus the
properties it declares, which the property table (``tests/test_properties.py``) checks.

A measure takes ``a`` of shape ``(n, d_a)`` and ``b`` of shape ``(n, d_b)`` (row ``i`` of both
belongs to input ``i``; tensors or arrays) and returns a float. It says whether it is a
*similarity* (identical representations give 1) or a *distance* (they give 0), and, for every
transformation in :data:`TRANSFORMATIONS` of one side, whether it must be invariant to it or
must not be.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ftlens.errors import ConfigError

__all__ = ["KINDS", "TRANSFORMATIONS", "Measure"]

#: Transformations of one representation ``(n, d) -> (n, d')``; every measure declares each one
#: as an invariance it must have or one it must not have.
TRANSFORMATIONS: dict[str, str] = {
    "orthogonal": "x Q with Q orthogonal (a rotation or reflection of the feature space)",
    "isotropic_scale": "c x with a scalar c > 0",
    "translation": "x + t, the same vector t added to every row",
    "feature_permutation": "the features (columns) in another order",
    "invertible_linear": "x M with M invertible but not a multiple of an orthogonal matrix",
    "sample_shuffle": "the samples (rows) in another order, no longer paired with the other side",
}

#: kind of measure -> its value for identical representations
KINDS: dict[str, float] = {"similarity": 1.0, "distance": 0.0}


@dataclass(frozen=True)
class Measure:
    """A similarity measure with the metadata the registry and the property table need.

    Args:
        name: its registry key (``ftlens cka --measure NAME``, ``ftlens.CKA(..., measure=NAME)``).
        fn: ``fn(a (n, d_a), b (n, d_b)) -> float``; float64 inside, any tensor or array in.
        kind: ``"similarity"`` (1 = identical) or ``"distance"`` (0 = identical).
        invariant_to: the transformations (names in :data:`TRANSFORMATIONS`) of one side that
            must leave the value unchanged.
        not_invariant_to: the others; together with ``invariant_to`` every transformation.
        label: how tables and figures name it, e.g. ``"linear CKA (biased HSIC)"``.
        layers: optional faster route ``layers(reps_a, reps_b) -> DataFrame`` for every pair
            of layers (``{layer: (n, ...)}`` dicts; ``reps_b=None``: ``reps_a`` with itself),
            equal to calling ``fn`` on each pair.
    """

    name: str
    fn: Callable[[Any, Any], float]
    kind: str
    invariant_to: AbstractSet[str]  # stored as a frozenset
    not_invariant_to: AbstractSet[str]
    label: str
    layers: Callable[..., pd.DataFrame] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "invariant_to", frozenset(self.invariant_to))
        object.__setattr__(self, "not_invariant_to", frozenset(self.not_invariant_to))
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ConfigError(f"a measure name is letters, digits and underscores, got {self.name!r}.")
        if self.kind not in KINDS:
            raise ConfigError(f"measure {self.name!r}: kind must be one of {list(KINDS)}, got {self.kind!r}.")
        declared = self.invariant_to | self.not_invariant_to
        unknown = sorted(declared - set(TRANSFORMATIONS))
        both = sorted(self.invariant_to & self.not_invariant_to)
        missing = sorted(set(TRANSFORMATIONS) - declared)
        if unknown or both or missing:
            raise ConfigError(
                f"measure {self.name!r} must declare each of {list(TRANSFORMATIONS)} exactly once "
                f"(invariant_to or not_invariant_to); unknown: {unknown}, in both: {both}, "
                f"missing: {missing}."
            )

    @property
    def identical(self) -> float:
        """The value for two identical representations: 1.0 (similarity) or 0.0 (distance)."""
        return KINDS[self.kind]

    def __call__(self, a: Any, b: Any) -> float:
        """The measure of ``a`` (n, d_a) and ``b`` (n, d_b), a Python float."""
        return float(self.fn(a, b))

    def matrix(self, reps_a: Mapping[str, Any], reps_b: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """The measure between every layer of ``reps_a`` and every layer of ``reps_b``.

        ``{layer: (n, ...)}`` dicts with the same ``n``; ``reps_b=None`` compares ``reps_a`` with
        itself. A DataFrame (index: layers of a, columns: layers of b); ``.attrs["measure"]``
        is this measure's name.
        """
        for what, reps in (("reps_a", reps_a), ("reps_b", reps_b)):
            if reps is not None and (not isinstance(reps, Mapping) or not reps):
                raise ConfigError(f"{what} must be a non-empty dict {{layer name: representation}}.")
        if self.layers is not None:
            df = self.layers(reps_a, reps_b)
        else:
            other = reps_a if reps_b is None else reps_b
            values = np.array([[self(xa, xb) for xb in other.values()] for xa in reps_a.values()],
                              dtype=np.float64).reshape(len(reps_a), len(other))
            df = pd.DataFrame(values, index=pd.Index(list(reps_a), name="first_layer"),
                              columns=pd.Index(list(other), name="second_layer"))
        df.attrs["measure"] = self.name
        return df
