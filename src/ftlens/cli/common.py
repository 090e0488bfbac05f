"""Shared bits of the command line: the console, error handling, list parsing."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from ftlens.errors import FtlensError
from ftlens.settings import PAPER


def make_console(stderr: bool = False) -> Console:
    """A rich console; when the stream is not a terminal (logs, pipes) it is wide enough that
    tables are never cut or wrapped at 80 columns."""
    c = Console(stderr=stderr)
    if not c.is_terminal:
        c = Console(stderr=stderr, width=max(c.width, 1000))
    return c


console = make_console()
err_console = make_console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


#: OSErrors that are the user's environment, not a bug: reported in one line like an FtlensError.
_USER_OS_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EDQUOT,
                             errno.EISDIR, errno.ENAMETOOLONG})


def error_line(exc: BaseException) -> str:
    """The one line the CLI prints for a user error (no markup, no line breaks)."""
    if isinstance(exc, OSError) and not isinstance(exc, FtlensError):
        from ftlens.checks import os_error_message

        text = os_error_message(exc)
    else:
        text = str(exc)
    return "error: " + " ".join(text.split())


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, FtlensError) or (isinstance(exc, OSError) and exc.errno in _USER_OS_ERRNOS)


def fail_on_ftlens_error(func: F) -> F:
    """Turn an :class:`FtlensError` (or a full disk, a read-only folder...) into one line on stderr
    and exit code 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if not is_user_error(exc):
                raise
            typer.secho(error_line(exc), fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def parse_list(text: str | None, cast: Callable[[str], Any] = str) -> list[Any] | None:
    """``"a,b, c"`` -> ``["a", "b", "c"]``; ``None``/empty -> ``None``."""
    if text is None or not str(text).strip():
        return None
    return [cast(t.strip()) for t in str(text).split(",") if t.strip()]


def image_size_kwargs(text: str | None) -> dict[str, Any]:
    """``--image-size 224`` / ``224,160`` -> ``{"image_size": [H, W]}`` for load_model; None -> {}."""
    if text is None:
        return {}
    from ftlens.finetune.config import parse_image_size

    return {"image_size": parse_image_size(text)}


# --------------------------------------------------------------------------- shared options
# One definition per concept, used by every command that has it (same name, type, default, help).

PAPER_IMAGES = PAPER.images  # images per seed in the paper

DEVICE_HELP = "Where to compute: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:1 ..."
LAYERS_HELP = ("Layers or globs, repeatable and/or comma-separated (--layers blocks.0 --layers 'blocks.1*'); "
               "default: every block. `ftlens layers MODEL` lists them.")
IMAGES_HELP = (f"Images per seed (the paper: {PAPER_IMAGES}); default {PAPER_IMAGES}, or the whole test split "
               "when it is smaller.")
SEEDS_HELP = "Seeds: each draws its own image sample and inversion start (the paper: 3)."
STEPS_HELP = "The most inversion steps an image takes (default 150; the paper: 50 fixed steps)."
STEP_SIZE_HELP = "L2 length of each normalised inversion step, --schedule fixed or adaptive (the paper: 0.5)."
BATCH_HELP = "Images per batch (default: 256 on the CPU, from free memory on CUDA)."
CACHE_DIR_HELP = "Inversion cache (default $FTLENS_CACHE_DIR or ~/.cache/ftlens)."
NO_CACHE_HELP = "Neither read nor write the inversion cache."
DATA_HELP = ("Dataset for the images (`ftlens datasets` lists them); default: the finetuning run's dataset "
             "when a model is a run, else digits (embedded, offline).")
DATA_DIR_HELP = "Where datasets live or are downloaded to (default $FTLENS_DATA_DIR)."
DEBIASED_HELP = "Debiased CKA (unbiased HSIC) instead of the biased default."


IMAGE_SIZE_HELP = "Input resolution H or H,W (default: the model's own, or its checkpoint's)."


def image_size_option() -> Any:
    return typer.Option(None, "--image-size", help=IMAGE_SIZE_HELP)


TOKENS_HELP = "Token / feature-map handling: all (flattened, the paper's), cls or mean."


def tokens_option() -> Any:
    return typer.Option("all", "--tokens", help=TOKENS_HELP)


def device_option() -> Any:
    return typer.Option("auto", "--device", help=DEVICE_HELP)


def layers_option() -> Any:
    return typer.Option(None, "--layers", help=LAYERS_HELP)


def images_option() -> Any:
    return typer.Option(None, "--images", help=IMAGES_HELP)


def seeds_option() -> Any:
    return typer.Option(PAPER.seeds, "--seeds", help=SEEDS_HELP)


def steps_option() -> Any:
    return typer.Option(PAPER.steps, "--steps", help=STEPS_HELP)


def schedule_option() -> Any:
    return typer.Option(PAPER.schedule, "--schedule", help="Inversion schedule: adam (the default: Adam on the "
                        "pixels; an image stops at a fifth of the residual threshold or when it stops improving; "
                        "--steps is the cap), adaptive (normalised steps of per-image length) or fixed (the paper: "
                        "every image every step of length --step-size; the paper's text: --steps 50).")


def step_size_option() -> Any:
    return typer.Option(PAPER.step_size, "--step-size", help=STEP_SIZE_HELP)


def batch_size_option() -> Any:
    return typer.Option(None, "--batch-size", help=BATCH_HELP)


def cache_dir_option() -> Any:
    return typer.Option(None, "--cache-dir", help=CACHE_DIR_HELP)


def no_cache_option() -> Any:
    return typer.Option(False, "--no-cache", help=NO_CACHE_HELP)


def data_option() -> Any:
    return typer.Option(None, "--data", help=DATA_HELP)


def data_dir_option() -> Any:
    return typer.Option(None, "--data-dir", help=DATA_DIR_HELP)


def debiased_option() -> Any:
    return typer.Option(PAPER.debiased, "--debiased", help=DEBIASED_HELP)


def layer_list(values: list[str] | None) -> list[str] | None:
    """``--layers a,b --layers c`` -> ``[a, b, c]`` (None when not given)."""
    out: list[str] = []
    for v in values or []:
        out.extend(parse_list(v) or [])
    return out or None


def resolve_device(device: str | None) -> str:
    """``auto`` -> ``cuda`` when a GPU is there, else ``cpu``; anything else is checked."""
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    from ftlens.finetune.loop import check_device

    check_device(device)
    return device


def default_data(*specs: str) -> str:
    """The dataset of the first spec that is a finetuning run (``RUN_DIR@EPOCH``), else ``digits``."""
    from pathlib import Path

    import yaml

    for spec in specs:
        run = str(spec).rsplit("@", 1)[0] if "@" in str(spec) else None
        path = Path(run) / "config.yaml" if run else None
        if path is not None and path.exists():
            data = (yaml.safe_load(path.read_text()) or {}).get("data")
            if data:
                return str(data)
    return "digits"


def data_for(model: Any, data: str | None, *specs: str) -> str:
    """The dataset a command reads: ``data``, else :func:`default_data` (a text model without a
    run: ``fortunes-topics``); a ConfigError when a text model is given images or the other way round."""
    from ftlens.data import is_text_dataset
    from ftlens.errors import ConfigError

    text_model = hasattr(model, "max_length") and hasattr(model, "tokenize")
    if data is None:
        data = default_data(*specs)
        if text_model and not is_text_dataset(data):
            data = "fortunes-topics"
    if text_model and not is_text_dataset(data):
        raise ConfigError(f"{model.name} is a text model but --data {data} holds images; name a text dataset "
                          "(fortunes-topics, fortunes:TOPIC,..., csv:PATH, textfolder:PATH, hf-text:NAME)")
    if not text_model and is_text_dataset(data):
        raise ConfigError(f"--data {data} holds texts but {model.name} reads images; give an image dataset")
    return data


def images_for(requested: int | None, available: int, data: str) -> int:
    """Images per seed: ``requested``, or the paper's 500 capped by the split's size (a default never fails)."""
    from ftlens.errors import ConfigError

    if requested is None:
        return min(PAPER_IMAGES, available)
    if requested > available:
        raise ConfigError(f"dataset {data!r} (test split) has only {available} images; use --images {available} "
                           "or fewer (or leave --images out)")
    return requested
