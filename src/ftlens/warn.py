"""ftlens's warnings: attributed to the caller's own code, and one line each on the command line.

:func:`warn` issues a warning at the first frame outside the ftlens package, so that Python shows
the line of the user's code that led to it (never a line of ftlens's own source, which reads like
a crash in a log). :func:`one_line` is the format the command line installs: ``Category: message``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from types import FrameType

__all__ = ["one_line", "use_one_line_format", "warn"]

_PACKAGE = str(Path(__file__).resolve().parent)


def _outside(filename: str) -> bool:
    try:
        return not str(Path(filename).resolve()).startswith(_PACKAGE)
    except OSError:  # a frame of generated code ("<string>")
        return True


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` at the first calling frame that is not ftlens's own code."""
    level = 1
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and not _outside(frame.f_code.co_filename):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level + 1)


def one_line(message, category, filename, lineno, line=None) -> str:  # noqa: ARG001 - warnings' signature
    """``Category: message`` and a newline: no file, no line number, no source line."""
    return f"{category.__name__}: {message}\n"


def use_one_line_format() -> None:
    """Print every warning as :func:`one_line` (the command line does; a library leaves the
    user's own format alone)."""
    warnings.formatwarning = one_line
