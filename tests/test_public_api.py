"""The public API is fully annotated (what ``make typecheck`` checks callers against), and its
names resolve from their documented paths."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

#: the modules whose ``__all__`` is the public API
PUBLIC = (
    "ftlens",
    "ftlens.models",
    "ftlens.similarity",
    "ftlens.inversion",
    "ftlens.invariance",
    "ftlens.finetune",
    "ftlens.analysis",
    "ftlens.data",
    "ftlens.plot",
    "ftlens.process_group",
    "ftlens.experiment_config",
)


def _unannotated(qualname: str, fn: Any) -> list[str]:
    """``qualname(param)`` for each parameter without an annotation, ``qualname -> ?`` without a return."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins
        return []
    annotations = getattr(fn, "__annotations__", {})
    out = [f"{qualname}({p.name})" for p in params if p.name not in ("self", "cls") and p.name not in annotations]
    if "return" not in annotations:
        out.append(f"{qualname} -> ?")
    return out


def _public_callables(module_name: str) -> list[tuple[str, Any]]:
    module = importlib.import_module(module_name)
    out = []
    for name in module.__all__:
        obj = getattr(module, name)
        qual = f"{module_name}.{name}"
        if inspect.isfunction(obj):
            out.append((qual, obj))
        elif inspect.isclass(obj) and obj.__module__.startswith("ftlens"):
            protocol = getattr(obj, "_is_protocol", False)
            for attr, value in vars(obj).items():
                if attr.startswith("_") and not (attr == "__init__" and not protocol):
                    continue
                if isinstance(value, staticmethod | classmethod):
                    value = value.__func__
                elif isinstance(value, property):
                    value = value.fget
                if inspect.isfunction(value):
                    out.append((f"{qual}.{attr}", value))
    return out


@pytest.mark.parametrize("module_name", PUBLIC)
def test_the_public_api_is_annotated(module_name):
    missing = [m for qual, fn in _public_callables(module_name) for m in _unannotated(qual, fn)]
    assert not missing, "public functions and methods without annotations:\n  " + "\n  ".join(missing)


def test_the_check_sees_a_missing_annotation():
    def typed(a: int, *, b: str = "") -> float:
        return 0.0

    def untyped(a, b: int = 0):
        return a

    assert _unannotated("typed", typed) == []
    assert _unannotated("untyped", untyped) == ["untyped(a)", "untyped -> ?"]


def test_old_module_paths_still_import_their_names():
    """Modules whose code moved keep every name importable from where it was."""
    from ftlens import clip, distributed, experiment
    from ftlens.finetune import strategies
    from ftlens.invariance import parallel
    from ftlens.models.families.clip import towers, zero_shot

    assert clip.zero_shot_head is zero_shot.zero_shot_head and clip.ClipImageClassifier is towers.ClipImageClassifier
    assert clip.check_image_text is zero_shot.check_image_text and clip.load_tokenizer is towers.load_tokenizer
    assert distributed.executor is parallel.executor and distributed.LocalProcesses is parallel.LocalProcesses
    assert distributed.context().world_size >= 1 and distributed.launch_local is not None
    assert experiment.ExperimentConfig.__module__ == "ftlens.experiment_config"
    assert experiment.builtin_config("demo").name and experiment.quick is not None
    assert strategies.get_strategy("lp-ft").name == "lp-ft" and "wise-ft" in strategies.STRATEGIES
