"""``load_model``: a spec, checkpoint, run epoch or module object -> :class:`ModelWrapper`."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftlens.errors import CheckpointError, ImageSizeError, ModelError
from ftlens.models.checkpoint import (
    CHECKPOINT_DIR,
    TASK_HEAD_PREFIX,
    checkpoint_metadata,
    looks_like_run_spec,
    read_state,
    resolve_run_checkpoint,
)
from ftlens.models.families import FAMILIES, family_named, family_of, family_prefix
from ftlens.models.families.base import PRE_LOGITS, Built, Source
from ftlens.models.text_wrapper import TextWrapper
from ftlens.models.wrapper import ModelWrapper, short_name

#: The wrapper of each family's models, by the name :meth:`Family.wrapper_class` gives.
_WRAPPERS: dict[str | None, type[ModelWrapper]] = {None: ModelWrapper, "text": TextWrapper}

def load_model(
    spec: str | os.PathLike | nn.Module,
    *,
    layers: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: Sequence[int] | None = None,
    pretrained: bool = False,
    arch: str | None = None,
    include_norm: bool = False,
    image_size: int | Sequence[int] | None = None,
    tokens: str = "all",
    device: str | torch.device | None = None,
    copy: bool = False,
    **kwargs: Any,
) -> ModelWrapper:
    """Load a model as a :class:`ModelWrapper`.

    Your model stays yours. Given an ``nn.Module``, the wrapper holds that very object and never
    leaves it changed: eval mode, ``requires_grad=False``, channels-last CNN weights and the
    ``device`` are applied only for the duration of each piece of ftlens's work
    (:meth:`ModelWrapper.session`) and put back after (each module's own mode, each parameter's
    own flag, the same tensors), so a model in the middle of training goes on training, and its
    optimizer with it. Results are always of the weights as they are when ftlens uses them: train
    the model between two calls and the second call sees the new weights (the fingerprint, and so
    every cache key, is checked against the weights at use time). ``copy=True`` wraps a deep copy
    instead (frozen at this moment, in eval mode for good). A family that must restructure the
    model works on a copy from the start: a PEFT model (its adapters merged), a Hugging Face
    ``CLIPModel`` (its image tower), a timm ViT given another ``image_size`` (its position
    embedding resampled); a torchvision, Hugging Face or open_clip model shares its weights with
    yours. Specs, checkpoints and runs build a model of the wrapper's own (eval mode, no
    gradients, channels-last when convolutional).

    Args:
        spec: ``"timm:NAME"``, ``"torchvision:NAME"``, ``"hf:NAME_OR_DIR"``,
            ``"open_clip:MODEL[/TAG]"``, ``"peft:ADAPTER_DIR"`` (with ``base=SPEC``),
            ``"ftlens:PRESET"``, a checkpoint path, ``"RUN_DIR@EPOCH"`` or an ``nn.Module``
            (a timm / torchvision / transformers / open_clip / PEFT object, or any module).
        layers: analysis layers (names or glob patterns); default: the family's blocks or stages.
        mean, std, input_size: override the model's own preprocessing / ``(C, H, W)``. A plain
            module without ``input_size`` takes it from the first images it is given.
        pretrained: load the hub's weights (``timm:``, ``torchvision:``, ``hf:`` ids, ``open_clip:``);
            offline this is an :class:`~ftlens.errors.OfflineError` within a second or two.
        arch: architecture spec of a checkpoint that does not record its own.
        include_norm: also append ``pre_logits`` (what the classification head sees) to the defaults.
        image_size: input resolution ``H`` or ``(H, W)`` (default: the model's own, or the one a
            checkpoint records); a ViT's position embedding is resampled to the new grid. A
            convolutional model takes any size anyway: the images it is given decide (this is only
            its size until it sees images).
        tokens: ``"all"`` (tokens / feature map flattened, the default), ``"cls"`` or ``"mean"``.
        device: where ftlens runs the model (default: a module where it is, a spec on the CPU).
        copy: wrap a deep copy of a module object instead of the object itself.
        **kwargs: passed to the family's builder (e.g. :func:`timm.create_model`'s ``img_size``,
            ``depth``; ``base=`` for ``peft:``).
    """
    channels, hw = _requested_size(image_size, input_size)
    if isinstance(spec, ModelWrapper):
        raise ModelError("load_model got a ModelWrapper; it is loaded already (use it directly, or .copy())")
    if isinstance(spec, nn.Module):
        wrapper = from_module(spec, layers=layers, mean=mean, std=std, channels=channels, hw=hw, tokens=tokens,
                              copy=copy)
    else:
        spec = str(spec)
        prefix = family_prefix(spec)
        if prefix is not None:
            built = _build(prefix, spec.split(":", 1)[1], pretrained=pretrained, **kwargs)
            wrapper = wrap(built, spec, layers=layers, mean=mean, std=std, channels=channels, hw=hw, tokens=tokens)
        else:
            path = resolve_run_checkpoint(spec) if looks_like_run_spec(spec) else Path(spec)
            if not path.exists() and re.match(r"^[A-Za-z_]+:", spec):
                raise ModelError(f"unknown model family in {spec!r}; prefixes: "
                                 f"{', '.join(p + ':' for p in FAMILIES if p != 'module')} (or a checkpoint path)")
            wrapper = from_checkpoint(path, arch=arch, layers=layers, mean=mean, std=std, channels=channels, hw=hw,
                                      tokens=tokens, **kwargs)
            wrapper.spec = spec
            if path.parent.name == CHECKPOINT_DIR:  # a run's epoch: name it "RUN@EPOCH"
                wrapper.name = f"{path.parent.parent.name}@{int(path.stem.split('_')[1])}"
    if include_norm and PRE_LOGITS in wrapper._aliases and PRE_LOGITS not in wrapper.layers:
        wrapper.layers = wrapper.layers + [PRE_LOGITS]
    return wrapper.to(device) if device is not None else wrapper


def _build(prefix: str, name: str, *, pretrained: bool, **kwargs: Any) -> Built:
    """``FAMILIES[prefix].build(...)``, given ``load=load_model`` when the family loads other
    models (PEFT loads its base), so that no family imports this module."""
    family = FAMILIES[prefix]
    if family.loads_models:
        kwargs["load"] = load_model
    return family.build(name, pretrained=pretrained, **kwargs)


def takes_pretrained(spec: str) -> bool:
    """Whether ``load_model(spec, pretrained=True)`` means hub weights (``timm:``, ``torchvision:``,
    ``hf:`` ids, ``open_clip:``); presets, checkpoints and runs carry their own weights."""
    prefix = family_prefix(str(spec))
    return prefix is not None and FAMILIES[prefix].hub


def _requested_size(image_size: Any, input_size: Sequence[int] | None) -> tuple[int | None, tuple[int, int] | None]:
    """``(channels, (H, W))`` asked for (None where not given)."""
    channels = hw = None
    if input_size is not None:
        size = tuple(int(s) for s in input_size)
        if len(size) != 3:
            raise ImageSizeError(f"input_size must be (C, H, W), got {size}")
        channels, hw = size[0], size[1:]
    if image_size is not None:
        asked = hw_of(image_size)
        if hw is not None and asked != hw:
            raise ImageSizeError(f"image_size {asked} and input_size {tuple(input_size)} disagree; give one of them")
        hw = asked
    return channels, hw


def hw_of(size: int | Sequence[int]) -> tuple[int, int]:
    """``224`` or ``(224, 224)`` or ``(3, 224, 224)`` -> ``(224, 224)``."""
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(v) for v in size)
    if len(size) == 3:
        size = size[1:]
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 1:
        raise ImageSizeError(f"image size must be a positive H or (H, W), got {size}")
    return size


def wrap(built: Built, spec: str, *, layers: Sequence[str] | None, mean: Sequence[float] | None,
         std: Sequence[float] | None, channels: int | None, hw: tuple[int, int] | None, tokens: str,
         extra_state: dict[str, torch.Tensor] | None = None, owned: bool = True) -> ModelWrapper:
    """A built module as a wrapper: resized to ``hw`` when asked, preprocessing from the family
    (or the build's own, or the caller's). ``owned=False``: the module (or its weights) is a
    user's, changed only for the duration of ftlens's work."""
    family = family_named(built.family)
    module = built.module
    pre = built.preprocessing
    if hw is None and pre.get("input_size") is not None:
        channels, hw = pre["input_size"][0], tuple(pre["input_size"][1:])
    if hw is not None:
        family.set_image_size(module, hw)
    d = family.defaults(module)
    input_size = None
    if hw is not None:
        input_size = (channels or (d.input_size[0] if d.input_size else 3), *hw)
    elif d.input_size is not None:
        input_size = (channels or d.input_size[0], *d.input_size[1:])
    return _WRAPPERS[family.wrapper_class()](
        module, spec=spec, mean=mean or pre.get("mean") or d.mean, std=std or pre.get("std") or d.std,
        input_size=input_size, layers=layers, source=built.source, extra_state=extra_state, name=built.name,
        random_init=built.random_init, tokens=tokens, family=family.prefix, info=built.info, owned=owned,
    )


def from_module(module: nn.Module, *, layers: Sequence[str] | None, mean: Sequence[float] | None,
                std: Sequence[float] | None, channels: int | None, hw: tuple[int, int] | None,
                tokens: str, copy: bool = False) -> ModelWrapper:
    """A user's module object (the family that owns it describes it; it cannot be rebuilt from a
    file). The wrapper shares the user's weights unless ``copy`` or the family restructures the
    model on a copy (then it owns them)."""
    import copy as _copy

    user = {id(p) for p in module.parameters()}
    if copy:
        module = _copy.deepcopy(module)
    family = family_of(module)
    info: dict[str, Any] = {}
    if family.prefix == "peft":
        from ftlens.models.families.peft import lora_info

        config = next(iter(module.peft_config.values()))
        info["lora"] = lora_info(config, "<PeftModel object>", type(module.get_base_model()).__name__)
        module = family.adopt(module)
        family = family_of(module)
    module = family.adopt(module)
    if hw is not None and family.resizes_in_place(module, hw) and any(id(p) in user for p in module.parameters()):
        module = _copy.deepcopy(module)  # resampling a position embedding would change the user's model
    owned = not any(id(p) in user for p in module.parameters())
    name = type(module).__name__ if family.prefix == "module" else None
    built = Built(module, Source("module", {}), random_init=False, family=family.prefix, info=info, name=name)
    return wrap(built, "<module>", layers=layers, mean=mean, std=std, channels=channels, hw=hw, tokens=tokens,
                owned=owned)


def from_checkpoint(path: Path, *, arch: str | None, layers: Sequence[str] | None, mean: Sequence[float] | None,
                    std: Sequence[float] | None, channels: int | None, hw: tuple[int, int] | None, tokens: str,
                    **kwargs: Any) -> ModelWrapper:
    state, raw_meta = read_state(path)
    meta = checkpoint_metadata(raw_meta)
    build_kwargs = dict(kwargs)
    if arch is None:
        arch = meta.get("spec")
        if arch is None:
            raise CheckpointError(
                f"checkpoint {path} does not record its architecture; pass arch='timm:NAME' "
                "(and the kwargs it was built with)"
            )
        build_kwargs = {**meta.get("kwargs", {}), **build_kwargs}
    prefix = family_prefix(arch)
    if prefix is None:
        raise CheckpointError(f"checkpoint {path}: architecture {arch!r} names no model family")
    built = _build(prefix, arch.split(":", 1)[1], pretrained=False, **build_kwargs)
    family = family_named(built.family)
    if hw is None and meta.get("input_size"):
        channels, hw = int(meta["input_size"][0]), hw_of(meta["input_size"])
    if hw is not None:
        family.set_image_size(built.module, hw)
    extra = {k: v for k, v in state.items() if k.startswith(TASK_HEAD_PREFIX)}
    backbone = {k: v for k, v in state.items() if not k.startswith(TASK_HEAD_PREFIX)}
    _check_keys(built.module, backbone, path, arch, build_kwargs)
    built.module.load_state_dict(backbone, strict=True)
    if mean is None and meta.get("mean"):
        mean = meta["mean"]
        std = std or meta.get("std")
    info = meta.get("info", built.info)
    built = Built(built.module, built.source, random_init=False, family=built.family, info=info)
    wrapper = wrap(built, str(path), layers=layers, mean=mean, std=std, channels=channels, hw=hw, tokens=tokens,
                   extra_state=extra)
    wrapper.name = f"{short_name(arch)}:{path.stem}"
    return wrapper


def _check_keys(module: nn.Module, backbone: dict[str, torch.Tensor], path: Path, arch: str,
                kwargs: dict[str, Any]) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(backbone), key=_natural_key)
    unexpected = sorted(set(backbone) - set(expected), key=_natural_key)
    wrong = sorted((
        f"{k}: checkpoint {tuple(backbone[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(backbone)
        if tuple(backbone[k].shape) != tuple(expected[k].shape)
    ), key=_natural_key)
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label}: {shown}")
        shown_kwargs = {k: v for k, v in kwargs.items() if k != "config"}
        raise CheckpointError(
            f"checkpoint {path} does not match architecture {arch} {shown_kwargs or ''}: " + "; ".join(parts)
        )


def _natural_key(name: str) -> list:
    """Sort ``blocks.4`` before ``blocks.10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def rebuild(wrapper: ModelWrapper, **kwargs: Any) -> ModelWrapper:
    """A fresh, randomly initialised model of the same architecture (for ``scratch``; what the
    family keeps, :meth:`~ftlens.models.families.base.Family.keep_on_rebuild`, comes from ``wrapper``)."""
    prefix = family_prefix(wrapper.source.spec)
    if wrapper.source.spec == "module" or prefix is None:
        raise ModelError("cannot rebuild a user-supplied nn.Module; pass a spec (timm:, torchvision:, hf:, ...)")
    built = _build(prefix, wrapper.source.spec.split(":", 1)[1], pretrained=False,
                                   **{**wrapper.source.kwargs, **kwargs})
    family_named(built.family).keep_on_rebuild(wrapper.module, built.module)
    built = Built(built.module, built.source, random_init=True, family=built.family)
    size = wrapper.input_size
    return wrap(built, wrapper.source.spec, layers=wrapper.layers, mean=wrapper.mean, std=wrapper.std,
                channels=size[0] if size else None, hw=tuple(size[1:]) if size else None, tokens=wrapper.tokens)
