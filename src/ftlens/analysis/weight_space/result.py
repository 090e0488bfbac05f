""":class:`WeightDiff`: the tables of a weight-space diff, saved as a result folder.

A folder written by :meth:`WeightDiff.save` (``ftlens weights --out``, and ``weights/`` inside the
folder of ``ftlens compare``) holds ``weights.json`` (what was compared; the folder's marker),
``weights.csv`` (one row per layer), ``weight_tensors.csv`` (one row per tensor) and
``weight_spectrum.csv`` (the singular values of every matrix's ``ΔW``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ftlens import io
from ftlens.errors import ResultNotFoundError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FILES", "WeightDiff", "load_weight_diff"]

#: the files of a saved weight diff
FILES = {"config": "weights.json", "per_layer": "weights.csv", "tensors": "weight_tensors.csv",
         "spectrum": "weight_spectrum.csv"}


@dataclass
class WeightDiff:
    """What finetuning changed in the weights (:func:`ftlens.weight_diff`).

    Attributes:
        per_layer: one row per analysis layer (index ``layer``; ``layer_number``, ``relative_change``,
            ``cosine``, ``effective_rank``, ``stable_rank``, ``bn_mean_shift``, ...;
            :mod:`~ftlens.analysis.weight_space.tables` defines them).
        tensors: one row per floating tensor of either model (``layer`` is empty outside the
            analysis layers, e.g. a stem or a head).
        spectrum: ``tensor, layer, layer_number, index, singular_value`` of every matrix's ``ΔW``.
        config: the models, layers, totals over all parameters and versions.
    """

    per_layer: pd.DataFrame
    tensors: pd.DataFrame
    spectrum: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return [str(i) for i in self.per_layer.index]

    def singular_values(self, tensor: str) -> pd.Series:
        """The singular values of ``tensor``'s ``ΔW``, largest first (index 1..k)."""
        rows = self.spectrum[self.spectrum["tensor"] == tensor]
        return pd.Series(rows["singular_value"].to_numpy(), index=pd.Index(rows["index"].to_numpy(), name="index"),
                         name=tensor)

    def plot(self, *, title: str | None = None) -> Figure:
        """Relative change and effective rank of ``ΔW`` per layer (a matplotlib Figure)."""
        from ftlens.report.weight_plots import weight_change_per_layer

        name = title or f"{self.config.get('finetuned', {}).get('name', 'finetuned')} vs " \
                        f"{self.config.get('pretrained', {}).get('name', 'pretrained')}"
        return weight_change_per_layer({name: self.per_layer})

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the four files of :data:`FILES` into ``directory`` (atomic)."""
        d = Path(directory)
        io.write_table(d / FILES["per_layer"], self.per_layer)
        io.write_table(d / FILES["tensors"], self.tensors.set_index("tensor"))
        io.write_table(d / FILES["spectrum"], self.spectrum.set_index("tensor"))
        io.write_json(d / FILES["config"], self.config)  # the marker last: a folder with it is complete
        return d

    def __repr__(self) -> str:
        total = self.config.get("total", {})
        return (f"WeightDiff({len(self.per_layer)} layers, relative change of all parameters "
                f"{total.get('relative_change', float('nan')):.4g})")

    def _repr_html_(self) -> str:
        from ftlens.display import frame_html

        return frame_html(self.per_layer, "weight change per layer (float64)")


def load_weight_diff(directory: str | os.PathLike) -> WeightDiff:
    """Read a :class:`WeightDiff` written by :meth:`WeightDiff.save`."""
    d = Path(directory)
    if not (d / FILES["config"]).is_file():
        raise ResultNotFoundError(f"{d} holds no weight diff ({FILES['config']}); write one with "
                                  "`ftlens weights PRETRAINED FINETUNED --out DIR`")
    per_layer = pd.read_csv(d / FILES["per_layer"], index_col="layer")
    tensors = pd.read_csv(d / FILES["tensors"], keep_default_na=False, na_values=[""])
    tensors["layer"] = tensors["layer"].fillna("")
    spectrum = pd.read_csv(d / FILES["spectrum"], keep_default_na=False, na_values=[""])
    spectrum["layer"] = spectrum["layer"].fillna("")
    return WeightDiff(per_layer, tensors, spectrum, io.read_json(d / FILES["config"]))
