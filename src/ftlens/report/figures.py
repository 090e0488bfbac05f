"""Figure helpers shared by every plot: headless backend, one legible style, atomic PNG writes,
number formatting, heat maps and the overlaid per-layer figure.

Text is never smaller than 9 pt at the size the report shows a figure (figures are embedded at
96 CSS px per inch, see :func:`figure_png` and :mod:`ftlens.report.html`).
"""

from __future__ import annotations

import functools
import io as _io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator

from ftlens import io  # noqa: E402
from ftlens.layers import layer_label, layer_title  # noqa: E402,F401  (re-exported)

#: dots per inch of embedded PNGs; the page shows them at 96 CSS px per inch (sharp on 1.5x screens)
EMBED_DPI = 144
#: the smallest text anywhere in a figure (points at the report's width)
MIN_FONT = 9
STYLE: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": MIN_FONT,
    "ytick.labelsize": MIN_FONT,
    "legend.fontsize": MIN_FONT,
    "legend.title_fontsize": MIN_FONT,
    "figure.titlesize": 11,
    "axes.formatter.limits": (-3, 4),  # 1e-4 scale and below: an offset exponent, not 0.000125 per tick
    "axes.formatter.use_mathtext": True,
    "axes.titlepad": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
F = TypeVar("F", bound=Callable[..., Any])


def styled(func: F) -> F:
    """Run a plotting function under :data:`STYLE` (the user's rcParams are left alone)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with plt.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return io.write_bytes(path, buf.getvalue())


def figure_png(fig, dpi: int = EMBED_DPI) -> bytes:
    """PNG bytes of a figure (closes it), for embedding in the HTML report at 96 px per inch."""
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def fmt_num(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, never ``-0.000``; NaN -> ``–``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return "–"
    text = f"{v:.{digits}f}"
    if text.startswith("-") and float(text) == 0.0:
        text = text[1:]
    return text


def fmt_value(value: Any) -> str:
    """A number for prose: 3 decimals from 0.1 up, else 3 significant digits; never ``-0``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return "–"
    if abs(v) < 1e-12:  # floating-point noise around an exact zero
        return "0"
    if abs(v) >= 0.1:
        return fmt_num(v, 3)
    text = f"{v:.3g}"
    return text[1:] if text.startswith("-") and float(text) == 0.0 else text


def decimals_for(span: float) -> int:
    """Decimals that show differences of ``span / 20``."""
    if not np.isfinite(span) or span <= 0:
        return 2
    return int(min(4, max(2, 1 - math.floor(math.log10(span / 2)))))


@styled
def cka_heatmap(matrix: pd.DataFrame, *, title: str, xlabel: str, ylabel: str, annotate: bool | None = None,
                colorbar: str = "linear CKA (1 = identical)") -> Figure:
    """Heat map of a layer x layer similarity matrix (rows = ``ylabel`` side), with numbers.

    The colour scale spans the values present (so 0.91-0.97 is not one uniform colour); the
    colour bar (labelled ``colorbar``) says so. ``annotate`` writes each value in its cell
    (default: up to 16 layers).
    """
    values = matrix.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.005, hi + 0.005
    n_rows, n_cols = values.shape
    size = min(10.0, max(4.8, 0.45 * max(n_rows, n_cols) + 2.5))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(values, vmin=lo, vmax=hi, cmap="viridis", origin="lower", aspect="auto")
    ax.set_xticks(range(n_cols), [layer_label(str(c)) for c in matrix.columns], rotation=90)
    ax.set_yticks(range(n_rows), [layer_label(str(r)) for r in matrix.index])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if annotate is None:
        annotate = max(n_rows, n_cols) <= 16
    if annotate:
        digits = decimals_for(hi - lo)
        for i in range(n_rows):
            for j in range(n_cols):
                if np.isfinite(values[i, j]):
                    dark = (values[i, j] - lo) / (hi - lo) < 0.55
                    ax.text(j, i, fmt_num(values[i, j], digits), ha="center", va="center", fontsize=MIN_FONT,
                            color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label=colorbar)
    fig.tight_layout()
    return fig


def diverging_limits(values: np.ndarray) -> float:
    """Symmetric colour limit for a diverging map centred at 0."""
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


_DASHES = ("-", "--", ":", "-.")


