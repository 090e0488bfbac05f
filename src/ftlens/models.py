"""Load a model, know its preprocessing and its layers, and read those layers.

:func:`load_model` turns a *spec* into a :class:`ModelWrapper`:

- ``"timm:NAME"``: a timm architecture (``pretrained=True`` fetches hub weights);
  extra keyword arguments go to :func:`timm.create_model`;
- ``"ftlens:PRESET"``: a small CPU-friendly ViT (see :data:`PRESETS`), or real pretrained
  weights that ship in a package (``ftlens:efficientnet-lite0-in1k``, see :mod:`ftlens.weights`);
- a checkpoint ``path.safetensors`` / ``path.pt`` (with ``arch=SPEC`` unless the file
  was written by :func:`save_checkpoint`, which records its architecture);
- a finetuning run's epoch: ``"RUN_DIR@3"``, ``"RUN_DIR@last"``, ``"RUN_DIR/epoch_3"``;
- an ``nn.Module`` the user already has, with ``layers=[...]`` and ``input_size``.

Layer capture is one mechanism for every model: forward hooks on named modules,
installed for one forward and removed in ``finally``; outputs are flattened to
``(n, features)`` (all tokens of a ViT block, CLS included; never averaged), and
the forward is stopped right after the deepest requested layer has run.
Images are given in [0, 1] pixel space; normalisation happens inside, after a clamp.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftlens.errors import (
    CheckpointError,
    ImageError,
    ImageSizeError,
    LayerError,
    ModelError,
    NumericalError,
    OfflineError,
)

#: Small ViT presets addressed as ``ftlens:NAME``: timm ``VisionTransformer`` kwargs.
PRESETS: dict[str, dict[str, Any]] = {
    # 32 px, patch 4 -> 8x8 grid + CLS = 65 tokens x 64 = 4,160 features per layer.
    "vit-tiny-32": dict(img_size=32, patch_size=4, depth=12, embed_dim=64, num_heads=4, mlp_ratio=2.0),
    # 16 px, patch 4 -> 4x4 grid + CLS = 17 tokens x 48 = 816 features per layer (the demo).
    "vit-tiny-16": dict(img_size=16, patch_size=4, depth=12, embed_dim=48, num_heads=3, mlp_ratio=2.0),
    # 16 px, 4 blocks, width 32: for tests.
    "vit-micro": dict(img_size=16, patch_size=4, depth=4, embed_dim=32, num_heads=2, mlp_ratio=2.0),
}
_PRESET_BASE = "vit_tiny_patch16_224"  # only the class and its defaults; every size is overridden

#: Pseudo-layer: the features the classification head sees (ViT: CLS after the final norm).
PRE_LOGITS = "pre_logits"
#: Keys of extra task heads stored beside a backbone in a checkpoint.
TASK_HEAD_PREFIX = "task_head."
_CHECKPOINT_DIR = "checkpoints"


class _StopForward(Exception):
    """Raised from a hook once the deepest requested layer has produced its output."""


@dataclass(frozen=True)
class _Source:
    """How a wrapper's architecture can be rebuilt (recorded in checkpoints)."""

    spec: str  # "timm:NAME" | "ftlens:PRESET" | "module"
    kwargs: dict[str, Any]


# --------------------------------------------------------------------------- wrapper


