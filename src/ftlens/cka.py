"""The CKA one-liner: ``ftlens.CKA(first, second).compare(loader).plot()``.

Linear CKA between every layer of one model (``first``, the rows) and every layer of another
(``second``, the columns) on the same images (:func:`ftlens.similarity.cka_matrix`), or any
registered similarity measure (``measure=NAME``, :mod:`ftlens.similarity.registry`). The result
saves in the layout of ``ftlens cka`` (``cka.csv`` + ``cka.json``), so ``ftlens report`` reads it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ftlens import io
from ftlens.errors import ConfigError, FtlensError, ImageError
from ftlens.images import as_images
from ftlens.models import ModelWrapper, load_model
from ftlens.similarity.measure import Measure
from ftlens.similarity.registry import get_measure, measure_names
from ftlens.texts import as_texts, count
from ftlens.vocabulary import upgrade_keys

__all__ = ["CKA", "CKAResult", "load_cka", "resolve_measure"]


def resolve_measure(measure: str | Measure | None, debiased: bool = False) -> Measure:
    """The measure to compare layers with: ``measure`` (a registered name or a :class:`Measure`),
    or by default linear CKA, debiased if ``debiased``."""
    if measure is None:
        return get_measure("linear_cka_debiased" if debiased else "linear_cka")
    m = get_measure(measure)
    if debiased and not m.name.endswith("_debiased"):
        raise ConfigError(f"debiased=True (--debiased) selects linear_cka_debiased, but the measure {m.name!r} "
                          f"was given: name one measure (known: {', '.join(measure_names())}).")
    return m


@dataclass
class CKAResult:
    """``matrix``: CKA (or the ``config["measure"]`` chosen), rows ``first_layer`` (layers of the first
    model), columns ``second_layer``; ``config``: what was run."""

    matrix: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def estimator(self) -> str:
        return str(self.config.get("estimator", "biased"))

    @property
    def measure(self) -> str:
        """The registered name of the measure in ``matrix`` (results of earlier versions: ``linear_cka``)."""
        return str(self.config.get("measure", "linear_cka"))

    @property
    def title(self) -> str:
        """What the numbers are, e.g. ``linear CKA (biased)`` or the measure's label."""
        if self.measure.startswith("linear_cka"):
            return f"linear CKA ({self.estimator})"
        return str(self.config.get("similarity", self.measure)).removesuffix(", float64")

    @property
    def colorbar(self) -> str:
        """The colour-bar label of a heat map: the measure and its value for identical layers."""
        name = "linear CKA" if self.measure.startswith("linear_cka") else self.measure
        return name + (" (0 = identical)" if self.config.get("measure_kind") == "distance" else " (1 = identical)")

    def plot(self, *, title: str | None = None):
        """Heat map with an adaptive colour scale and the values in the cells (a matplotlib Figure)."""
        from ftlens.report.figures import cka_heatmap

        a, b = self.config.get("first", "the first model"), self.config.get("second", "the second model")
        return cka_heatmap(self.matrix, title=title or f"{self.title}: {a} vs {b}",
                           xlabel=f"layer of {b}", ylabel=f"layer of {a}", colorbar=self.colorbar)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``cka.csv`` and ``cka.json`` (atomic) into ``directory``."""
        d = Path(directory)
        io.write_table(d / "cka.csv", self.matrix)
        io.write_json(d / "cka.json", self.config)
        return d

    def _repr_html_(self) -> str:
        from ftlens.display import frame_html

        a, b = self.config.get("first", "first"), self.config.get("second", "second")
        head = (f"{self.title} of {a} (rows) vs {b} (columns), "
                f"{self.config.get('images', '?')} images")
        return frame_html(self.matrix, head)

    def __repr__(self) -> str:
        return f"CKAResult({self.matrix.shape[0]}x{self.matrix.shape[1]} layers, {self.title})"


def load_cka(directory: str | os.PathLike) -> CKAResult:
    """Read a :class:`CKAResult` written by :meth:`CKAResult.save` or ``ftlens cka --out``.

    Results of earlier versions (keys ``model_a`` / ``model_b``) are read with the current names.
    """
    d = Path(directory)
    matrix = pd.read_csv(d / "cka.csv", index_col=0)
    matrix.index.name, matrix.columns.name = "first_layer", "second_layer"
    config = upgrade_keys(io.read_json(d / "cka.json")) if (d / "cka.json").exists() else {}
    return CKAResult(matrix, config)


class CKA:
    """Compare two models layer by layer with linear CKA (in the spirit of ``torch_cka``).

    Args:
        first, second: models or specs for :func:`ftlens.load_model` (same input size); the
            result's rows are the first model's layers, its columns the second's.
        first_layers, second_layers: layers (names or globs; default: every block).
        debiased: debiased (unbiased-HSIC) CKA instead of the biased one.
        device: where the forward passes run (default: the models' device).
        measure: another registered similarity measure by name (``ftlens.similarity.measure_names()``)
            or a :class:`ftlens.similarity.Measure`; default linear CKA.

    Example:
        >>> result = ftlens.CKA("ftlens:vit-micro", "runs/x@last").compare(loader)  # doctest: +SKIP
        >>> result.plot()                                                           # doctest: +SKIP
    """

    def __init__(self, first: Any, second: Any, *, first_layers: Sequence[str] | None = None,
                 second_layers: Sequence[str] | None = None, debiased: bool = False,
                 device: str | torch.device | None = None, measure: str | Measure | None = None) -> None:
        self.measure = resolve_measure(measure, debiased)  # before loading: a wrong name fails fast
        self.first = first if isinstance(first, ModelWrapper) else load_model(first, layers=first_layers)
        self.second = second if isinstance(second, ModelWrapper) else load_model(second, layers=second_layers)
        self.first_layers = list(first_layers) if first_layers is not None else None
        self.second_layers = list(second_layers) if second_layers is not None else None
        self.debiased = self.measure.name.endswith("_debiased")
        self.device = device
        self.result: CKAResult | None = None

    def compare(self, images: Any, n_images: int | None = None, *, batch_size: int = 256,
                progress: bool = False) -> CKAResult:
        """CKA of every layer pair on ``images`` (a tensor, Dataset or DataLoader; at most ``n_images``),
        or on texts for text models (strings, a tokenised batch or a text dataset: each model
        tokenises them with its own tokenizer)."""

        a, b = self.first, self.second
        texts = as_texts(images, n_images)
        if texts is not None:  # each text model tokenises the texts itself
            x, n = texts, count(texts)
        else:
            if tuple(a.input_size) != tuple(b.input_size):
                raise ImageError(f"the models take different input sizes: {a.input_size} vs {b.input_size}")
            x = as_images(images, n_images)
            n = int(x.shape[0])
        ra = a.representations(x, self.first_layers, batch_size=batch_size, device=self.device, progress=progress)
        rb = b.representations(x, self.second_layers, batch_size=batch_size, device=self.device, progress=progress)
        m = self.measure
        matrix = m.matrix(ra, rb)
        matrix.index.name, matrix.columns.name = "first_layer", "second_layer"
        config = {"kind": "ftlens.cka", "first": a.name, "second": b.name, "first_spec": str(a.spec),
                  "second_spec": str(b.spec), "images": n, "measure": m.name, "measure_kind": m.kind}
        if "cka" in m.name:  # the HSIC estimator is a CKA notion
            config["estimator"] = "debiased" if m.name.endswith("_debiased") else "biased"
        config.update(similarity=f"{m.label}, float64", versions=io.versions())
        self.result = CKAResult(matrix, config)
        return self.result

    def plot(self, **kwargs: Any):
        """The last result's heat map (after :meth:`compare`)."""
        if self.result is None:
            raise FtlensError("nothing to plot yet: call .compare(images) first")
        return self.result.plot(**kwargs)

    def export(self) -> CKAResult | None:
        """The last result (torch_cka's name for it)."""
        return self.result
