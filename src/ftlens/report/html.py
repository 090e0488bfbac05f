"""A self-contained HTML page: figures embedded as base64 PNG, tables inline, no network.

The page is assembled from :class:`Section` objects, each a title, a short text and a
list of blocks (figures with a caption, tables with a caption, paragraphs). Builders
in :mod:`ftlens.report.build` turn an experiment directory into sections.
"""

from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ftlens import io
from ftlens.report.figures import EMBED_DPI, fmt_num

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1.2em;color:#1d2330;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:2px solid #e3e6ee;padding-bottom:.2em;margin-top:2em}
h3{margin-bottom:.3em}
.lead{color:#4a5266;font-size:1.05em}
figure{display:inline-block;margin:.6em 1em 1em 0;vertical-align:top;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #e3e6ee;border-radius:4px}
figcaption{font-size:.9em;color:#4a5266;margin-top:.3em}
table{border-collapse:collapse;font-size:.86em;margin:.4em 0 1em 0;max-width:100%}
th,td{border:1px solid #dfe3ec;padding:.25em .55em;text-align:right}
th{font-weight:600}
table.text td,table.text th,td.s{text-align:left}
details.tables{margin:.4em 0 1em 0}details.tables>summary{cursor:pointer;font-weight:600}
th{background:#f3f5f9}td:first-child,th:first-child{text-align:left}
.caption{font-size:.88em;color:#4a5266;margin:.2em 0}
.held{color:#12733a;font-weight:600}.nothold{color:#b3261e;font-weight:600}.na{color:#7a8194}
code,pre{background:#f3f5f9;border-radius:3px;padding:.1em .3em;font-size:.88em}
pre{padding:.6em;overflow-x:auto}
nav a{margin-right:1em}
"""


@dataclass
class Figure:
    png: bytes
    caption: str
    title: str = ""


@dataclass
class Table:
    frame: pd.DataFrame
    caption: str
    title: str = ""
    digits: int = 3
    max_columns: int = 9  # wider tables are split into several (no column hidden behind a scroll bar)
    collapsed: bool = False  # shown folded (<details>) under its title


@dataclass
class Text:
    html: str  # trusted HTML written by ftlens (escape user strings with esc())


@dataclass
class Section:
    title: str
    lead: str = ""
    blocks: list[Figure | Table | Text] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return "".join(ch if ch.isalnum() else "-" for ch in self.title.lower()).strip("-")


def esc(text: object) -> str:
    return html.escape(str(text))


def _column_digits(column: pd.Series, digits: int) -> int:
    """Decimals for a column: ``digits``, more when its largest |value| is small (two significant digits)."""

    values = pd.to_numeric(column, errors="coerce").abs()
    values = values[values > 0]
    if values.empty or not values.notna().any():
        return digits
    top = float(values.max())
    if not math.isfinite(top) or top >= 10 ** (1 - digits):
        return digits
    return min(8, 1 - math.floor(math.log10(top)))


def _header(name: object) -> str:
    """A column header that may break after underscores (wide tables wrap instead of scrolling)."""
    return esc(name).replace("_", "_<wbr/>")


def _table_html(table: Table) -> str:
    df = table.frame
    digits = {c: _column_digits(df[c], table.digits) for c in df.columns}

    def fmt(v, column):
        if hasattr(v, "item") and not isinstance(v, (str, bytes)):
            v = v.item()  # numpy scalars
        if isinstance(v, float):
            return fmt_num(v, digits[column])
        return esc(v)

    columns = list(df.columns)
    n_chunks = max(1, -(-len(columns) // max(1, table.max_columns)))
    step = max(1, -(-len(columns) // n_chunks))  # even chunks: 12 columns -> 6 + 6
    chunks = [columns[i : i + step] for i in range(0, len(columns), step)] or [[]]
    parts = []
    for chunk in chunks:
        head = "".join(f"<th>{_header(c)}</th>" for c in [df.index.name or ""] + chunk)
        rows = []
        for idx, row in df[chunk].astype(object).iterrows():  # object: integers stay integers
            cells = "".join(f"<td class='s'>{fmt(v, c)}</td>" if isinstance(v, str) else f"<td>{fmt(v, c)}</td>"
                            for c, v in zip(chunk, row.tolist(), strict=True))
            rows.append(f"<tr><td>{esc(idx)}</td>{cells}</tr>")
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    if table.collapsed:
        return (f"<details class='tables'><summary>{esc(table.title or table.caption)}</summary>"
                f"<p class='caption'>{esc(table.caption)}</p>{''.join(parts)}</details>")
    title = f"<h3>{esc(table.title)}</h3>" if table.title else ""
    return f"{title}<p class='caption'>{esc(table.caption)}</p>" + "".join(parts)


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n":
        return (0, 0)
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _figure_html(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    alt = esc(fig.title or fig.caption)
    width, height = _png_size(fig.png)
    size = ""
    if width and height:  # 96 CSS px per inch of figure: text keeps its point size on the page
        css_w = round(width * 96 / EMBED_DPI)
        size = f" width='{css_w}' height='{round(height * 96 / EMBED_DPI)}'"
        style = f" style='width:{css_w}px'"
    else:
        style = ""
    return (
        f"<figure{style}><img alt='{alt}'{size} src='data:image/png;base64,{data}'/>"
        f"<figcaption>{esc(fig.caption)}</figcaption></figure>"
    )


def render(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole page as one HTML string."""
    nav = " ".join(f"<a href='#{s.anchor}'>{esc(s.title)}</a>" for s in sections)
    body = []
    for s in sections:
        parts = [f"<h2 id='{s.anchor}'>{esc(s.title)}</h2>"]
        if s.lead:
            parts.append(f"<p class='lead'>{s.lead}</p>")
        for b in s.blocks:
            if isinstance(b, Figure):
                parts.append(_figure_html(b))
            elif isinstance(b, Table):
                parts.append(_table_html(b))
            else:
                parts.append(b.html)
        body.append("<section>" + "\n".join(parts) + "</section>")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'/>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'/><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1><p class='lead'>{subtitle}</p>"
        f"<nav>{nav}</nav>{''.join(body)}</body></html>\n"
    )


def write(path: str | os.PathLike, title: str, subtitle: str, sections: list[Section]) -> Path:
    """Render and write the page atomically."""
    return io.write_text(path, render(title, subtitle, sections))