class ModelWrapper:
    """An ``nn.Module`` in eval mode with its preprocessing and its ordered layers.

    Attributes:
        module: the model; parameters come with ``requires_grad=False``.
        spec: the spec it was loaded from (a string; ``"<module>"`` for objects).
        mean, std: per-channel normalisation applied inside every forward.
        input_size: ``(C, H, W)`` the model expects.
        random_init: True when the weights are a random initialisation (a preset, a hub model
            without ``pretrained=True``), not pretrained ones.
        layers: default analysis layers in execution order (ViT: ``blocks.0`` ...).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        spec: str,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: Sequence[int],
        layers: Sequence[str] | None = None,
        source: _Source | None = None,
        extra_state: dict[str, torch.Tensor] | None = None,
        name: str | None = None,
        random_init: bool = False,
    ) -> None:
        self.module = module.eval()
        self.random_init = bool(random_init)
        self.spec = spec
        self.name = name or _short_name(spec)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.input_size = tuple(int(s) for s in input_size)
        if len(self.input_size) != 3:
            raise ValueError(f"input_size must be (C, H, W), got {self.input_size}")
        if len(self.mean) != self.input_size[0] or len(self.std) != self.input_size[0]:
            raise ValueError(
                f"mean/std need one value per channel ({self.input_size[0]}), got {self.mean} / {self.std}"
            )
        self.source = source or _Source("module", {})
        self.extra_state = dict(extra_state or {})
        self._modules = dict(module.named_modules())
        self._aliases = _aliases_for(module)
        self._order: list[str] | None = None  # execution order of all modules (traced once)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._fingerprint: str | None = None
        self.layers = self.resolve_layers(list(layers) if layers else _default_layers(module, self))

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        return (
            f"ModelWrapper({self.name!r}, input_size={self.input_size}, "
            f"layers={len(self.layers)}, device={self.device})"
        )

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> ModelWrapper:
        self.module.to(device)
        return self

    @property
    def is_vit(self) -> bool:
        return hasattr(self.module, "blocks") and hasattr(self.module, "patch_embed")

    @property
    def num_features(self) -> int:
        """Width of the pre-logit features (what a classification head sees)."""
        n = getattr(self.module, "num_features", None)
        if n is None:
            n = int(torch.tensor(self.layer_shapes([PRE_LOGITS])[PRE_LOGITS]).prod())
        return int(n)

    @property
    def fingerprint(self) -> str:
        """sha256 of the weights (names, dtypes, shapes, values) and the preprocessing."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.module, extra=(self.mean, self.std, self.input_size))
        return self._fingerprint

    def layer_fingerprint(self, layer: str) -> str:
        """sha256 of what determines the output of ``layer``: the preprocessing, and the weights
        and buffers of every module that starts before ``layer`` has finished (plus the root
        module's own parameters, e.g. a ViT's position embedding and CLS token).

        Weights that only run after ``layer`` (later blocks, the head) are left out, so a
        finetuning run's epoch 0 (pretrained backbone, new head) shares the pretrained model's
        inversions, and a model changed only in its last blocks shares its early-layer ones.
        Architecture arguments (the source spec and kwargs, less ``num_classes``) are included.
        """
        (layer,) = self.resolve_layers([layer])
        self._execution_order()
        cache = self.__dict__.setdefault("_layer_fps", {})
        key = (self.fingerprint, layer)
        if key in cache:
            return cache[key]
        end = self._ends[self._module_name(layer)]
        h = hashlib.sha256()
        kwargs = {k: v for k, v in self.source.kwargs.items() if k != "num_classes"}
        h.update(repr((type(self.module).__name__, self.source.spec, sorted(kwargs.items()), self.mean, self.std,
                       self.input_size, layer)).encode())
        for name, module in self._modules.items():
            if name and self._starts.get(name, end + 1) > end:
                continue  # runs only after the layer (or never): cannot change it
            h.update(f"<{name}:{type(module).__name__}>".encode())
            for pname, t in list(module._parameters.items()) + list(module._buffers.items()):
                if t is None:
                    continue
                h.update(f"{pname}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(tensor_bytes(t))
        cache[key] = h.hexdigest()
        return cache[key]

    def refresh_modules(self) -> None:
        """Re-read the module tree after submodules were replaced (e.g. ``reset_classifier``,
        which rebuilds a timm CNN's ``global_pool``); the execution trace is taken again."""
        self._modules = dict(self.module.named_modules())
        self._aliases = _aliases_for(self.module)
        self._order = None
        self.refresh_fingerprint()

    def refresh_fingerprint(self) -> str:
        """Recompute :attr:`fingerprint` after the weights changed."""
        self._fingerprint = None
        self.__dict__.pop("_layer_fps", None)
        return self.fingerprint

    def copy(self) -> ModelWrapper:
        """A deep copy (independent weights)."""
        new = copy.copy(self)
        new.module = copy.deepcopy(self.module)
        new._modules = dict(new.module.named_modules())
        new.extra_state = {k: v.clone() for k, v in self.extra_state.items()}
        new._fingerprint = None
        new.__dict__.pop("_layer_fps", None)
        return new

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Every submodule in ``eval()`` (BatchNorm uses its running statistics, dropout is off);
        each module's own mode is restored afterwards (a model in the middle of training)."""
        modes = [(m, m.training) for m in self.module.modules()]
        if not any(training for _, training in modes):
            yield
            return
        self.module.eval()
        try:
            yield
        finally:
            for m, training in modes:
                m.training = training

    # ------------------------------------------------------------------ layers
    @property
    def available_layers(self) -> list[str]:
        """Every hookable module name, plus pseudo-layers such as ``pre_logits``."""
        return [n for n in self._modules if n] + list(self._aliases)

    def _module_name(self, layer: str) -> str:
        return self._aliases.get(layer, layer)

    def resolve_layers(self, layers: None | str | Sequence[str]) -> list[str]:
        """Expand globs, validate names and sort them in execution order.

        ``None`` means the default layers. An unknown name is a :class:`LayerError`
        that lists close matches.
        """
        if layers is None:
            return list(self.layers)
        if isinstance(layers, str):
            layers = [layers]
        available = self.available_layers
        resolved: list[str] = []
        for pattern in layers:
            if any(ch in pattern for ch in "*?["):
                matches = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
                if not matches:
                    raise LayerError(
                        f"layer pattern {pattern!r} matches no module of {self.name}. "
                        f"Try `ftlens layers {self.spec}` to list them."
                    )
                resolved.extend(m for m in matches if m not in resolved)
            elif pattern in self._modules and pattern or pattern in self._aliases:
                if pattern not in resolved:
                    resolved.append(pattern)
            else:
                close = difflib.get_close_matches(pattern, available, n=5, cutoff=0.5)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise LayerError(
                    f"unknown layer {pattern!r} for model {self.name}.{hint} "
                    f"(`ftlens layers {self.spec}` lists all {len(available)} layers)"
                )
        return self._sort_by_execution(resolved)

    def _sort_by_execution(self, layers: list[str]) -> list[str]:
        order = self._execution_order()
        index = {name: i for i, name in enumerate(order)}
        missing = [layer for layer in layers if self._module_name(layer) not in index]
        if missing:
            raise LayerError(
                f"layer(s) {missing} of {self.name} never run in a forward pass "
                "(or return no tensor), so they cannot be captured"
            )
        return sorted(layers, key=lambda layer: index[self._module_name(layer)])

    def _execution_order(self) -> list[str]:
        """Trace one forward (batch of 1) recording when each module finishes, and its shape."""
        if self._order is not None:
            return self._order
        order: list[str] = []
        calls: dict[str, int] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        events = {"n": 0}
        starts: dict[str, int] = {}
        ends: dict[str, int] = {}

        def make_pre_hook(name: str):
            def pre_hook(_mod, _inp):
                events["n"] += 1
                starts.setdefault(name, events["n"])

            return pre_hook

        def make_hook(name: str):
            def hook(_mod, _inp, out):
                events["n"] += 1
                ends.setdefault(name, events["n"])
                t = _first_tensor(out)
                if t is None:
                    return
                calls[name] = calls.get(name, 0) + 1
                if name not in shapes:
                    order.append(name)
                    shapes[name] = tuple(t.shape[1:])

            return hook

        handles = [m.register_forward_hook(make_hook(n)) for n, m in self._modules.items() if n]
        handles += [m.register_forward_pre_hook(make_pre_hook(n)) for n, m in self._modules.items() if n]
        try:
            with torch.no_grad(), self.eval_mode():
                x = torch.full((1, *self.input_size), 0.5, device=self.device)
                self.module(self._normalize(x))
        except Exception as exc:
            raise ImageSizeError(
                f"{self.name} cannot run on input size {self.input_size} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); choose an image size the architecture "
                "takes (e.g. its default, or a multiple of its patch size / total stride)"
            ) from exc
        finally:
            for h in handles:
                h.remove()
        self._order = order
        self._calls = calls
        self._shapes = shapes
        self._starts, self._ends = starts, ends
        return order

    def layer_shapes(self, layers: None | str | Sequence[str] = None) -> dict[str, tuple[int, ...]]:
        """Per-example output shape of each layer (before flattening)."""
        layers = self.resolve_layers(layers)
        self._execution_order()
        out = {}
        for layer in layers:
            shape = self._shapes[self._module_name(layer)]
            if layer == PRE_LOGITS and self.is_vit and len(shape) == 2:
                shape = shape[1:]
            out[layer] = shape
        return out

    # ------------------------------------------------------------------ images
    def check_images(self, images: torch.Tensor) -> None:
        """Raise :class:`ImageError` unless ``images`` is float ``(n, C, H, W)`` finite in [0, 1]."""
        if not isinstance(images, torch.Tensor):
            raise ImageError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if not images.is_floating_point():
            raise ImageError(
                f"images must be floating point in [0, 1], got dtype {images.dtype} "
                "(for uint8 pixels divide by 255)"
            )
        if images.dim() != 4 or tuple(images.shape[1:]) != self.input_size:
            raise ImageError(
                f"images must have shape (n, {', '.join(map(str, self.input_size))}) for {self.name}, "
                f"got {tuple(images.shape)}; resize them to the model's input size"
            )
        if images.numel() and not torch.isfinite(images).all():
            raise ImageError("images contain NaN or inf")
        if images.numel():
            lo, hi = float(images.min()), float(images.max())
            if lo < -1e-6 or hi > 1 + 1e-6:
                raise ImageError(
                    f"images must be in [0, 1] pixel space (got min {lo:.3g}, max {hi:.3g}); "
                    "pass un-normalised pixels: ftlens normalises inside the model"
                )

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp pixels to [0, 1], then normalise with the model's mean and std.

        When ``x`` requires a gradient the clamp is straight-through (its values, the identity's
        gradient): ``torch.clamp`` has a zero gradient *at* 0 and 1, which would freeze every
        pixel of an inversion that reaches a bound.
        """
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        clamped = x.clamp(0.0, 1.0)
        if x.requires_grad:
            clamped = x + (clamped - x).detach()
        return (clamped - mean) / std

    # ------------------------------------------------------------------ forward
    def forward_layers(
        self, images: torch.Tensor, layers: None | str | Sequence[str] = None, *, clone: bool = True
    ) -> dict[str, torch.Tensor]:
        """Differentiable forward returning ``{layer: (n, features)}``.

        Pixels are clamped to [0, 1] and normalised inside; the forward stops right
        after the deepest requested layer. Gradients flow to ``images`` if it requires them.
        """
        layers = self.resolve_layers(layers)
        with self.eval_mode():
            return self._capture(images, layers, clone=clone)

    def _capture(self, images: torch.Tensor, layers: list[str], *, clone: bool) -> dict[str, torch.Tensor]:
        modules = {self._module_name(layer): layer for layer in layers}
        calls = getattr(self, "_calls", {})
        twice = [layer for m, layer in modules.items() if calls.get(m, 1) > 1]
        if twice:
            raise LayerError(
                f"layer(s) {twice} of {self.name} run more than once in one forward, so one output "
                "per image is ambiguous; choose modules that are called once"
            )
        deepest = layers[-1]
        captured: dict[str, torch.Tensor] = {}

        def make_hook(layer: str):
            def hook(_mod, _inp, out):
                t = _first_tensor(out)
                if layer == PRE_LOGITS and self.is_vit and t.dim() == 3:
                    t = t[:, 0]
                t = t.reshape(t.shape[0], -1)
                captured[layer] = t.clone() if clone else t
                if layer == deepest:
                    raise _StopForward

            return hook

        handles = [self._modules[m].register_forward_hook(make_hook(layer)) for m, layer in modules.items()]
        try:
            self.module(self._normalize(images))
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [layer for layer in layers if layer not in captured]
        if missing:
            raise LayerError(f"layer(s) {missing} of {self.name} produced no output in this forward")
        return {layer: captured[layer] for layer in layers}

    def representations(
        self,
        images: torch.Tensor,
        layers: None | str | Sequence[str] = None,
        *,
        batch_size: int = 256,
        device: str | torch.device | None = None,
        autocast: torch.dtype | None = None,
        progress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``{layer: float32 CPU tensor (n, features)}`` for images in [0, 1], without gradients.

        Batched; the forward stops after the deepest requested layer; a NaN or inf
        in a representation is a :class:`NumericalError` naming the layer.
        ``autocast`` (e.g. ``torch.bfloat16``) is used on GPUs only.
        """
        layers = self.resolve_layers(layers)
        self.check_images(images)
        device = torch.device(device) if device is not None else self.device
        if device != self.device:
            self.to(device)
        n = images.shape[0]
        out: dict[str, torch.Tensor] = {}
        batches = range(0, n, batch_size)
        if progress:
            from ftlens.progress import track

            batches = track(batches, description=f"capture {self.name}", total=len(batches))
        with torch.inference_mode(), _autocast(device, autocast), self.eval_mode():
            for start in batches:
                x = images[start : start + batch_size].to(device, non_blocking=True)
                reps = self._capture(x, layers, clone=False)
                for layer, r in reps.items():
                    if layer not in out:
                        out[layer] = torch.empty((n, r.shape[1]), dtype=torch.float32)
                    out[layer][start : start + x.shape[0]] = r.float().cpu()
        for layer, r in out.items():
            if not torch.isfinite(r).all():
                raise NumericalError(
                    f"NaN/inf in the representation of layer {layer!r} of {self.name}; "
                    "check the weights (a diverged checkpoint?) and the inputs"
                )
        return out


# --------------------------------------------------------------------------- helpers


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    if isinstance(out, dict):
        for o in out.values():
            if isinstance(o, torch.Tensor):
                return o
    return None


def _short_name(spec: str) -> str:
    if spec.startswith("clip:"):
        from ftlens.clip import describe

        return describe(spec)
    if spec.startswith(("timm:", "ftlens:")):
        return spec.split(":", 1)[1]
    return Path(spec).name or spec


def _aliases_for(module: nn.Module) -> dict[str, str]:
    names = dict(module.named_modules())
    if "head_drop" in names and "blocks" in names:  # timm ViT: CLS after norm/fc_norm
        return {PRE_LOGITS: "head_drop"}
    if "global_pool" in names:  # timm CNNs
        return {PRE_LOGITS: "global_pool"}
    return {}


def _default_layers(module: nn.Module, wrapper: ModelWrapper) -> list[str]:
    names = dict(module.named_modules())
    blocks = names.get("blocks")
    if isinstance(blocks, nn.Sequential) and "patch_embed" in names:
        return [f"blocks.{i}" for i in range(len(blocks))]
    info = getattr(module, "feature_info", None)
    if info is not None:
        try:
            mods = [d["module"] for d in info]
            mods = [m for m in mods if m in names]
            if mods:
                return mods
        except (TypeError, KeyError):
            pass
    raise LayerError(
        "this model has no default layers; pass layers=[...] (module names or glob patterns, "
        f"e.g. {[n for n, _ in module.named_children()][:6]})"
    )


@contextlib.contextmanager
def _autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None or device.type == "cpu":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor of any dtype and rank (0-dim included, e.g. BatchNorm's
    ``num_batches_tracked``), in C order; empty tensors give ``b""``."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def weights_fingerprint(module: nn.Module, extra: Any = None) -> str:
    """sha256 hex digest of a module's state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    h.update(type(module).__name__.encode())
    for name, t in module.state_dict().items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(tensor_bytes(t))
    if extra is not None:
        h.update(repr(extra).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- loading


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
    device: str | torch.device = "cpu",
    **timm_kwargs: Any,
) -> ModelWrapper:
    """Load a model from a spec (see the module docstring) as a :class:`ModelWrapper`.

    Args:
        spec: ``"timm:NAME"``, ``"ftlens:PRESET"``, a checkpoint path, ``"RUN_DIR@EPOCH"``
            or an ``nn.Module``.
        layers: analysis layers (names or glob patterns); defaults to every ViT block.
        include_norm: also append ``pre_logits`` (CLS after the final norm) to the defaults.
        arch: architecture spec of a checkpoint that does not record its own.
        image_size: input resolution ``H`` or ``(H, W)`` (default: the model's own, or the one a
            checkpoint records). A ViT's position embedding is resampled to the new grid.
        **timm_kwargs: passed to :func:`timm.create_model` (``img_size``, ``depth``, ...).
    """
    if image_size is not None:
        hw = _hw(image_size)
        if input_size is not None and tuple(input_size[1:]) != hw:
            raise ImageSizeError(f"image_size {hw} and input_size {tuple(input_size)} disagree; give one of them")
        input_size = (int(input_size[0]) if input_size is not None else 3, *hw)
    if isinstance(spec, nn.Module):
        wrapper = _from_module(spec, layers=layers, mean=mean, std=std, input_size=input_size)
    else:
        spec = str(spec)
        if spec.startswith(("timm:", "ftlens:", "clip:")):
            module, source = _build(spec, pretrained=pretrained, **timm_kwargs)
            wrapper = _wrap_built(module, spec, source, layers=layers, mean=mean, std=std, input_size=input_size)
            wrapper.random_init = not pretrained and not _ships_weights(spec)
        else:
            path = resolve_run_checkpoint(spec) if _looks_like_run_spec(spec) else Path(spec)
            wrapper = _from_checkpoint(
                path, arch=arch, layers=layers, mean=mean, std=std, input_size=input_size, **timm_kwargs
            )
            wrapper.spec = spec
            if path.parent.name == _CHECKPOINT_DIR:  # a run's epoch: name it "RUN@EPOCH"
                wrapper.name = f"{path.parent.parent.name}@{int(path.stem.split('_')[1])}"
    if include_norm and PRE_LOGITS in wrapper._aliases and PRE_LOGITS not in wrapper.layers:
        wrapper.layers = wrapper.layers + [PRE_LOGITS]
    return wrapper.to(device)


def _build(spec: str, *, pretrained: bool = False, **kwargs: Any) -> tuple[nn.Module, _Source]:
    import timm

    from ftlens.weights import WEIGHTS, load_weights

    kind, name = spec.split(":", 1)
    if kind == "clip":  # image-text models: the image tower, text tower kept aside (ftlens.clip)
        from ftlens.clip import build_for_models

        module, kwargs = build_for_models(name, **kwargs)
        return module, _Source(spec, kwargs)
    if kind == "ftlens" and name in WEIGHTS:  # real weights: rebuilt as their timm architecture
        module, info = load_weights(name, **kwargs)
        module.pretrained_cfg = {**module.pretrained_cfg, "mean": info.mean, "std": info.std,
                                 "input_size": info.input_size}
        return module, _Source(info.arch, dict(kwargs))
    if kind == "ftlens":
        if name not in PRESETS:
            known = list(PRESETS) + list(WEIGHTS)
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.3)
            raise ModelError(
                f"unknown ftlens preset {name!r}; presets: {', '.join(known)}"
                + (f" (did you mean {close[0]}?)" if close else "")
            )
        if pretrained:
            raise ModelError(
                f"ftlens:{name} has no published weights; pretrain it (`ftlens finetune --task "
                "classification --data natural-patches`) and load the run's checkpoint"
            )
        params = {**PRESETS[name], "num_classes": 0, **kwargs}
        module = timm.create_model(_PRESET_BASE, pretrained=False, **params)
        return module, _Source(spec, {k: v for k, v in {"num_classes": 0, **kwargs}.items()})
    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise ModelError(f"unknown timm model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    try:
        module = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:  # network errors come in many types (OSError, HTTP errors, ...)
        if pretrained and _is_network_error(exc):
            raise OfflineError(
                f"could not download pretrained weights for timm:{name} ({type(exc).__name__}: {exc}). "
                "You appear to be offline. Alternatives: pretrained=False (random init), a local "
                "checkpoint (load_model('weights.safetensors', arch='timm:" + name + "')), or set "
                "HF_HUB_OFFLINE=1 with the weights already in the Hugging Face cache."
            ) from exc
        raise
    return module, _Source(spec, dict(kwargs))


def _ships_weights(spec: str) -> bool:
    """Whether an ``ftlens:`` spec names real weights that ship in a package (or a ``clip:`` spec
    loads weights: a Hugging Face directory, an open_clip tag)."""
    from ftlens.weights import WEIGHTS

    if spec.startswith("clip:"):
        from ftlens.clip import loads_weights

        return loads_weights(spec)
    return spec.startswith("ftlens:") and spec.split(":", 1)[1] in WEIGHTS


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
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


def _set_image_size(module: nn.Module, hw: tuple[int, int]) -> None:
    """Make a fixed-resolution model (timm ViT, Swin, ...) take ``hw`` images (position
    embeddings resampled); models that take any size (CNNs) are left as they are."""
    pe = getattr(module, "patch_embed", None)
    current = getattr(pe, "img_size", None)
    if current is None or tuple(current) == hw:
        return
    if not hasattr(module, "set_input_size"):
        raise ImageSizeError(
            f"{type(module).__name__} is built for {tuple(current)} images and cannot be resized to {hw}; "
            f"use image size {current[0]} (or rebuild it with img_size={hw[0]})"
        )
    try:
        module.set_input_size(img_size=hw)
    except Exception as exc:
        raise ImageSizeError(
            f"{type(module).__name__} cannot take {hw} images ({exc}); choose a multiple of its patch size"
        ) from exc


def _is_network_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    keys = ("connect", "resolve", "network", "offline", "timed out", "timeout", "http", "hub", "urlopen")
    return isinstance(exc, (OSError, ConnectionError)) or any(k in text for k in keys)


def _wrap_built(
    module: nn.Module,
    spec: str,
    source: _Source,
    *,
    layers: Sequence[str] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    input_size: Sequence[int] | None,
    extra_state: dict[str, torch.Tensor] | None = None,
) -> ModelWrapper:
    import timm

    cfg = timm.data.resolve_model_data_config(module)
    if input_size is not None:
        _set_image_size(module, _hw(input_size))
    pe = getattr(module, "patch_embed", None)
    if input_size is None and pe is not None and getattr(pe, "img_size", None) is not None:
        input_size = (getattr(pe.proj, "in_channels", 3), *pe.img_size)
    module.requires_grad_(False)
    return ModelWrapper(
        module,
        spec=spec,
        mean=mean or cfg["mean"],
        std=std or cfg["std"],
        input_size=input_size or cfg["input_size"],
        layers=layers,
        source=source,
        extra_state=extra_state,
    )


def _from_module(
    module: nn.Module,
    *,
    layers: Sequence[str] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    input_size: Sequence[int] | None,
) -> ModelWrapper:
    if getattr(module, "pretrained_cfg", None) is not None:  # a timm model object
        return _wrap_built(module, "<module>", _Source("module", {}), layers=layers, mean=mean, std=std,
                           input_size=input_size)
    if input_size is None:
        raise ValueError("load_model(nn.Module) needs input_size=(C, H, W) to trace the layers")
    channels = int(input_size[0])
    module.requires_grad_(False)
    return ModelWrapper(
        module,
        spec="<module>",
        mean=mean or (0.0,) * channels,
        std=std or (1.0,) * channels,
        input_size=input_size,
        layers=layers,
        name=type(module).__name__,
    )


# --------------------------------------------------------------------------- checkpoints

_RUN_EPOCH = re.compile(r"^(?P<dir>.+?)(?:@(?P<at>\w+)|[/\\]epoch[_-]?(?P<ep>\d+))$")


def _looks_like_run_spec(spec: str) -> bool:
    m = _RUN_EPOCH.match(spec)
    return bool(m) and not Path(spec).is_file() and Path(m.group("dir")).is_dir()


def resolve_run_checkpoint(spec: str | os.PathLike) -> Path:
    """``"RUN_DIR@3"`` / ``"RUN_DIR@last"`` / ``"RUN_DIR/epoch_3"`` -> the checkpoint file."""
    m = _RUN_EPOCH.match(str(spec))
    if not m:
        raise CheckpointError(f"{spec!r} is not a run spec; use RUN_DIR@EPOCH or RUN_DIR@last")
    run = Path(m.group("dir"))
    ckpts = sorted((run / _CHECKPOINT_DIR).glob("epoch_*.safetensors"))
    if not ckpts:
        raise CheckpointError(f"run directory {run} has no checkpoints under {run / _CHECKPOINT_DIR}")
    at = m.group("at") if m.group("at") is not None else m.group("ep")
    if at == "last":
        return ckpts[-1]
    if at is None or not at.isdigit():
        raise CheckpointError(f"epoch {at!r} in {spec!r} is not a number or 'last'")
    path = run / _CHECKPOINT_DIR / f"epoch_{int(at):03d}.safetensors"
    if not path.exists():
        have = [int(p.stem.split("_")[1]) for p in ckpts]
        raise CheckpointError(f"run {run} has no checkpoint for epoch {int(at)}; epochs present: {have}")
    return path


def run_checkpoints(run_dir: str | os.PathLike) -> dict[int, Path]:
    """``{epoch: path}`` of every complete checkpoint in a run directory, in order."""
    ckpts = sorted((Path(run_dir) / _CHECKPOINT_DIR).glob("epoch_*.safetensors"))
    return {int(p.stem.split("_")[1]): p for p in ckpts}


def checkpoint_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(run_dir) / _CHECKPOINT_DIR / f"epoch_{epoch:03d}.safetensors"


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
            return state, meta
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); the file is corrupt or "
            "truncated: re-create it (a finetuning run resumes from its last complete epoch)"
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    return state, {}


def _from_checkpoint(
    path: Path,
    *,
    arch: str | None,
    layers: Sequence[str] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    input_size: Sequence[int] | None,
    **timm_kwargs: Any,
) -> ModelWrapper:
    state, meta = _read_state(path)
    kwargs = dict(timm_kwargs)
    if arch is None:
        arch = meta.get("ftlens_spec")
        if arch is None:
            raise CheckpointError(
                f"checkpoint {path} does not record its architecture; pass arch='timm:NAME' "
                "(and the timm kwargs it was built with)"
            )
        kwargs = {**json.loads(meta.get("ftlens_kwargs", "{}")), **kwargs}
    module, source = _build(arch, pretrained=False, **kwargs)
    if input_size is None and meta.get("ftlens_input_size"):
        input_size = json.loads(meta["ftlens_input_size"])
    if input_size is not None:
        _set_image_size(module, _hw(input_size))
    extra = {k: v for k, v in state.items() if k.startswith(TASK_HEAD_PREFIX)}
    backbone = {k: v for k, v in state.items() if not k.startswith(TASK_HEAD_PREFIX)}
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
        raise CheckpointError(
            f"checkpoint {path} does not match architecture {arch} {kwargs or ''}: " + "; ".join(parts)
        )
    module.load_state_dict(backbone, strict=True)
    if meta.get("ftlens_mean") and mean is None:
        mean = json.loads(meta["ftlens_mean"])
        std = std or json.loads(meta["ftlens_std"])
    wrapper = _wrap_built(
        module, str(path), source, layers=layers, mean=mean, std=std, input_size=input_size, extra_state=extra
    )
    wrapper.name = f"{_short_name(arch)}:{path.stem}"
    return wrapper


def _natural_key(name: str) -> list:
    """Sort ``blocks.4`` before ``blocks.10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def save_checkpoint(
    wrapper: ModelWrapper,
    path: str | os.PathLike,
    *,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write the wrapper's weights (plus ``task_head.*`` extras) as safetensors, atomically.

    The file records the architecture spec and timm kwargs so that ``load_model(path)``
    rebuilds it alone. Written to a temporary file in the same directory, then renamed,
    so a killed process never leaves a half-written checkpoint under the final name.
    """
    from safetensors.torch import save_file

    if wrapper.source.spec == "module":
        raise CheckpointError("save_checkpoint needs a model loaded from a timm or ftlens spec")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in wrapper.module.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        key = k if k.startswith(TASK_HEAD_PREFIX) else TASK_HEAD_PREFIX + k
        state[key] = v.detach().cpu().contiguous()
    meta = {
        "ftlens_spec": wrapper.source.spec,
        "ftlens_kwargs": json.dumps(wrapper.source.kwargs, sort_keys=True),
        "ftlens_mean": json.dumps(list(wrapper.mean)),
        "ftlens_std": json.dumps(list(wrapper.std)),
        "ftlens_input_size": json.dumps(list(wrapper.input_size)),
        **(metadata or {}),
    }
    from ftlens.io import atomic_path

    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def rebuild(wrapper: ModelWrapper, **kwargs: Any) -> ModelWrapper:
    """A fresh, randomly initialised model of the same architecture (for ``scratch``)."""
    if wrapper.source.spec == "module":
        raise ValueError("cannot rebuild a user-supplied nn.Module; pass a timm or ftlens spec")
    module, source = _build(wrapper.source.spec, pretrained=False, **{**wrapper.source.kwargs, **kwargs})
    return _wrap_built(module, wrapper.source.spec, source, layers=wrapper.layers, mean=wrapper.mean,
                       std=wrapper.std, input_size=wrapper.input_size)
