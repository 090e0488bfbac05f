"""How inversions run: :class:`Runtime` / :func:`runtime`, TF32, the compiled ViT block stack,
channels-last CNNs, eval mode, and the batch size from the free GPU memory.

None of it is part of a cache key: it changes speed and memory, results only by rounding.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from ftlens.errors import ConfigError
from ftlens.inversion.loop import _invert_batch, _layer_rep, _one_layer
from ftlens.inversion.settings import InversionSettings, _autocast_dtype
from ftlens.models import ModelWrapper

__all__ = ["DEFAULT_BATCH_SIZE", "Runtime", "auto_batch_size", "batch_size_from_memory", "current_runtime",
           "runtime", "set_tf32", "tf32"]

#: Default number of images per batch when ``batch_size=None``.
DEFAULT_BATCH_SIZE = 256


def _eval_mode(model: ModelWrapper) -> contextlib.AbstractContextManager[None]:
    """The model's working state for the duration (:meth:`ModelWrapper.session`: eval mode, no
    parameter gradients, channels-last CNN weights; the model's own state restored after)."""
    return model.session()


def _channels_last(model: ModelWrapper) -> contextlib.AbstractContextManager[None]:
    """The same session: a CNN's weights are channels-last inside every session."""
    return model.session()



def set_tf32(enabled: bool = True) -> str:
    """Allow (or forbid) TF32 for float32 matmuls on CUDA; returns the previous precision.

    ``torch.set_float32_matmul_precision("high")`` when enabled, ``"highest"`` when not
    (cuDNN convolutions follow ``torch.backends.cudnn.allow_tf32``, True by default in torch).
    Process-wide; ftlens never calls it at import. No effect on CPU arithmetic.
    """
    try:
        previous = torch.get_float32_matmul_precision()
    except RuntimeError:  # the caller mixed the legacy and the new precision APIs
        previous = "highest"
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    return previous



@contextlib.contextmanager
def tf32(enabled: bool = True) -> Iterator[None]:
    """Context manager form of :func:`set_tf32` (restores the previous precision)."""
    previous = set_tf32(enabled)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)



@dataclass(frozen=True)
class Runtime:
    """How inversions run; changes speed and memory, results only by float rounding.

    Not part of a cache key. Set with :func:`runtime` (a context manager) or pass to
    :func:`invert`.

    Attributes:
        compile: ``False`` (default), ``True`` (``torch.compile`` with inductor) or a
            ``torch.compile`` backend name (``"eager"``, ``"aot_eager"``, ``"inductor"``):
            compile the block stack of a timm ViT once per model (see the module docstring).
        memory_fraction: share of the free GPU memory that :func:`auto_batch_size` may plan for.
        max_batch_size: upper bound of an automatic batch size.
        channels_last: run convolutional models (any ``Conv2d``) in the channels-last memory
            format during an inversion (the module's 4-d weights and the images; restored after).
            Off by default; on this CPU it made EfficientNet-Lite0 inversions 1.4-2.2x faster at
            most layers (BENCHMARKS.md, ``bench_kernels.py``). ViTs are left alone.
        batch_layers: run the inversions of several layers (and seeds) of one model in one
            staged forward and backward per step (:mod:`ftlens.inversion.batched`; used by
            :func:`~ftlens.inversion.invert_many` and ``compare``); results equal the per-layer
            path up to rounding. Models whose layers are not a sequence of stages fall back to
            the per-layer path. Uses the eager forward (not ``compile``). Off by default.
    """

    compile: bool | str = False
    memory_fraction: float = 0.8
    max_batch_size: int = 4096
    channels_last: bool = False
    batch_layers: bool = False

    def __post_init__(self) -> None:
        if not (0.0 < float(self.memory_fraction) <= 1.0):
            raise ConfigError(f"memory_fraction must be in (0, 1], got {self.memory_fraction!r}")
        if int(self.max_batch_size) < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {self.max_batch_size!r}")

    @property
    def compile_backend(self) -> str | None:
        if self.compile is False or self.compile is None:
            return None
        return "inductor" if self.compile is True else str(self.compile)



