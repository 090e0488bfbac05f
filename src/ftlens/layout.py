"""Where every result lives on disk: one layout that every command writes and ``ftlens report`` reads.

Each command writes a *result folder*, recognised by its marker file:

=========================  ===============================  ==========================================
written by                 marker                           also in the folder
=========================  ===============================  ==========================================
``ftlens compare``         ``comparison.json``              per_layer.csv, flow.csv, stir.csv, *.png
``ftlens cka``             ``cka.json``                     cka.csv, cka.png
``ftlens weights``         ``weights.json``                 weights.csv, weight_tensors.csv,
                                                            weight_spectrum.csv, weights.png
``ftlens dynamics``        ``dynamics.csv``                 dynamics.json, correlation.csv (when the
                                                            run logged corrupted accuracy)
``ftlens finetune``        ``metrics.csv``                  config.yaml, checkpoints/, state.json
``ftlens run``/``demo``    ``config.yaml`` + ``runs/``      the experiment layout below
=========================  ===============================  ==========================================

An experiment (:class:`ExperimentLayout`) nests the same result folders::
    OUT/config.yaml              the resolved experiment configuration
    OUT/runs/<run>/              finetuning runs (a finetune folder each)
    OUT/compare/<run>/           a compare folder: the run's last epoch vs the pretrained model
    OUT/compare/<run>/weights/   a weights folder: the same two models' weight-space diff
    OUT/dynamics/<run>/          a dynamics folder of selected runs
    OUT/correlation/<run>.csv    the hypothesis grid against corrupted accuracy
    OUT/distortion.csv           feature distortion per run, split, layer and measure, with intervals
    OUT/distortion_examples.npz  its per-image values and which clean image each row was made from
    OUT/findings.json            the papers' findings, decided from the numbers
    OUT/timings.json             wall time of each stage
    OUT/report.html              the page

``ftlens report PATH`` accepts any of these folders, or a folder holding several of them
(found up to :data:`MAX_DEPTH` levels down), or several experiment folders side by side.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ftlens.errors import ConfigError

#: marker file of each kind of result folder (see the module docstring)
MARKERS: dict[str, str] = {
    "compare": "comparison.json",
    "cka": "cka.json",
    "weights": "weights.json",
    "dynamics": "dynamics.csv",
    "run": "metrics.csv",
}
#: how deep ``ftlens report`` looks for result folders below the folder it is given
MAX_DEPTH = 4

#: run roles a finding can need, and how a run is recognised when the config does not name it
ROLES: dict[str, str] = {
    "pretrained_start": "classification FT from the pretrained weights (strategy ft, task classification)",
    "scratch_control": "the same architecture trained from random weights (strategy scratch)",
    "reconstruction_task": "FT from the pretrained weights for reconstruction (task reconstruction)",
    "lp_ft": "linear probing then finetuning (strategy lp-ft)",
    "lp_ft_control": "the FT run that LP-FT is compared with, at LP-FT's settings (default: pretrained_start)",
}
#: the run names an experiment without a config is read with (the demo's names)
DEFAULT_ROLE_NAMES: dict[str, str] = {
    "pretrained_start": "ft",
    "scratch_control": "scratch",
    "reconstruction_task": "reconstruction",
    "lp_ft": "lp-ft",
    "lp_ft_control": "ft",
}


@dataclass(frozen=True)
class ExperimentLayout:
    """The paths of one experiment folder (see the module docstring); nothing is created."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    # files
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    @property
    def distortion(self) -> Path:
        return self.root / "distortion.csv"

    @property
    def distortion_examples(self) -> Path:
        return self.root / "distortion_examples.npz"

    @property
    def findings(self) -> Path:
        return self.root / "findings.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    # folders per run
    def run(self, name: str) -> Path:
        return self.root / "runs" / name

    def compare(self, name: str) -> Path:
        return self.root / "compare" / name

    def dynamics(self, name: str) -> Path:
        return self.root / "dynamics" / name

    def weights(self, name: str) -> Path:
        return self.compare(name) / "weights"

    def correlation(self, name: str) -> Path:
        return self.root / "correlation" / f"{name}.csv"

    # what is there
    def run_names(self) -> list[str]:
        return _names(self.root / "runs", MARKERS["run"])

    def compare_names(self) -> list[str]:
        return _names(self.root / "compare", MARKERS["compare"])

    def dynamics_names(self) -> list[str]:
        return _names(self.root / "dynamics", MARKERS["dynamics"])

    def correlation_names(self) -> list[str]:
        d = self.root / "correlation"
        return sorted(p.stem for p in d.glob("*.csv")) if d.is_dir() else []

    def read_config(self) -> dict[str, Any]:
        """The experiment's ``config.yaml`` as a mapping (empty when absent; ConfigError when unreadable)."""
        return read_yaml_config(self.config)

    def is_experiment(self) -> bool:
        """True when the folder looks like an experiment (a config with runs, or its result folders)."""
        cfg = self.read_config()
        if "runs" in cfg and "model" in cfg:
            return True
        return bool(self.compare_names() or self.dynamics_names() or self.run_names())


