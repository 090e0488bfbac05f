"""Checks of user input made before any work starts: one-line :class:`~ftlens.errors.ConfigError`
or :class:`~ftlens.errors.OutputError` messages that name the option, the value and the fix.

Used by the API (settings objects, configs), the experiment config and every CLI command, so the
same value is refused the same way everywhere. A leaf: it imports nothing from ftlens but the
errors; a whole configuration is checked beside its own fields
(:func:`ftlens.experiment_config.check_experiment`, :class:`ftlens.finetune.config.FinetuneConfig`).
"""

from __future__ import annotations

import errno
import importlib
import math
import numbers
import os
import re
from pathlib import Path
from typing import Any

import yaml

from ftlens.errors import ConfigError, OutputError

#: Largest inversion step size accepted: the L2 diameter of a 3x512x512 image in [0, 1] is ~887;
#: a step longer than that leaves the image cube in one step and means nothing.
MAX_STEP_SIZE = 1000.0
#: Inversion starts (see ftlens.inversion).
STARTS = ("noise", "mixed", "uniform")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
#: Old import paths: names that moved to a module above this one (looked up when asked for).
_MOVED = {"check_experiment": "ftlens.experiment_config"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'ftlens.checks' has no attribute {name!r}")


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
    }.get(exc.errno, "") if exc.errno is not None else ""
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
