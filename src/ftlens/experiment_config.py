"""The configuration of an experiment (:class:`ExperimentConfig`, :class:`AnalysisConfig`) and
the one check of a whole config before any work starts (:func:`check_experiment`), beside the
fields it checks. :mod:`ftlens.experiment` runs a config; this module only describes one.

A config (YAML) names a model, an optional pretraining run, a downstream dataset, a list of
finetuning runs (each a strategy/task with overrides of ``defaults``) and the analysis settings.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import yaml

from ftlens.checks import integer, inversion_options, plain_name, read_yaml
from ftlens.errors import ConfigError
from ftlens.finetune.config import FinetuneConfig
from ftlens.layout import ROLES, resolve_roles
from ftlens.settings import PAPER
from ftlens.weights import TEXT_WEIGHTS, WEIGHTS

__all__ = ["AnalysisConfig", "ExperimentConfig", "builtin_config", "check_experiment", "quick"]


@dataclass
class AnalysisConfig:
    """What to measure and how precisely."""

    images: int = PAPER.images  # images per seed
    seeds: int = PAPER.seeds
    steps: int = PAPER.steps  # inversion steps
    step_size: float = PAPER.step_size
    layers: list[str] | None = None  # default: every block
    debiased: bool = PAPER.debiased  # CKA estimator; the paper uses the biased one
    residual_threshold: float = PAPER.residual_threshold  # the convergence gate of every layer
    bootstrap: int = PAPER.bootstrap  # image resamples per seed for the intervals
    compare: list[str] | None = None  # run names (default: every run except lp / wise-ft)
    dynamics: list[str] = field(default_factory=list)
    dynamics_epochs: list[int] | None = None
    distortion: list[str] = field(default_factory=list)
    distortion_images: int = 256
    batch_size: int | None = None


@dataclass
class ExperimentConfig:
    """One experiment (see the module docstring)."""

    name: str
    model: str
    data: str
    runs: list[dict[str, Any]]
    title: str = ""
    pretrained: bool = False  # load hub weights for `model` (timm)
    image_size: int | list[int] | None = None  # input resolution of every run (None: the model's own)
    pretrain: dict[str, Any] | None = None  # a pretraining run (finetune kwargs) from random init
    defaults: dict[str, Any] = field(default_factory=dict)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    data_dir: str | None = None
    device: str = "cpu"
    roles: dict[str, str] = field(default_factory=dict)  # role -> run name (ftlens.layout.ROLES)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        """Build from a mapping, checked whole first (:func:`check_experiment`)."""

        d = copy.deepcopy(check_experiment(d))
        analysis = d.pop("analysis", {}) or {}
        names = [r["name"] for r in d["runs"]]
        roles = d.get("roles") or {}
        bad_roles = sorted(set(roles) - set(ROLES))
        if bad_roles:
            raise ConfigError(f"unknown run roles {bad_roles}; roles: {sorted(ROLES)}")
        missing = sorted(str(v) for v in roles.values() if v not in names)
        if missing:
            raise ConfigError(f"roles name runs {missing} that are not in runs ({names}); fix roles: in the config")
        return cls(analysis=AnalysisConfig(**analysis), **d)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ExperimentConfig:
        return cls.from_dict(read_yaml(path, "experiment config"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved_roles(self) -> dict[str, str | None]:
        """``{role: run name or None}``: the config's ``roles`` completed by strategy and task."""
        return resolve_roles(self)


def builtin_config(name: str) -> ExperimentConfig:
    """A config shipped inside the package (``demo``, ``demo-quick``)."""
    text = resources.files("ftlens.configs").joinpath(f"{name}.yaml").read_text()
    return ExperimentConfig.from_dict(yaml.safe_load(text))


def quick(config: ExperimentConfig) -> ExperimentConfig:
    """A tiny variant of any config (seconds, for tests): few epochs, images and steps. The model
    becomes ``ftlens:vit-micro``, except real pretrained weights (``ftlens:efficientnet-lite0-in1k``,
    ``ftlens:minilm-l6``), which are the point of their config and small enough."""

    c = copy.deepcopy(config)
    if c.model.removeprefix("ftlens:") not in {**WEIGHTS, **TEXT_WEIGHTS}:
        c.model = "ftlens:vit-micro"
        c.analysis.layers = None  # the config's layers are those of its own model: every block of the micro ViT
    if c.pretrain:
        c.pretrain.update(epochs=1, train_size=256, test_size=128)
    c.defaults.update(epochs=2, train_size=256, test_size=128, corruption_size=128)
    c.defaults["corruptions"] = (c.defaults.get("corruptions") or ["gaussian_noise"])[:2]
    c.defaults["severities"] = [1, 5]
    for r in c.runs:
        if r.get("hp_epochs", 0) > 1:
            r["hp_epochs"] = 1
        r.pop("epochs", None)
    a = c.analysis
    a.images, a.seeds, a.steps, a.distortion_images = 32, 2, 8, 32
    a.dynamics_epochs = None  # the config's epochs are those of its own length: every epoch of the quick runs
    return c