_DEFAULT_RUNTIME = Runtime()
_RUNTIME: contextvars.ContextVar[Runtime | None] = contextvars.ContextVar("ftlens_inversion_runtime", default=None)



def current_runtime() -> Runtime:
    """The :class:`Runtime` in effect (the default one unless inside :func:`runtime`)."""
    return _RUNTIME.get() or _DEFAULT_RUNTIME



@contextlib.contextmanager
def runtime(settings: Runtime | None = None, **changes: Any) -> Iterator[Runtime]:
    """Run the enclosed inversions with ``settings`` (or the current runtime with ``changes``).

    ``with ftlens.inversion.runtime(compile=True): compare(...)`` compiles the ViT block
    stack of every inversion inside.
    """
    new = replace(settings or current_runtime(), **changes)
    token = _RUNTIME.set(new)
    try:
        yield new
    finally:
        _RUNTIME.reset(token)



def batch_size_from_memory(
    n: int,
    free_bytes: float,
    per_image_bytes: float,
    fixed_bytes: float = 0.0,
    *,
    memory_fraction: float = 0.8,
    max_batch_size: int = 4096,
) -> int:
    """The largest batch that fits ``memory_fraction * free_bytes``, balanced over ``n`` images.

    ``per_image_bytes`` and ``fixed_bytes`` are the slope and intercept of the peak memory of one
    inversion step against the batch size. The cap is then spread evenly: ``n`` images in
    ``ceil(n / cap)`` batches of (nearly) equal size, so no batch is a tiny remainder.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    budget = memory_fraction * float(free_bytes) - max(0.0, float(fixed_bytes))
    cap = int(budget // max(float(per_image_bytes), 1.0))
    cap = max(1, min(cap, int(max_batch_size), n))
    batches = math.ceil(n / cap)
    return math.ceil(n / batches)



class _Stop(Exception):
    """Raised from the pre-hook of the first block once the token sequence is known."""



class _BlockStack:
    """The block stack of a timm ViT with every block compiled (one compilation for all).

    Layer ``blocks.k`` is the output of block ``k``: the tokens entering ``blocks[0]`` are taken
    by a forward pre-hook (the eager embedding: patch embedding, position embedding, pre-norm),
    then ``blocks[0..k]`` run compiled. Identical operations to the hook path, in the same order.
    """

    def __init__(self, model: ModelWrapper, backend: str) -> None:
        self.blocks = model.module.blocks
        self.backend = backend
        self.compiled = [torch.compile(block, backend=backend) for block in self.blocks]

    def tokens(self, model: ModelWrapper, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        got: dict[str, Any] = {}

        def pre_hook(_mod, args, kwargs):
            got["h"], got["kwargs"] = args[0], dict(kwargs)
            raise _Stop

        handle = self.blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
        try:
            model.module(model._normalize(x))
        except _Stop:
            pass
        finally:
            handle.remove()
        if "h" not in got:
            raise RuntimeError(f"{model.name}: the first block never ran; cannot use the compiled block stack")
        return got["h"], got["kwargs"]

    def forward(self, model: ModelWrapper, x: torch.Tensor, depth: int) -> torch.Tensor:
        h, kwargs = self.tokens(model, x)
        for block in self.compiled[: depth + 1]:
            h = block(h, **kwargs)
        return h.reshape(h.shape[0], -1)



#: ``{module: {backend: _BlockStack}}``: compiled once per model and backend, for every layer.
_STACKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BLOCK_LAYER = re.compile(r"^blocks\.(\d+)$")
_WARNED_NO_COMPILE: set[str] = set()



def _compiled_forward(model: ModelWrapper, layer: str, backend: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``x -> representation of layer`` through the compiled block stack, or None if not a ViT block."""
    m = _BLOCK_LAYER.match(layer)
    blocks = getattr(model.module, "blocks", None)
    if not (model.is_vit and m and isinstance(blocks, torch.nn.Sequential) and int(m.group(1)) < len(blocks)
            and getattr(model, "tokens", "all") == "all"):
        if model.name not in _WARNED_NO_COMPILE:
            _WARNED_NO_COMPILE.add(model.name)
            warnings.warn(f"compile: layer {layer!r} of {model.name} is not a block of a timm ViT; "
                          "using the eager forward", stacklevel=4)
        return None
    per_model = _STACKS.setdefault(model.module, {})
    stack = per_model.get(backend)
    if stack is None:
        stack = per_model[backend] = _BlockStack(model, backend)
    depth = int(m.group(1))
    return lambda x: stack.forward(model, x, depth)



