"""Notebook display of results: ``.plot()`` and ``_repr_html_`` for :class:`~ftlens.invariance.Comparison`."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from ftlens.errors import FtlensError
from ftlens.layers import layer_numbers, layer_title


def frame_html(frame: pd.DataFrame, heading: str, digits: int = 3) -> str:
    """A small HTML table (numbers with ``digits`` decimals, never ``-0.000``) under a heading."""
    from ftlens.report.figures import fmt_num

    body = frame.to_html(float_format=lambda v: fmt_num(v, digits), border=0, na_rep="–")
    return f"<div><p><b>{html.escape(heading)}</b></p>{body}</div>"


class ComparisonDisplay:
    """Mixed into :class:`~ftlens.invariance.Comparison`: figures and a notebook table."""

    per_layer: pd.DataFrame
    config: dict[str, Any]

    def plot(self, kind: str = "per_layer", **kwargs: Any):
        """A matplotlib Figure: ``"per_layer"`` (learning, forgetting, cka divergence per layer),
        ``"flow"`` (InvarianceFlow, eq. 5), ``"flow_relative"`` or ``"cka"`` (CKA of ft vs pt layers)."""
        from ftlens.report import invariance_plots as ip

        if kind == "per_layer":
            return ip.metrics_figure(self, **kwargs)
        if kind in ("flow", "flow_relative"):
            return ip.flow_heatmap(self, relative=kind == "flow_relative", **kwargs)
        if kind == "cka":
            from ftlens.report.figures import cka_heatmap

            return cka_heatmap(self.cka_matrix(), title=kwargs.get("title", "linear CKA, finetuned vs pretrained"),  # type: ignore[attr-defined]
                               xlabel="pretrained layer", ylabel="finetuned layer")

        raise FtlensError(f"unknown plot kind {kind!r}; kinds: per_layer, flow, flow_relative, cka")

    def _repr_html_(self) -> str:
        table = self.summary()  # type: ignore[attr-defined]
        names = [str(n) for n in table.index]
        numbers = table.pop("layer_number").tolist() if "layer_number" in table.columns else layer_numbers(names)
        table.index = [layer_title(n, int(k)) for n, k in zip(names, numbers, strict=True)]
        table.index.name = "layer"
        return frame_html(table, repr(self))