def line_styles(labels: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{label: (colour, line style)}``: one colour per run, one line style per experiment for
    labels ``experiment/run`` (the same run in two experiments: same colour, different dashes)."""
    runs = list(dict.fromkeys(label.split("/", 1)[-1] for label in labels))
    exps = list(dict.fromkeys(label.split("/", 1)[0] if "/" in label else "" for label in labels))
    out = {}
    for label in labels:
        run = label.split("/", 1)[-1]
        exp = label.split("/", 1)[0] if "/" in label else ""
        out[label] = (f"C{runs.index(run) % 10}", _DASHES[exps.index(exp) % len(_DASHES)])
    return out


def interval(table: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray, str] | None:
    """The band drawn around ``metric``: its confidence interval columns when the table has them
    (``<metric>_lo``/``_hi``, as :class:`~ftlens.invariance.Comparison` writes them), else mean +-
    ``<metric>_std``."""
    for lo, hi in ((f"{metric}_lo", f"{metric}_hi"), (f"{metric}_ci_low", f"{metric}_ci_high")):
        if lo in table.columns and hi in table.columns:
            return table[lo].to_numpy(dtype=float), table[hi].to_numpy(dtype=float), "confidence interval"
    std = f"{metric}_std"
    if std in table.columns and table[std].notna().any():
        mean = table[metric].to_numpy(dtype=float)
        s = np.nan_to_num(table[std].to_numpy(dtype=float), nan=0.0)
        return mean - s, mean + s, "± 1 std over seeds"
    return None


@styled
def overlay_per_layer(
    tables: Mapping[str, pd.DataFrame],
    metric: str,
    *,
    ylabel: str,
    title: str,
    baseline: Mapping[str, pd.Series] | None = None,
) -> Figure:
    """One line per run over layers (1-based), on shared axes; a band per run where an interval exists.

    Args:
        tables: ``{run label: per-layer table}`` (index = layer names, a ``metric`` column).
        metric: the column drawn.
        baseline: optional ``{label: per-layer values}`` drawn dashed (e.g. a null baseline).

    Returns:
        the Figure; the legend sits outside the axes, right of the data.
    """
    fig, ax = plt.subplots(figsize=(8.6, 3.9))
    longest: list[str] = []
    bands = set()
    styles = line_styles(list(tables))
    for label, table in tables.items():
        if metric not in table.columns:
            continue
        layers = [str(i) for i in table.index]
        longest = layers if len(layers) > len(longest) else longest
        x = np.arange(1, len(layers) + 1)
        y = table[metric].to_numpy(dtype=float)
        colour, dash = styles[label]
        ax.plot(x, y, marker="o", ms=4, lw=1.8, color=colour, ls=dash, label=label)
        band = interval(table, metric)
        if band is not None:
            ax.fill_between(x, band[0], band[1], color=colour, alpha=0.15, linewidth=0)
            bands.add(band[2])
    for label, values in (baseline or {}).items():
        x = np.arange(1, len(values) + 1)
        ax.plot(x, values.to_numpy(dtype=float), ls="--", color="0.4", lw=1.2, label=label)
    if longest:
        ticks = [layer_label(name) for name in longest]
        ax.set_xticks(np.arange(1, len(longest) + 1), ticks, rotation=90 if max(map(len, ticks)) > 3 else 0)
    ax.set_xlabel("layer (1 = first block)")
    ax.set_ylabel(ylabel)
    ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
    ax.grid(alpha=0.3)
    ax.set_title(title + (f" (band: {' / '.join(sorted(bands))})" if bands else ""))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, title="run")
    fig.tight_layout()
    return fig


@styled
def overlay_epochs(tables: Mapping[str, pd.DataFrame], metric: str, *, ylabel: str, title: str) -> Figure:
    """One line per run over epochs (``tables``: ``{run: frame indexed by epoch with a metric column}``)."""

    fig, ax = plt.subplots(figsize=(8.6, 3.9))
    styles = line_styles(list(tables))
    for label, table in tables.items():
        if metric in table.columns:
            colour, dash = styles[label]
            ax.plot(table.index, table[metric].to_numpy(dtype=float), marker="o", ms=4, lw=1.8, color=colour,
                    ls=dash, label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, title="run")
    fig.tight_layout()
    return fig
