"""The error contract: every exception and warning class of ftlens lives in ftlens.errors, and the
user-input ones derive from FtlensError (so the CLI reports them in one line, exit 2)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import ftlens
from ftlens import errors

SRC = Path(ftlens.__file__).parent


def test_every_error_class_is_in_errors_module():
    outside = []
    for path in SRC.rglob("*.py"):
        if path.name == "errors.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and \
                    node.name.endswith(("Error", "Warning", "Exception")):
                outside.append(f"{path.relative_to(SRC)}: {node.name}")
    assert not outside, outside


def test_errors_derive_from_ftlens_error():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    for c in classes:
        assert issubclass(c, (errors.FtlensError, UserWarning)), c
