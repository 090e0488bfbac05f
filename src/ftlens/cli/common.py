"""Shared bits of the command line: the console, error handling, list parsing."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from ftlens.errors import FtlensError


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