def read_yaml_config(path: Path) -> dict[str, Any]:
    """A config.yaml as a dict ({} when absent); ConfigError when it is not a readable mapping."""

    if not path.exists():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML ({' '.join(str(exc).split())}); restore it (it is the "
                          "experiment's configuration) or remove it to build the report without it") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} holds a {type(cfg).__name__}, not a mapping of options; restore it or remove it")
    return cfg


def _names(folder: Path, marker: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if (p / marker).exists()) if folder.is_dir() else []


def is_experiment_dir(path: str | os.PathLike) -> bool:
    """An experiment folder: its ``config.yaml`` names a model and runs (``ftlens run``/``demo``)."""
    cfg = ExperimentLayout(path).read_config()
    return "runs" in cfg and "model" in cfg


def result_kind(path: str | os.PathLike) -> str | None:
    """``"experiment"``, ``"compare"``, ``"cka"``, ``"weights"``, ``"dynamics"``, ``"run"`` or None for other folders."""
    p = Path(path)
    if is_experiment_dir(p):
        return "experiment"
    for kind, marker in MARKERS.items():
        if (p / marker).exists():
            return kind
    if (p / "cka.csv").exists():  # written before cka.json existed
        return "cka"
    return None


def resolve_roles(config: Any = None, runs: Iterable[Mapping[str, Any]] | None = None) -> dict[str, str | None]:
    """``{role: run name}`` (see :data:`ROLES`) from an experiment config.

    A config's ``roles:`` mapping names them explicitly; every role it leaves out is the first
    run whose strategy/task match the role. Without a config the demo's names are used.
    """
    if config is None:
        return dict(DEFAULT_ROLE_NAMES)
    if not isinstance(config, Mapping):
        config = {"roles": getattr(config, "roles", None) or {}, "runs": getattr(config, "runs", []),
                  "defaults": getattr(config, "defaults", {})}
    explicit = dict(config.get("roles") or {})
    unknown = sorted(set(explicit) - set(ROLES))
    if unknown:
        raise ConfigError(f"unknown run role(s) {unknown} in the experiment config; roles: {', '.join(ROLES)}")
    defaults = dict(config.get("defaults") or {})
    run_list = list(runs if runs is not None else config.get("runs") or [])

    def first(strategy: str | None, task: str | None) -> str | None:
        for run in run_list:
            merged = {**defaults, **run}
            if strategy is not None and merged.get("strategy", "ft") != strategy:
                continue
            if task is not None and merged.get("task", "classification") != task:
                continue
            return str(run["name"])
        return None

    found = {
        "pretrained_start": first("ft", "classification"),
        "scratch_control": first("scratch", None),
        "reconstruction_task": first(None, "reconstruction"),
        "lp_ft": first("lp-ft", None),
    }
    found["lp_ft_control"] = found["pretrained_start"]
    roles = {role: explicit.get(role, found[role]) for role in ROLES}
    if "lp_ft_control" not in explicit:
        roles["lp_ft_control"] = roles["pretrained_start"]
    return roles
