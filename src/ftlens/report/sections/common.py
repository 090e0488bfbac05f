"""What every section of the report uses: figure blocks, run labels, layer labels, JSON and config reading."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ftlens.layers import layer_numbers
from ftlens.layout import read_yaml_config
from ftlens.report.figures import figure_png, layer_title
from ftlens.report.html import Figure
from ftlens.report.inputs import Source

METRIC_TEXT = {
    "learning": ("Learning of invariances", "learning = STIR(ft|ft) - STIR(pt|ft)"),
    "forgetting": ("Forgetting of invariances", "forgetting = STIR(pt|pt) - STIR(ft|pt)"),
    "cka_divergence": ("CKA divergence", "cka divergence = 1 - CKA(ft, pt)"),
}


def figure_block(fig, caption: str, title: str = "") -> Figure:
    return Figure(figure_png(fig), caption, title)


def read_json(path: Path | None) -> Any:
    return json.loads(path.read_text()) if path is not None and path.exists() else None


def layer_index(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` indexed by layer name, shown as "number (name)"; the ``layer_number`` column (if any) gives the number."""
    df = df.copy()
    names = [str(i) for i in df.index]
    numbers = df.pop("layer_number").astype(int).tolist() if "layer_number" in df.columns else layer_numbers(names)
    df.index = [layer_title(name, n) for name, n in zip(names, numbers, strict=True)]
    df.index.name = "layer"
    return df


def read_config(path: Path) -> dict[str, Any]:
    """A config.yaml as a dict ({} when absent); ConfigError when it is not a readable mapping."""

    return read_yaml_config(path)


class Labels:
    """Run labels: the run name alone for one source, ``source/run`` for several."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self.many = len(sources) > 1

    def __call__(self, src: Source, name: str) -> str:
        return f"{src.name}/{name}" if self.many else name


