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


def test_user_input_errors_of_the_api_are_ftlens_errors_and_keep_their_old_base(pt, make_pool, tmp_path):
    """Arguments a user passes to the API: one FtlensError each (the CLI would print one line),
    still catchable as the ValueError / TypeError / FileNotFoundError they were before."""
    import pytest
    import torch

    from ftlens.analysis.dynamics import corrupted_accuracy, dynamics
    from ftlens.invariance import compare, load_comparison, plan_inversions
    from ftlens.inversion import Runtime, invert, schedule_fields
    from ftlens.similarity import MinibatchCKA, cka_matrix, linear_cka
    from ftlens.store import resolve_cache

    x = make_pool(4, 0)
    cases = [
        (lambda: schedule_fields("bogus"), ValueError, "schedule must be one of"),
        (lambda: schedule_fields({"decay": 0.5, "bogus": 1}), ValueError, "unknown schedule field"),
        (lambda: compare(pt, pt, x, layers=["blocks.0"], schedule="sideways", progress=False), ValueError, "schedule"),
        (lambda: resolve_cache(42), TypeError, "cache must be"),
        (lambda: plan_inversions({}, x), ValueError, "at least one reference"),
        (lambda: invert(pt, ["blocks.0", "blocks.1"], x), TypeError, "one layer name"),
        (lambda: invert(pt, "blocks.[01]", x), ValueError, "invert one layer at a time"),
        (lambda: Runtime(memory_fraction=0.0), ValueError, "memory_fraction"),
        (lambda: Runtime(max_batch_size=0), ValueError, "max_batch_size"),
        (lambda: load_comparison(tmp_path), FileNotFoundError, "comparison.json"),
        (lambda: dynamics(tmp_path, pt, x), FileNotFoundError, "no checkpoints"),
        (lambda: corrupted_accuracy(__import__("pandas").DataFrame({"epoch": [0]})), ValueError, "--corruptions"),
        (lambda: linear_cka(x.flatten(1).to(torch.complex64), x.flatten(1)), TypeError, "complex"),
        (lambda: cka_matrix([x], {"a": x}), TypeError, "must be a dict"),
        (lambda: MinibatchCKA().compute(), RuntimeError, "before any update"),
    ]
    for call, old_base, words in cases:
        with pytest.raises(errors.FtlensError, match=words) as info:
            call()
        assert isinstance(info.value, old_base), (words, type(info.value))
        assert "\n" not in str(info.value)
