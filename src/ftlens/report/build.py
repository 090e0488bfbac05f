"""Turn results into ``report.html``: an experiment, a single command's output, a folder of
several, or several experiments side by side (:mod:`ftlens.report.inputs` finds them).

Order of the page: findings, then the figures (runs overlaid on shared axes, one figure per
metric), then per-run details, and what was run (configuration, versions, timings) last.
Every caption states what the figure shows on these numbers; every table says which CKA
estimator produced it. Each section is one module of :mod:`ftlens.report.sections`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ftlens.report import html
from ftlens.report.html import Section, esc
from ftlens.report.inputs import NothingToReportError, discover
from ftlens.report.sections import (
    accuracy,
    cka,
    comparisons,
    correlation,
    distortion,
    dynamics,
    environment,
    findings,
    weights,
)
from ftlens.report.sections.common import Labels, read_config

__all__ = ["BUILDERS", "NothingToReportError", "build_report", "read_config"]

#: the sections in the order of the page ("what was run" comes last, after them)
BUILDERS = (findings.section, comparisons.section, weights.section, accuracy.section, dynamics.section,
            correlation.section, distortion.section, cka.section)


def build_report(
    directory: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike | None = None
) -> Path:
    """Write one self-contained HTML page from whatever results ``directory`` holds.

    Args:
        directory: an experiment folder, the ``--out`` folder of ``ftlens compare``/``cka``/
            ``dynamics``/``finetune``, a folder of several, or a list of experiment folders
            (shown side by side; runs with the same model and data share each figure).
        out: the page (default ``DIRECTORY/report.html``; for several folders, ``report.html``
            in their common parent).

    Raises:
        NothingToReportError: no known result under ``directory`` (the message says what was looked for).
    """
    paths = [directory] if isinstance(directory, (str, os.PathLike)) else list(directory)
    sources = discover(paths)
    label = Labels(sources)
    if out is None:
        base = Path(paths[0]) if len(paths) == 1 else Path(os.path.commonpath([Path(p).resolve() for p in paths]))
        out = base / "report.html"
    sections = []
    for build in (*BUILDERS, environment.section):
        name = build.__module__.rsplit(".", 1)[-1]
        try:
            section = build(sources, label)
        except Exception as exc:  # one broken part must not lose the rest of the page
            section = Section(f"{name} (failed)", f"This section could not be built: {esc(exc)}")
        if section is not None:
            sections.append(section)
    titles = [s.config.get("title") for s in sources if s.config.get("title")]
    title = titles[0] if len(sources) == 1 and titles else f"ftlens report: {', '.join(s.name for s in sources)}"
    lead = ("What finetuning changed inside the model, layer by layer: invariances learned, forgotten and moved "
            "(STIR), representation divergence (CKA), dynamics, robustness and feature distortion. "
            + " ".join(environment.summary(s) for s in sources))
    return html.write(out, title, lead, sections)
