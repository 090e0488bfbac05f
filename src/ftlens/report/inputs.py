"""Find what a report can show: experiment folders and the result folders of single commands.

:func:`discover` turns the paths given to ``ftlens report`` into :class:`Source` objects, one
per experiment plus one for loose result folders (``ftlens compare``/``cka``/``dynamics``/
``finetune`` outputs; see :mod:`ftlens.layout`). A report over several experiments shows each
as its own source, side by side.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlens.errors import NothingToReportError  # noqa: F401 (re-exported)
from ftlens.layout import MARKERS, MAX_DEPTH, ExperimentLayout, is_experiment_dir, result_kind


@dataclass
class Source:
    """The results of one experiment, or of loose result folders, by kind and name."""

    name: str
    root: Path
    config: dict[str, Any] = field(default_factory=dict)
    compare: dict[str, Path] = field(default_factory=dict)  # name -> folder with comparison.json
    cka: dict[str, Path] = field(default_factory=dict)  # name -> folder with cka.csv
    weights: dict[str, Path] = field(default_factory=dict)  # name -> folder with weights.json
    dynamics: dict[str, Path] = field(default_factory=dict)  # name -> folder with dynamics.csv
    correlation: dict[str, Path] = field(default_factory=dict)  # name -> correlation CSV
    runs: dict[str, Path] = field(default_factory=dict)  # name -> finetuning run folder
    distortion: Path | None = None
    findings: Path | None = None
    timings: Path | None = None
    experiment: bool = False

    def empty(self) -> bool:
        return not (self.compare or self.cka or self.weights or self.dynamics or self.runs or self.correlation
                    or self.distortion or self.findings)

    def run_of(self, dynamics_name: str) -> Path | None:
        """The finetuning run a dynamics table was computed on (for its accuracy over epochs)."""
        if dynamics_name in self.runs:
            return self.runs[dynamics_name]
        folder = self.dynamics.get(dynamics_name)
        if folder is None:
            return None
        meta = folder / "dynamics.json"
        if meta.exists():
            run = json.loads(meta.read_text()).get("run")
            for candidate in (Path(run) if run else None, (folder / run) if run else None):
                if candidate is not None and (candidate / MARKERS["run"]).exists():
                    return candidate
        if (folder.parent / MARKERS["run"]).exists():  # the default: RUN_DIR/dynamics
            return folder.parent
        return None


def experiment_source(root: Path, name: str | None = None) -> Source:
    """The :class:`Source` of an experiment folder (:class:`~ftlens.layout.ExperimentLayout`)."""
    lay = ExperimentLayout(root)
    src = Source(name or root.name, root, lay.read_config(), experiment=True)
    src.compare = {n: lay.compare(n) for n in lay.compare_names()}
    src.weights = {n: lay.weights(n) for n in lay.compare_names() if (lay.weights(n) / MARKERS["weights"]).exists()}
    src.dynamics = {n: lay.dynamics(n) for n in lay.dynamics_names()}
    src.correlation = {n: lay.correlation(n) for n in lay.correlation_names()}
    src.runs = {n: lay.run(n) for n in lay.run_names()}
    src.distortion = lay.distortion if lay.distortion.exists() else None
    src.findings = lay.findings if lay.findings.exists() else None
    src.timings = lay.timings if lay.timings.exists() else None
    return src


def _add_loose(src: Source, kind: str, folder: Path, name: str) -> None:
    if kind == "compare":
        src.compare[name] = folder
    elif kind == "cka":
        src.cka[name] = folder
    elif kind == "weights":
        src.weights[name] = folder
    elif kind == "run":
        src.runs[name] = folder
    if (folder / MARKERS["dynamics"]).exists():  # a dynamics folder (may also be a run's)
        src.dynamics[name] = folder
        if (folder / "correlation.csv").exists():
            src.correlation[name] = folder / "correlation.csv"


def discover(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Source]:
    """The sources under ``paths`` (each an experiment, a result folder, or a folder of them).

    Raises:
        NothingToReportError: none of the paths holds a result; the message lists what was looked for.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    roots = [Path(p) for p in paths]
    for root in roots:
        if not root.is_dir():
            raise NothingToReportError(f"{root} is not a folder; give the --out folder of an ftlens command")
    experiments: list[Source] = []
    loose = Source(roots[0].name if len(roots) == 1 else "results", roots[0])
    for root in roots:
        queue = [(root, 0)]
        while queue:
            folder, depth = queue.pop(0)
            if is_experiment_dir(folder):
                experiments.append(experiment_source(folder))
                continue
            kind = result_kind(folder) or ("dynamics" if (folder / MARKERS["dynamics"]).exists() else None)
            if kind is not None:
                rel = folder.relative_to(root) if folder != root else Path(folder.name)
                name = str(rel) if len(roots) == 1 else f"{root.name}/{rel}"
                _add_loose(loose, kind, folder, name)
            if depth < MAX_DEPTH:
                queue.extend((sub, depth + 1) for sub in sorted(folder.iterdir())
                             if sub.is_dir() and not sub.name.startswith((".", "__")) and sub.name != "checkpoints")
    sources = experiments + ([] if loose.empty() else [loose])
    names = [s.name for s in sources]
    if len(set(names)) != len(names):  # two experiments with the same folder name
        for k, s in enumerate(sources):
            s.name = f"{s.name} ({k + 1})"
    if not sources:
        looked = ", ".join(f"{v} ({k})" for k, v in MARKERS.items())
        raise NothingToReportError(
            f"nothing to report in {', '.join(str(r) for r in roots)}: looked for an experiment (config.yaml with "
            f"runs, from `ftlens run`/`ftlens demo`) and for result folders up to {MAX_DEPTH} levels down "
            f"marked by {looked}; pass the --out folder of `ftlens compare`, `cka`, `dynamics` or `finetune`")
    return sources