def _forward_fn(model: ModelWrapper, layer: str, rt: Runtime) -> Callable[[torch.Tensor], torch.Tensor]:
    backend = rt.compile_backend
    if backend is not None:
        fn = _compiled_forward(model, layer, backend)
        if fn is not None:
            return fn
    return lambda x: _layer_rep(model, x, layer)



#: Probe results ``{(module id, fingerprint, layer, device, dtype): (per_image, fixed)}``.
_PROBES: dict[tuple, tuple[float, float]] = {}



def _probe_step_memory(
    model: ModelWrapper, layer: str, device: torch.device, amp_dtype: torch.dtype | None, sizes: tuple[int, int]
) -> tuple[float, float]:
    """Peak CUDA memory of one inversion step at two batch sizes -> (bytes per image, fixed bytes)."""
    key = (id(model.module), model.fingerprint, layer, str(device), str(amp_dtype), sizes)
    if key in _PROBES:
        return _PROBES[key]
    settings = InversionSettings(steps=1)
    peaks = []
    gen = torch.Generator().manual_seed(0)
    for b in sizes:
        x = torch.rand((b, *model.input_size), generator=gen).to(device)
        x0 = torch.rand((b, *model.input_size), generator=gen).to(device)
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _invert_batch(model, layer, x, x0, settings, amp_dtype, None)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
        del x, x0
    (b1, b2), (p1, p2) = sizes, peaks
    per_image = max((p2 - p1) / (b2 - b1), p2 / b2 * 0.5, 1.0)
    fixed = max(0.0, p2 - per_image * b2)
    _PROBES[key] = (per_image, fixed)
    return per_image, fixed



def auto_batch_size(
    model: ModelWrapper,
    layer: str,
    n: int,
    *,
    device: str | torch.device | None = None,
    autocast: torch.dtype | str | None = None,
    memory_fraction: float | None = None,
    max_batch_size: int | None = None,
) -> int:
    """Images per batch for inverting ``n`` images through ``layer``, from the free GPU memory.

    CUDA: a probe runs one inversion step at two small batch sizes, measures the peak memory
    (slope = bytes per image, intercept = fixed), and :func:`batch_size_from_memory` takes the
    largest batch that fits ``memory_fraction`` of the free memory (``torch.cuda.mem_get_info``
    plus what torch's allocator holds but does not use). CPU: ``min(n, 256)``.
    """
    device = torch.device(device) if device is not None else model.device
    rt = current_runtime()
    fraction = rt.memory_fraction if memory_fraction is None else float(memory_fraction)
    cap = rt.max_batch_size if max_batch_size is None else int(max_batch_size)
    if device.type != "cuda":
        return max(1, min(n, DEFAULT_BATCH_SIZE, cap))
    if n <= 8:
        return n
    (layer,) = _one_layer(model, layer)
    amp_dtype = _autocast_dtype(autocast)
    with _eval_mode(model):
        per_image, fixed = _probe_step_memory(model, layer, device, amp_dtype, (2, 6))
    free, _total = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return batch_size_from_memory(n, free, per_image, fixed, memory_fraction=fraction, max_batch_size=cap)
