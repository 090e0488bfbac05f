"""The words of ftlens's tables, written once (``docs/quantities.md``, "Vocabulary").

- Roles: ``pretrained`` and ``finetuned``, spelled out in values and in column names.
- STIR is directional: ``STIR(target | reference)``; the *reference* model is inverted, the
  *target* model is evaluated on the inverted images. Its per-layer column is
  ``stir_<target>_given_<reference>``, e.g. ``stir_finetuned_given_pretrained``.
- A layer is named by ``layer`` (its module name) and ``layer_number`` (its 1-based position
  in the model); a table with two layers prefixes both with the side, e.g. ``target_layer`` /
  ``target_layer_number``.
- Two arbitrary models (the CKA one-liner, layer x layer similarity matrices): ``first`` and
  ``second``, in the order given; the matrices' axes are ``first_layer`` and ``second_layer``.

Tables written by earlier versions used other names; :func:`upgrade_columns` maps them on read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

__all__ = ["FINETUNED", "LEGACY_COLUMNS", "PRETRAINED", "ROLES", "add_layer_numbers", "residual_column",
           "stir_column", "upgrade_columns", "upgrade_keys"]

#: the two roles of a comparison
PRETRAINED = "pretrained"
FINETUNED = "finetuned"
ROLES = (PRETRAINED, FINETUNED)


def stir_column(target: str, reference: str) -> str:
    """The per-layer column of ``STIR(target^[i] | reference^[i])``: ``stir_<target>_given_<reference>``."""
    return f"stir_{target}_given_{reference}"


def residual_column(role: str) -> str:
    """The per-layer column of the mean inversion residual on the ``role`` model: ``residual_<role>``."""
    return f"residual_{role}"


#: old column (or key) name -> current name, for tables and configs written by earlier versions
LEGACY_COLUMNS: dict[str, str] = {
    # per-layer / per-seed / dynamics tables
    "stir_pt_pt": stir_column(PRETRAINED, PRETRAINED),
    "stir_ft_ft": stir_column(FINETUNED, FINETUNED),
    "stir_ft_given_pt": stir_column(FINETUNED, PRETRAINED),
    "stir_pt_given_ft": stir_column(PRETRAINED, FINETUNED),
    "residual_pt": residual_column(PRETRAINED),
    "residual_ft": residual_column(FINETUNED),
    # the clean-image CKA table of a comparison (the second side was always the pretrained model)
    "model_a": "model",
    "layer_a": "layer",
    "layer_b": "pretrained_layer",
    # the CKA one-liner (cka.json) and its matrix
    "spec_a": "first_spec",
    "spec_b": "second_spec",
}
_DROPPED = ("model_b",)  # always "pretrained": implied by the column name pretrained_layer
_ONE_LINER_KEYS = {"model_a": "first", "model_b": "second", "spec_a": "first_spec", "spec_b": "second_spec"}


def upgrade_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the column names of earlier versions mapped to the current ones (a copy if any changed)."""
    old = [c for c in df.columns if c in LEGACY_COLUMNS or c in _DROPPED]
    if not old:
        return df
    return df.drop(columns=[c for c in old if c in _DROPPED]).rename(columns=LEGACY_COLUMNS)


def upgrade_keys(config: Mapping) -> dict:
    """The CKA one-liner's configuration (``cka.json``) with the keys of earlier versions mapped."""
    return {_ONE_LINER_KEYS.get(k, k): v for k, v in config.items()}


def add_layer_numbers(df: pd.DataFrame, numbers: Mapping[str, int], layer_columns: Sequence[str]) -> pd.DataFrame:
    """Insert ``<column>_number`` (1-based, from ``numbers``) right after each layer column.

    ``layer`` gets ``layer_number``, ``target_layer`` gets ``target_layer_number``, and so on;
    columns already present are recomputed, so the table has one source of truth.
    """
    out = df.copy()
    for col in layer_columns:
        if col not in out.columns:
            continue
        name = f"{col}_number"
        values = out[col].map(lambda layer: numbers.get(layer))
        values = values.astype("Int64" if values.isna().any() else "int64")  # Int64: a layer without a number
        if name in out.columns:
            out = out.drop(columns=name)
        out.insert(out.columns.get_loc(col) + 1, name, values)
    return out
