"""The CKA one-liner: ``ftlens.CKA(first, second).compare(loader).plot()``.

Linear CKA between every layer of one model (``first``, the rows) and every layer of another
(``second``, the columns) on the same images (:func:`ftlens.similarity.cka_matrix`). The result saves in the layout of ``ftlens cka``
(``cka.csv`` + ``cka.json``), so ``ftlens report`` reads it.
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
from ftlens.vocabulary import upgrade_keys

__all__ = ["CKA", "CKAResult", "load_cka"]


@dataclass
class CKAResult:
    """``matrix``: CKA, rows ``first_layer`` (layers of the first model), columns ``second_layer``; ``config``: what was run."""

    matrix: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def estimator(self) -> str:
        return str(self.config.get("estimator", "biased"))

    def plot(self, *, title: str | None = None):
        """Heat map with an adaptive colour scale and the values in the cells (a matplotlib Figure)."""
        from ftlens.report.figures import cka_heatmap

        a, b = self.config.get("first", "the first model"), self.config.get("second", "the second model")
        return cka_heatmap(self.matrix, title=title or f"linear CKA ({self.estimator}): {a} vs {b}",
                           xlabel=f"layer of {b}", ylabel=f"layer of {a}")

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``cka.csv`` and ``cka.json`` (atomic) into ``directory``."""
        d = Path(directory)
        io.write_table(d / "cka.csv", self.matrix)
        io.write_json(d / "cka.json", self.config)
        return d

    def _repr_html_(self) -> str:
        from ftlens.display import frame_html

        a, b = self.config.get("first", "first"), self.config.get("second", "second")
        head = (f"linear CKA ({self.estimator}) of {a} (rows) vs {b} (columns), "
                f"{self.config.get('images', '?')} images")
        return frame_html(self.matrix, head)

    def __repr__(self) -> str:
        return f"CKAResult({self.matrix.shape[0]}x{self.matrix.shape[1]} layers, {self.estimator})"


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

    Example:
        >>> result = ftlens.CKA("ftlens:vit-micro", "runs/x@last").compare(loader)  # doctest: +SKIP
        >>> result.plot()                                                           # doctest: +SKIP
    """

    def __init__(self, first: Any, second: Any, *, first_layers: Sequence[str] | None = None,
                 second_layers: Sequence[str] | None = None, debiased: bool = False,
                 device: str | torch.device | None = None) -> None:
        from ftlens.models import ModelWrapper, load_model

        self.first = first if isinstance(first, ModelWrapper) else load_model(first, layers=first_layers)
        self.second = second if isinstance(second, ModelWrapper) else load_model(second, layers=second_layers)
        self.first_layers = list(first_layers) if first_layers is not None else None
        self.second_layers = list(second_layers) if second_layers is not None else None
        self.debiased = debiased
        self.device = device
        self.result: CKAResult | None = None

    def compare(self, images: Any, n_images: int | None = None, *, batch_size: int = 256,
                progress: bool = False) -> CKAResult:
        """CKA of every layer pair on ``images`` (a tensor, Dataset or DataLoader; at most ``n_images``)."""
        from ftlens.errors import ImageError
        from ftlens.images import as_images
        from ftlens.similarity import cka_matrix

        a, b = self.first, self.second
        if tuple(a.input_size) != tuple(b.input_size):
            raise ImageError(f"the models take different input sizes: {a.input_size} vs {b.input_size}")
        x = as_images(images, n_images)
        ra = a.representations(x, self.first_layers, batch_size=batch_size, device=self.device, progress=progress)
        rb = b.representations(x, self.second_layers, batch_size=batch_size, device=self.device, progress=progress)
        estimator = "debiased" if self.debiased else "biased"
        matrix = cka_matrix(ra, rb, debiased=self.debiased)
        matrix.index.name, matrix.columns.name = "first_layer", "second_layer"
        self.result = CKAResult(matrix, {
            "kind": "ftlens.cka", "first": a.name, "second": b.name, "first_spec": str(a.spec),
            "second_spec": str(b.spec),
            "images": int(x.shape[0]), "estimator": estimator, "similarity": f"linear CKA ({estimator} HSIC), float64",
            "versions": io.versions()})
        return self.result

    def plot(self, **kwargs: Any):
        """The last result's heat map (after :meth:`compare`)."""
        if self.result is None:
            from ftlens.errors import FtlensError

            raise FtlensError("nothing to plot yet: call .compare(images) first")
        return self.result.plot(**kwargs)

    def export(self) -> CKAResult | None:
        """The last result (torch_cka's name for it)."""
        return self.result