# --------------------------------------------------------------------------- the check


def _fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _keys(where: str, d: Any, known: tuple[str, ...]) -> dict:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(d).__name__} {d!r:.60}")
    unknown = sorted(str(k) for k in d if k not in known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown {where} keys {unknown}{hint}; known: {', '.join(known)}")
    return d


def _string(where: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a non-empty string, got {value!r}")


def _bool(where: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")


def _names(where: str, value: Any, runs: list[str], optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of run names, got {value!r}")
    missing = [v for v in value if v not in runs]
    if missing:
        raise ConfigError(f"{where} names run(s) {', '.join(missing)} that the config does not define; runs: "
                          f"{', '.join(runs)}")


def check_experiment(d: Any) -> dict[str, Any]:
    """Check a whole experiment config (a mapping read from YAML) before any work starts: keys,
    types, ranges, run names, and every run's finetuning options. Returns ``d``; ConfigError
    names the first problem and where it is."""
    d = _keys("experiment config", d, _fields(ExperimentConfig))
    for key in ("name", "model", "data", "runs"):
        if key not in d:
            raise ConfigError(f"the experiment config needs {key!r}")
    plain_name("experiment name", d["name"])
    _string("model", d["model"])
    _string("data", d["data"])
    if d.get("title") is not None and not isinstance(d["title"], str):
        raise ConfigError(f"title must be a string, got {d['title']!r}")
    for key in ("data_dir",):
        _string(key, d.get(key), optional=True)
    if "device" in d:
        _string("device", d["device"])
    if "pretrained" in d:
        _bool("pretrained", d["pretrained"])
    if d.get("roles") is not None and not isinstance(d["roles"], dict):
        raise ConfigError(f"roles must be a mapping of role to run name, got {d['roles']!r:.60}")
    runs = d["runs"]
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"runs must be a list of runs (each a mapping with a name and a strategy), got {runs!r:.60}")
    names: list[str] = []
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or "name" not in run:
            raise ConfigError(f"runs[{i}] must be a mapping with a name (e.g. {{name: ft, strategy: ft}}), got {run!r:.60}")
        name = plain_name(f"run name (runs[{i}])", run["name"])
        if name in names or (name == "pretrain" and d.get("pretrain")):
            raise ConfigError(f"every run needs a unique name: {name!r} is used twice (runs/{name} would be shared)")
        names.append(name)
    defaults = d.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"defaults must be a mapping of finetuning options, got {defaults!r:.60}")
    base = {"model": d["model"], "data": d["data"], "out": "unused"}
    if d.get("image_size") is not None:
        base["image_size"] = d["image_size"]
    checks = [(f"run {r['name']!r}", {**base, **defaults, **{k: v for k, v in r.items() if k != "name"}}) for r in runs]
    if d.get("pretrain") is not None:
        if not isinstance(d["pretrain"], dict):
            raise ConfigError(f"pretrain must be a mapping of finetuning options, got {d['pretrain']!r:.60}")
        checks.insert(0, ("pretrain", {**base, "strategy": "scratch", **d["pretrain"]}))
    for where, options in checks:
        if options.get("strategy") == "wise-ft":
            options.setdefault("wise_to", "unused@last")
        try:
            FinetuneConfig.from_dict(options)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    a = _keys("analysis", d.get("analysis") or {}, _fields(AnalysisConfig))
    for key in ("images", "seeds", "distortion_images"):
        if key in a:
            integer(f"analysis.{key}", a[key], minimum=1)
    if "batch_size" in a and a["batch_size"] is not None:
        integer("analysis.batch_size", a["batch_size"], minimum=1)
    if "steps" in a or "step_size" in a:
        try:
            inversion_options(a.get("steps", PAPER.steps), a.get("step_size", PAPER.step_size), PAPER.start)
        except ConfigError as exc:
            raise ConfigError(f"analysis.{exc}") from None
    if "debiased" in a:
        _bool("analysis.debiased", a["debiased"])
    layers = a.get("layers")
    if layers is not None and (not isinstance(layers, list) or not all(isinstance(x, str) and x for x in layers)):
        raise ConfigError(f"analysis.layers must be a list of layer names or globs, got {layers!r}")
    for key in ("compare", "dynamics", "distortion"):
        _names(f"analysis.{key}", a.get(key), names)
    epochs = a.get("dynamics_epochs")
    if epochs is not None:
        if not isinstance(epochs, list):
            raise ConfigError(f"analysis.dynamics_epochs must be a list of epochs, got {epochs!r}")
        for e in epochs:
            integer("analysis.dynamics_epochs", e, minimum=0)
    return d
