"""Checks of user input made before any work starts: one-line :class:`~ftlens.errors.ConfigError`
or :class:`~ftlens.errors.OutputError` messages that name the option, the value and the fix.

Used by the API (settings objects, configs), the experiment config and every CLI command, so the
same value is refused the same way everywhere.
"""

from __future__ import annotations

import difflib
import errno
import math
import numbers
import os
import re
from pathlib import Path
from typing import Any

import yaml

from ftlens.errors import ConfigError, OutputError
from ftlens.settings import PAPER

#: Largest inversion step size accepted: the L2 diameter of a 3x512x512 image in [0, 1] is ~887;
#: a step longer than that leaves the image cube in one step and means nothing.
MAX_STEP_SIZE = 1000.0
#: Inversion starts (see ftlens.inversion).
STARTS = ("noise", "mixed", "uniform")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def integer(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]`` (bool and non-integral floats refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


def number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{name} must be {'greater than' if low_open else 'at least'} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be at most {high:g}, got {value:g}")
    return value


def choice(name: str, value: Any, options: tuple[str, ...] | list[str]) -> str:
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}; got {value!r}")
    return value


def inversion_options(steps: Any, step_size: Any, start: Any) -> tuple[int, float, str]:
    """Checked ``(steps, step_size, start)`` of an inversion."""
    steps = integer("steps", steps, minimum=0, maximum=1_000_000)
    step_size = number("step_size", step_size, low=0.0, high=MAX_STEP_SIZE, low_open=True)
    return steps, step_size, choice("start", start, STARTS)


def plain_name(what: str, value: Any) -> str:
    """A name that is safe as a single folder name: letters, digits, ``_ . + -``, starting with a
    letter or digit (no ``/``, no ``..``, no spaces)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise ConfigError(
            f"{what} {value!r} is not a plain name: use letters, digits, '_', '.', '+' and '-' (starting "
            "with a letter or digit, at most 100 characters)"
        )
    return value


def check_writable_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """OutputError unless ``path`` is a folder, or can be created as one, that this process can write.

    Nothing is created: the nearest existing ancestor must be a writable folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder; choose a folder (new or existing)")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{what} {path} lies under {probe}, which is a file; choose a folder elsewhere")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == path else f" ({probe} is where it would be created)"
        raise OutputError(f"{what} {path} cannot be written{where}: read-only or no permission; choose a "
                          "folder you can write")
    return path


def os_error_message(exc: OSError) -> str:
    """One line for an OSError met while writing results (disk full, read-only, permissions)."""

    where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
    advice = {
        errno.ENOSPC: "the disk is full: free some space (or choose another --out / --cache-dir) and run the "
                      "same command again; finished work is kept",
        errno.EROFS: "the file system is read-only: choose a writable --out / --cache-dir",
        errno.EACCES: "permission denied: choose a folder you can write",
        errno.EPERM: "permission denied: choose a folder you can write",
        errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
        errno.EDQUOT: "the disk quota is exceeded: free some space and run the same command again",
    }.get(exc.errno, "")
    text = exc.strerror or str(exc)
    return f"cannot write{where}: {text}" + (f"; {advice}" if advice else "")


# --------------------------------------------------------------------------- files and configs


def read_yaml(path: str | os.PathLike, what: str = "config") -> Any:
    """The YAML document in ``path``; ConfigError (one line) when it is missing or not valid YAML."""

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} file {path} is not valid YAML ({' '.join(str(exc).split())})") from None


def _fields(cls_name: str) -> tuple[str, ...]:
    from ftlens import experiment

    return tuple(getattr(experiment, cls_name).__dataclass_fields__)


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
    d = _keys("experiment config", d, _fields("ExperimentConfig"))
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
    # imported here, not at the top: ftlens.finetune imports this module (a cycle)
    from ftlens.finetune.config import FinetuneConfig

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
    a = _keys("analysis", d.get("analysis") or {}, _fields("AnalysisConfig"))
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


def cli_options(*, out: str | os.PathLike | None = None, images: Any = None, seeds: Any = None, steps: Any = None,
                step_size: Any = None, start: Any = None, batch_size: Any = None) -> None:
    """Check a command's options before it loads or computes anything (names as on the command line)."""
    if images is not None:
        integer("--images", images, minimum=1)
    if seeds is not None:
        integer("--seeds", seeds, minimum=1)
    if steps is not None:
        integer("--steps", steps, minimum=0, maximum=1_000_000)
    if step_size is not None:
        number("--step-size", step_size, low=0.0, high=MAX_STEP_SIZE, low_open=True)
    if start is not None:
        choice("--start", start, STARTS)
    if batch_size is not None:
        integer("--batch-size", batch_size, minimum=1)
    if out is not None:
        check_writable_dir(out, "--out")
