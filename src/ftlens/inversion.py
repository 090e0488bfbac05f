"""Representation inversion: images ``X'`` that a reference layer cannot tell from ``X``.

Given a model ``m``, a layer ``j`` and images ``X`` (values in [0, 1]), :func:`invert` finds
``X'`` with ``m^[j](X') ~= m^[j](X)`` by normalised gradient descent on the input only
(ALGORITHMS.md §2):

- start ``X'_0``: ``"noise"`` N(0, 1) of the image's shape, one draw per image (the STIR
  "super-noise" default), ``"uniform"`` U(0, 1) noise, or ``"mixed"`` (image ``i`` starts from
  another image of the set, a seeded derangement, so no image starts from itself);
- loss per image: ``r_i = ||m^[j](x'_i) - m^[j](x_i)||_2 / ||m^[j](x_i)||_2`` (the relative
  residual; flattened representation, float32);
- step per image: ``x' <- clamp(x' - s_i * g / ||g||_2, 0, 1)`` with ``g`` the gradient of
  ``r_i`` w.r.t. ``x'_i`` and the norm over all pixels of that image; no epsilon ball; the step
  length ``s_i`` is ``step_size`` (fixed schedule) or adapted per image (see Schedules);
- the iterate with the lowest residual seen is kept per image ("use best"), the start and the
  last iterate included (``steps`` gradient steps, ``steps + 1`` evaluated iterates).

Schedules (:class:`InversionSettings`). ``schedule="fixed"`` is the paper's loop above, every
image taking every step. The default ``"adaptive"`` keeps the method (the start, the residual,
the normalised-gradient direction, the clamp, "use best") and changes two things per image:
the step length (multiplied by ``grow`` = 1.5 after a step that lowered the image's best
residual, by ``decay`` = 0.5 after one that did not, capped at ``8 * step_size``) and when it
stops (once its best residual is at most ``stop_residual`` = :data:`STOP_RESIDUAL`, or
after ``patience`` = 3 evaluations in a row without a 1% improvement; ``steps`` is the cap).
The batch shrinks to the images still running. A moment-based optimiser (Adam) was not taken:
its steps are not normalised-gradient steps, so it would be another method, not a schedule of
this one. The choice is measured in BENCHMARKS.md (STIR within 0.02 of the fixed path with
fewer image-steps).

Start noise is *not* clamped: ``X'_0`` is raw N(0, 1) as in §2. The model's forward clamps
pixels to [0, 1] before normalising, so the representation of ``X'_0`` is that of
``clamp(X'_0, 0, 1)``; out-of-range pixels get no gradient in the first step and the first
step's clamp brings every pixel into range. Returned images are always in [0, 1] (if the start
itself is the best iterate, its clamped version, which has the same representation, is returned).

The step clamps to ``[0, 1]`` exactly. The wrapper's clamp before normalising is
straight-through when the input requires a gradient (``torch.clamp`` itself has a zero gradient
*at* 0 and 1, which would freeze every pixel that reaches a bound: with the N(0, 1) start most
pixels do after the first step, and the residual would stall).

Only the input requires a gradient (``torch.autograd.grad`` w.r.t. the input); the forward
stops right after layer ``j`` (:meth:`ModelWrapper.forward_layers`); the model runs in
``eval()`` mode. The best-iterate bookkeeping and NaN detection stay on the device, checked
once per batch; the fixed schedule's loop has no other host synchronisation, early stopping
one per step (whether any image stopped, to shrink the batch).

Determinism: the start of image ``i`` depends only on ``(seed, i)`` (its own generator), never
on the batch size; two runs with the same seed and batch size give identical results.

GPU path (same code as the CPU path; the knobs change speed, and results only by rounding):

- ``autocast="bf16"``: the model forward (the representation, and its backward) runs under
  bfloat16 autocast on CUDA; the residual, its norm, the step and the best-iterate bookkeeping
  stay float32, and CKA/HSIC (:mod:`ftlens.similarity`) stay float64. Tolerance against the
  float32 path: STIR within 0.02 (absolute; measured on the CPU with CPU autocast as a proxy,
  ``tests/test_gpu_path.py``, where the largest difference was far smaller). bf16 results get
  their own cache entries (``autocast`` is part of the key).
- :func:`set_tf32` / :func:`tf32`: TF32 for float32 matmuls on CUDA
  (``torch.set_float32_matmul_precision("high")``), set explicitly, never at import.
- :class:`Runtime` / :func:`runtime` (``compile``, ``memory_fraction``, ``max_batch_size``):
  ``compile`` runs the block stack of a timm ViT through ``torch.compile``: every block is
  compiled once per model and all blocks share the compiled code (one compilation serves all
  layers; the forward to layer ``j`` is a Python loop over the first ``j`` compiled blocks).
  Off by default. Models other than timm ViTs, and non-block layers, use the eager hook path.
- ``batch_size=None`` on CUDA: :func:`auto_batch_size` runs a one-step probe at two small batch
  sizes, measures the peak memory per image (``torch.cuda.max_memory_allocated``; the probe
  resets the peak statistics) and takes the largest batch that fits ``memory_fraction`` of the
  free memory (``torch.cuda.mem_get_info``), balanced so that every batch has about the same
  size. An explicit ``batch_size`` overrides it. On the CPU the default stays 256.
- CPU threads: the inner loop uses ``torch.get_num_threads()`` intra-op threads (set them with
  ``torch.set_num_threads`` or ``--threads``); processes started by ``--processes N`` get
  ``cpu_count // N`` each (:mod:`ftlens.distributed`).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ftlens.errors import ConfigError, NumericalError
from ftlens.models import ModelWrapper
from ftlens.settings import PAPER

__all__ = [
    "STOP_RESIDUAL",
    "SCHEDULES",
    "SCHEDULE_PRESETS",
    "STARTS",
    "Inversion",
    "InversionSettings",
    "Runtime",
    "auto_batch_size",
    "batch_size_from_memory",
    "current_runtime",
    "invert",
    "invert_many",
    "runtime",
    "schedule_fields",
    "set_tf32",
    "start_images",
    "tf32",
]

#: Accepted values of ``start``.
STARTS = ("noise", "mixed", "uniform")
#: Floor for norms we divide by (a zero gradient then gives a zero step).
_TINY = 1e-30
#: Default number of images per batch when ``batch_size=None``.
DEFAULT_BATCH_SIZE = 256

#: ``progress(done, total, mean_residual)``: ``done``/``total`` count evaluated iterates over all
#: batches; ``mean_residual`` is a 0-d tensor *on the device* (call ``float()`` on it sparingly:
#: it synchronises).
ProgressFn = Callable[[int, int, torch.Tensor], None]

_AUTOCAST_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def _autocast_dtype(autocast: torch.dtype | str | None) -> torch.dtype | None:
    if autocast is None or autocast is False:
        return None
    if isinstance(autocast, torch.dtype):
        if autocast in (torch.float32, torch.float64):
            return None
        return autocast
    name = str(autocast).lower()
    if name in ("none", "fp32", "float32", "off", ""):
        return None
    if name not in _AUTOCAST_NAMES:
        raise ConfigError(f"autocast must be None, 'bf16' or 'fp16' (or a torch dtype), got {autocast!r}")
    return _AUTOCAST_NAMES[name]


#: Accepted values of ``schedule``.
SCHEDULES = ("fixed", "adaptive")
#: The residual at which the adaptive schedule stops an image: ``PAPER.stop_fraction *
#: PAPER.residual_threshold`` (the convergence gate's threshold, :mod:`ftlens.settings`).
STOP_RESIDUAL = PAPER.stop_fraction * PAPER.residual_threshold


@dataclass(frozen=True)
class InversionSettings:
    """Everything besides model, layer, images and seed that determines an inversion.

    Attributes:
        steps: number of normalised gradient steps (the paper: 50; the authors' scripts: 500);
            with early stopping, the most any image takes.
        step_size: L2 length of each step in pixel space, per image (default 0.5).
        start: ``"noise"`` | ``"mixed"`` | ``"uniform"`` (see the module docstring).
        autocast: ``None`` (float32) or ``"bf16"`` / ``"fp16"``: the forward runs under
            autocast on CUDA only (ignored on the CPU); residuals are always float32.
        schedule: ``"adaptive"`` (default) or ``"fixed"`` (the paper: every step has length
            ``step_size``). Adaptive: each image has its own step length, starting at
            ``step_size``, multiplied by ``grow`` after a step that lowered its best residual
            (up to ``max_step_size``) and by ``decay`` after one that did not; the direction is
            the normalised gradient in both.
        decay: step-length factor after a failed step, in (0, 1).
        grow: step-length factor after a successful step, in [1, 10] (1: decay only).
        max_step_size: cap of the adaptive step length (default ``8 * step_size``).
        patience: early stop: an image stops once ``patience`` evaluated iterates in a row
            lowered its best residual by less than ``min_improvement`` (relative); ``None``:
            never.
        min_improvement: relative improvement of the best residual that resets ``patience``.
        stop_residual: an image stops once its best residual is at most this (the inversion
            default :data:`STOP_RESIDUAL`, a fraction of the convergence gate's threshold);
            ``None``: never.

    ``steps`` is the cap: with early stopping an image may take fewer. :meth:`paper` (or
    ``schedule="fixed"`` in every API, ``--schedule fixed`` on the CLI) is the paper's fixed
    schedule without early stopping. Every field that can change the result is in the cache key.
    """

    steps: int = PAPER.steps
    step_size: float = PAPER.step_size
    start: str = PAPER.start
    autocast: str | None = None
    schedule: str = PAPER.schedule
    decay: float = 0.5
    grow: float = 1.5
    max_step_size: float | None = None
    patience: int | None = 3
    min_improvement: float = 0.01
    stop_residual: float | None = STOP_RESIDUAL

    def __post_init__(self) -> None:
        from ftlens.checks import choice, integer, inversion_options, number

        steps, step_size, _ = inversion_options(self.steps, self.step_size, self.start)  # ConfigError
        choice("schedule", self.schedule, SCHEDULES)
        object.__setattr__(self, "decay", number("decay", self.decay, low=0.0, high=0.999, low_open=True))
        object.__setattr__(self, "grow", number("grow", self.grow, low=1.0, high=10.0))
        if self.max_step_size is not None:
            object.__setattr__(self, "max_step_size", number("max_step_size", self.max_step_size, low=step_size))
        if self.patience is not None:
            object.__setattr__(self, "patience", integer("patience", self.patience, minimum=1))
        object.__setattr__(self, "min_improvement", number("min_improvement", self.min_improvement, low=0.0,
                                                           high=0.999))
        if self.stop_residual is not None:
            object.__setattr__(self, "stop_residual", number("stop_residual", self.stop_residual, low=0.0))
        dtype = _autocast_dtype(self.autocast)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "step_size", step_size)
        object.__setattr__(self, "autocast", None if dtype is None else str(dtype).removeprefix("torch."))

    @classmethod
    def paper(cls, **changes: Any) -> InversionSettings:
        """The paper's schedule: every image takes ``steps`` steps of length ``step_size``."""
        return cls(**{**SCHEDULE_PRESETS["fixed"], **changes})

    @property
    def adaptive(self) -> bool:
        """Whether anything but the paper's fixed schedule runs (decay or early stopping)."""
        return self.schedule != "fixed" or self.early_stop

    @property
    def early_stop(self) -> bool:
        """Whether images can stop before ``steps``."""
        return self.patience is not None or self.stop_residual is not None

    def effective_autocast(self, device: torch.device | str) -> str | None:
        """The autocast dtype actually used on ``device`` (``None`` on the CPU)."""
        return None if torch.device(device).type == "cpu" else self.autocast

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def schedule_key(self) -> dict[str, Any]:
        """The schedule fields of a cache key: empty for the paper's fixed schedule (so its keys
        are those of earlier versions), every schedule field otherwise."""
        if not self.adaptive:
            return {}
        return {k: getattr(self, k) for k in _SCHEDULE_FIELDS}


#: Named schedules for ``schedule=`` arguments (``compare``, ``stir``, ``invert``, the CLI).
SCHEDULE_PRESETS: dict[str, dict[str, Any]] = {
    "adaptive": {},  # the defaults of InversionSettings
    "fixed": {"schedule": "fixed", "patience": None, "stop_residual": None},  # the paper
}


def schedule_fields(schedule: str | Mapping[str, Any] | InversionSettings | None) -> dict[str, Any]:
    """The :class:`InversionSettings` schedule fields that ``schedule`` names.

    ``None`` or ``"adaptive"``: the defaults (adaptive step length, early stopping); ``"fixed"``:
    the paper's fixed schedule (:meth:`InversionSettings.paper`); a mapping: explicit fields (``schedule``, ``decay``, ``patience``, ``min_improvement``,
    ``stop_residual``); an :class:`InversionSettings`: its schedule fields.
    """
    if schedule is None:
        return {}
    if isinstance(schedule, InversionSettings):
        return {k: getattr(schedule, k) for k in _SCHEDULE_FIELDS}
    if isinstance(schedule, str):
        if schedule not in SCHEDULE_PRESETS:
            raise ValueError(f"schedule must be one of {tuple(SCHEDULE_PRESETS)} or a mapping of "
                             f"{_SCHEDULE_FIELDS}, got {schedule!r}")
        return dict(SCHEDULE_PRESETS[schedule])
    unknown = sorted(set(schedule) - set(_SCHEDULE_FIELDS))
    if unknown:
        raise ValueError(f"unknown schedule field(s) {unknown}; known: {_SCHEDULE_FIELDS}")
    return dict(schedule)


_SCHEDULE_FIELDS = ("schedule", "decay", "grow", "max_step_size", "patience", "min_improvement", "stop_residual")


@dataclass
class Inversion:
    """Result of inverting ``n`` images through one layer of one model.

    Attributes:
        images: ``X'``, float32 CPU tensor ``(n, C, H, W)`` in [0, 1] (best iterate per image).
        residual: float32 CPU tensor ``(n,)``: the relative L2 residual
            ``||m^[j](x') - m^[j](x)|| / ||m^[j](x)||`` of the returned (best) iterate.
        history: float32 CPU tensor ``(steps + 1,)``: mean residual of the *current* iterate at
            each evaluation (index 0 = start).
        best_history: float32 CPU tensor ``(steps + 1,)``: mean residual of the best iterate so
            far (non-increasing).
        layer, model: the inverted layer and the model's name.
        seed: seed of the start; ``settings``: steps, step size, start, autocast.
        seconds: wall time of the computation (of the original run, if loaded from a cache).
        cached: whether this result came from a cache.
    """

    images: torch.Tensor
    residual: torch.Tensor
    history: torch.Tensor
    best_history: torch.Tensor
    layer: str
    model: str
    seed: int
    settings: InversionSettings
    seconds: float = 0.0
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def mean_residual(self) -> float:
        return float(self.residual.mean()) if self.residual.numel() else float("nan")

    def __repr__(self) -> str:
        return (
            f"Inversion(model={self.model!r}, layer={self.layer!r}, n={self.n}, seed={self.seed}, "
            f"steps={self.settings.steps}, mean residual={self.mean_residual:.4g})"
        )


# ------------------------------------------------------------------------------------ starts


def _image_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator whose stream depends only on ``(seed, index)``."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def _derangement(n: int, seed: int) -> torch.Tensor:
    """``source[i]``: the image image ``i`` starts from; one seeded cycle, so ``source[i] != i``."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), 2**31 - 1]).generate_state(1)[0]))
    order = torch.randperm(n, generator=g)
    source = torch.empty(n, dtype=torch.long)
    source[order] = order.roll(-1)
    return source


def start_images(
    images: torch.Tensor, start: str, seed: int, indices: Sequence[int] | None = None
) -> torch.Tensor:
    """Start points ``X'_0`` for ``images[indices]`` (all images by default), float32 CPU.

    ``noise``: N(0, 1) (not clamped); ``uniform``: U(0, 1); ``mixed``: image ``source[i]`` of
    the whole set ``images`` (a seeded derangement). The start of image ``i`` depends only on
    ``(seed, i)`` (and, for ``mixed``, on the set), not on which batch it is computed in.
    """
    n = images.shape[0]
    idx = list(range(n)) if indices is None else [int(i) for i in indices]
    shape = tuple(images.shape[1:])
    if start == "mixed":
        if n < 2:
            raise ConfigError("start='mixed' needs at least 2 images (each starts from another one)")
        source = _derangement(n, seed)
        return images[source[idx]].detach().to("cpu", torch.float32).clone()
    out = torch.empty((len(idx), *shape), dtype=torch.float32)
    for k, i in enumerate(idx):
        g = _image_generator(seed, i)
        if start == "noise":
            out[k] = torch.randn(shape, generator=g)
        elif start == "uniform":
            out[k] = torch.rand(shape, generator=g)
        else:
            raise ConfigError(f"start must be one of {STARTS}, got {start!r}")
    return out


#: Noise/uniform start batches of the most recent ``(start, seed, image shape)``: ``{"group": key,
#: (lo, hi): tensor}``. Starts depend only on the seed and the image index, so every layer and
#: model inverted on the same seed reuses them (a compare inverts 2 L layers per seed; drawing
#: 500 ViT-B starts on the CPU takes ~0.4 s, which a GPU would otherwise wait for each time).
_START_MEMO: dict[Any, Any] = {}


def _batch_starts(images: torch.Tensor, start: str, seed: int, lo: int, hi: int) -> torch.Tensor:
    """``start_images(images, start, seed, range(lo, hi))``, memoised for ``noise``/``uniform``."""
    if start == "mixed":  # depends on the images themselves; cheap (an index)
        return start_images(images, start, seed, range(lo, hi))
    group = (start, int(seed), tuple(images.shape[1:]))
    if _START_MEMO.get("group") != group:
        _START_MEMO.clear()
        _START_MEMO["group"] = group
    x0 = _START_MEMO.get((lo, hi))
    if x0 is None:
        x0 = _START_MEMO[(lo, hi)] = start_images(images, start, seed, range(lo, hi))
    return x0


# ------------------------------------------------------------------------------------ core


@contextlib.contextmanager
def _eval_mode(model: ModelWrapper) -> Iterator[None]:
    was_training = model.module.training
    model.module.eval()
    try:
        yield
    finally:
        if was_training:
            model.module.train()


@contextlib.contextmanager
def _channels_last(model: ModelWrapper) -> Iterator[None]:
    """The module in the channels-last memory format for the duration (4-d weights only)."""
    model.module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.module.to(memory_format=torch.contiguous_format)


def _amp(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or device.type == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _layer_rep(model: ModelWrapper, x: torch.Tensor, layer: str) -> torch.Tensor:
    return model.forward_layers(x, [layer], clone=False)[layer]


# ------------------------------------------------------------------------------------ GPU path


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
    """

    compile: bool | str = False
    memory_fraction: float = 0.8
    max_batch_size: int = 4096
    channels_last: bool = False

    def __post_init__(self) -> None:
        if not (0.0 < float(self.memory_fraction) <= 1.0):
            raise ValueError(f"memory_fraction must be in (0, 1], got {self.memory_fraction!r}")
        if int(self.max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size!r}")

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


def _invert_batch(
    model: ModelWrapper,
    layer: str,
    x_true: torch.Tensor,
    x0: torch.Tensor,
    settings: InversionSettings,
    amp_dtype: torch.dtype | None,
    on_step: Callable[[int, torch.Tensor], None] | None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    stats: dict[str, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Invert one batch; returns (best images, best residual, history, best history) on device.

    ``forward``: ``x -> (b, features)`` representation of ``layer`` (default: the hook path).
    ``stats`` (if given) gets ``image_steps``: evaluated image-iterates (forward passes per
    image; ``b * (steps + 1)`` without early stopping).
    """
    if forward is None:
        def forward(x: torch.Tensor) -> torch.Tensor:
            return _layer_rep(model, x, layer)
    if settings.adaptive:
        return _invert_batch_adaptive(model, layer, x_true, x0, settings, amp_dtype, on_step, forward, stats)
    device = x_true.device
    b = x_true.shape[0]
    steps, step_size = settings.steps, settings.step_size
    target, target_norm = _target(model, layer, x_true, amp_dtype, forward)

    x, best_x, best, history, best_history, first_bad = _loop_state(x0, steps, device)
    view = (b,) + (1,) * (x.dim() - 1)

    for t in range(steps + 1):
        last = t == steps
        if not last:
            x.requires_grad_(True)
        with torch.set_grad_enabled(not last), _amp(device, amp_dtype):
            rep = forward(x)
        residual = (rep.float() - target).norm(dim=1) / target_norm  # (b,) float32
        r = residual.detach()
        bad = ~torch.isfinite(r)
        first_bad = torch.where((first_bad < 0) & bad.any(), t, first_bad)
        improved = r < best  # NaN compares False: a NaN iterate is never kept
        torch.where(improved, r, best, out=best)
        # iterates after a step are in range already; only the (noise) start needs the clamp
        candidate = x.detach() if t else x.detach().clamp(0.0, 1.0)
        torch.where(improved.view(view), candidate, best_x, out=best_x)
        history[t] = r.mean()
        best_history[t] = best.mean()
        if not last:
            (grad,) = torch.autograd.grad(residual.sum(), x)
            grad_norm = grad.flatten(1).norm(dim=1).clamp_min(_TINY).view(view)
            x = x.detach()
            x.addcdiv_(grad, grad_norm, value=-step_size).clamp_(0.0, 1.0)
        if on_step is not None:
            on_step(t, history[t])
    _check_bad(model, layer, int(first_bad), steps)  # the one host sync of the batch
    if stats is not None:
        stats["image_steps"] = stats.get("image_steps", 0) + b * (steps + 1)
    return best_x, best, history, best_history


def _target(model, layer, x_true, amp_dtype, forward) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m^[layer](X) float32 (b, features), its norms (b,))``; NaN/inf is a NumericalError."""
    with torch.no_grad(), _amp(x_true.device, amp_dtype):
        target = forward(x_true).float()
    if not bool(torch.isfinite(target).all()):
        raise NumericalError(
            f"NaN/inf in layer {layer!r} of {model.name} for the original images (before inversion "
            "step 0); check the weights (a diverged checkpoint?) and the images"
        )
    return target, target.norm(dim=1).clamp_min(_TINY)


def _check_bad(model: ModelWrapper, layer: str, bad_step: int, steps: int) -> None:
    if bad_step >= 0:
        raise NumericalError(
            f"NaN/inf appeared in the representation of layer {layer!r} of {model.name} at inversion "
            f"step {bad_step} (of {steps}); the model is numerically unstable for these inputs: "
            "try a smaller step_size, float32 (autocast=None), or check the weights"
        )



def _loop_state(x0: torch.Tensor, steps: int, device: torch.device):
    """The state both schedules start from: the iterate ``x`` (a copy of ``x0``), the best iterate so far
    (``x0`` clamped to [0, 1]), the best residual per image (inf), the mean residual and mean best
    residual per step (``(steps + 1,)``, filled by the loop) and the first non-finite step (-1: none)."""
    b = x0.shape[0]
    x = x0.clone()
    return (x, x.clamp(0.0, 1.0), torch.full((b,), math.inf, device=device),
            torch.empty(steps + 1, device=device), torch.empty(steps + 1, device=device),
            torch.full((), -1, dtype=torch.long, device=device))

def _invert_batch_adaptive(
    model: ModelWrapper,
    layer: str,
    x_true: torch.Tensor,
    x0: torch.Tensor,
    settings: InversionSettings,
    amp_dtype: torch.dtype | None,
    on_step: Callable[[int, torch.Tensor], None] | None,
    forward: Callable[[torch.Tensor], torch.Tensor],
    stats: dict[str, int] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_invert_batch` with an adaptive step length and/or per-image early stopping.

    Each image keeps its own step length (``schedule="adaptive"``: times ``grow`` after a step
    that lowered its best residual, times ``decay`` after one that did not) and its own count of evaluations without a relative
    improvement of ``min_improvement``. An image stops when that count reaches ``patience`` or
    its best residual reaches ``stop_residual``; the batch then shrinks to the images still
    running (one host sync per step for the check). A stopped image keeps its best iterate;
    in ``history`` it counts with its best residual from then on.
    """
    device = x_true.device
    b = x_true.shape[0]
    steps = settings.steps
    decay = settings.schedule == "adaptive"
    max_size = settings.max_step_size or 8.0 * settings.step_size
    target, target_norm = _target(model, layer, x_true, amp_dtype, forward)

    x, best_x, best, history, best_history, first_bad = _loop_state(x0, steps, device)
    active = torch.arange(b, device=device)  # batch rows still running
    size = torch.full((b,), settings.step_size, device=device)  # step length of the running rows
    stale = torch.zeros(b, dtype=torch.long, device=device)  # evaluations without improvement
    frozen = torch.zeros((), device=device)  # sum of the best residuals of stopped images
    patience = settings.patience
    keep_factor = 1.0 - settings.min_improvement
    image_steps = 0
    t = 0
    for t in range(steps + 1):
        last = t == steps
        n_act = x.shape[0]
        image_steps += n_act
        view = (n_act,) + (1,) * (x.dim() - 1)
        if not last:
            x.requires_grad_(True)
        with torch.set_grad_enabled(not last), _amp(device, amp_dtype):
            rep = forward(x)
        residual = (rep.float() - target).norm(dim=1) / target_norm  # (n_act,) float32
        r = residual.detach()
        bad = ~torch.isfinite(r)
        first_bad = torch.where((first_bad < 0) & bad.any(), t, first_bad)
        prev = best[active]
        improved = r < prev
        new_best = torch.where(improved, r, prev)
        best[active] = new_best
        candidate = x.detach() if t else x.detach().clamp(0.0, 1.0)
        best_x[active] = torch.where(improved.view(view), candidate, best_x[active])
        history[t] = (r.sum() + frozen) / b
        best_history[t] = best.mean()
        if on_step is not None:
            on_step(t, history[t])
        if last:
            break
        (grad,) = torch.autograd.grad(residual.sum(), x)
        grad_norm = grad.flatten(1).norm(dim=1).clamp_min(_TINY)
        if decay and t:
            size = torch.where(improved, (size * settings.grow).clamp_max(max_size), size * settings.decay)
        x = x.detach()
        x.addcmul_(grad, (size / grad_norm).view(view), value=-1.0).clamp_(0.0, 1.0)
        # early stop: the count of evaluations without a relative improvement, the threshold
        done = None
        if patience is not None:
            stale = torch.where(r < prev * keep_factor, 0, stale + 1)
            done = stale >= patience
        if settings.stop_residual is not None:
            reached = new_best <= settings.stop_residual
            done = reached if done is None else done | reached
        if done is not None and bool(done.any()):  # a host sync per step, only with early stopping
            keep = ~done
            frozen = frozen + new_best[done].sum()
            active, x, size, stale = active[keep], x[keep], size[keep], stale[keep]
            target, target_norm = target[keep], target_norm[keep]
            if active.numel() == 0:
                break
    if t < steps:  # every image stopped: the rest of the history is flat
        history[t + 1:] = best.mean()
        best_history[t + 1:] = best.mean()
    _check_bad(model, layer, int(first_bad), steps)
    if stats is not None:
        stats["image_steps"] = stats.get("image_steps", 0) + image_steps
    return best_x, best, history, best_history


def invert(
    model: ModelWrapper,
    layer: str,
    images: torch.Tensor,
    steps: int = PAPER.steps,
    step_size: float = PAPER.step_size,
    start: str = PAPER.start,
    seed: int = 0,
    *,
    batch_size: int | None = None,
    autocast: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    progress: bool | ProgressFn | None = False,
    compile: bool | str | None = None,
    schedule: str | Mapping[str, Any] | InversionSettings | None = None,
) -> Inversion:
    """Invert ``images`` through ``layer`` of ``model``: ``X'`` with ``m^[layer](X') ~= m^[layer](X)``.

    Args:
        model: the reference model (a :class:`~ftlens.models.ModelWrapper`).
        layer: one layer name of ``model`` (see ``model.layers``).
        images: ``X``, float ``(n, C, H, W)`` in [0, 1] at the model's input size.
        steps: gradient steps (``steps + 1`` iterates are evaluated, the last one included).
        step_size: L2 length of each normalised step, per image, in [0, 1] pixel units.
        start: ``"noise"`` (N(0, 1), the default), ``"mixed"`` or ``"uniform"``.
        seed: seed of the start (image ``i``'s start depends only on ``(seed, i)``).
        batch_size: images per batch (default: 256 on the CPU, :func:`auto_batch_size` on CUDA);
            does not change the starts.
        autocast: ``"bf16"`` / ``"fp16"`` to run the forward under autocast on CUDA (ignored on
            the CPU); the residual is computed in float32.
        device: where to compute (default: the model's device).
        progress: ``True`` for a progress bar, or a callable ``(done, total, mean_residual)``.
        compile: ``torch.compile`` the ViT block stack (``True`` or a backend name); default:
            the current :class:`Runtime` (off).
        schedule: ``None`` / ``"adaptive"`` (default: adaptive step length, early stopping),
            ``"fixed"`` (the paper) or a mapping of schedule fields (:func:`schedule_fields`).

    Returns:
        :class:`Inversion` with ``.images`` (n, C, H, W) in [0, 1] and ``.residual`` (n,).

    Raises:
        ImageError: images of the wrong shape or outside [0, 1].
        LayerError: an unknown layer.
        NumericalError: a NaN/inf in the representation (names the layer and the step).
    """
    settings = InversionSettings(steps=steps, step_size=step_size, start=start,
                                 autocast=None if autocast is None else str(autocast), **schedule_fields(schedule))
    if compile is None:
        return _invert(model, layer, images, settings, seed, batch_size=batch_size, device=device,
                       progress=progress)
    with runtime(compile=compile):
        return _invert(model, layer, images, settings, seed, batch_size=batch_size, device=device,
                       progress=progress)


def _invert(
    model: ModelWrapper,
    layer: str,
    images: torch.Tensor,
    settings: InversionSettings,
    seed: int,
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool | ProgressFn | None = False,
) -> Inversion:
    t0 = time.perf_counter()
    (layer,) = _one_layer(model, layer)
    model.check_images(images)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    n = images.shape[0]
    if n == 0:
        raise ConfigError("invert needs at least one image")
    device = torch.device(device) if device is not None else model.device
    if device != model.device:
        model.to(device)
    amp_dtype = _autocast_dtype(settings.effective_autocast(device))
    rt = current_runtime()
    if batch_size is None:
        bs = auto_batch_size(model, layer, n, device=device, autocast=amp_dtype) if device.type == "cuda" \
            else DEFAULT_BATCH_SIZE
    else:
        bs = int(batch_size)
    if bs < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
    forward = _forward_fn(model, layer, rt)
    steps = settings.steps
    total = (steps + 1) * n  # image-iterates, for progress

    callback, close = _progress_callback(progress, f"invert {model.name} {layer}", total, steps)
    images_out = torch.empty((n, *images.shape[1:]), dtype=torch.float32)
    residual_out = torch.empty(n, dtype=torch.float32)
    history = torch.zeros(steps + 1, dtype=torch.float64)
    best_history = torch.zeros(steps + 1, dtype=torch.float64)
    stats: dict[str, int] = {}
    try:
        cl = rt.channels_last and not model.is_vit and any(isinstance(m, torch.nn.Conv2d)
                                                           for m in model.module.modules())
        with _eval_mode(model), (_channels_last(model) if cl else contextlib.nullcontext()):
            for lo in range(0, n, bs):
                hi = min(n, lo + bs)
                x_true = images[lo:hi].to(device=device, dtype=torch.float32, non_blocking=True)
                x0 = _batch_starts(images, settings.start, seed, lo, hi).to(device, non_blocking=True)
                if cl:
                    x_true = x_true.contiguous(memory_format=torch.channels_last)
                    x0 = x0.contiguous(memory_format=torch.channels_last)
                on_step = None
                if callback is not None:
                    done_before = lo * (steps + 1)
                    width = hi - lo

                    def on_step(t, mean_r, _done=done_before, _w=width):
                        callback(_done + (t + 1) * _w, total, mean_r)

                bx, br, bh, bbh = _invert_batch(model, layer, x_true, x0, settings, amp_dtype, on_step, forward,
                                              stats)
                images_out[lo:hi] = bx.float().cpu()
                residual_out[lo:hi] = br.float().cpu()
                history += bh.double().cpu() * (hi - lo)
                best_history += bbh.double().cpu() * (hi - lo)
    finally:
        if close is not None:
            close()
    extra: dict[str, Any] = {"batch_size": bs, "compile": rt.compile_backend,
                             "image_steps": int(stats.get("image_steps", 0))}
    if device.type == "cuda":
        extra["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return Inversion(
        images=images_out,
        residual=residual_out,
        history=(history / n).float(),
        best_history=(best_history / n).float(),
        layer=layer,
        model=model.name,
        seed=int(seed),
        settings=settings,
        seconds=time.perf_counter() - t0,
        extra=extra,
    )


def invert_many(
    model: ModelWrapper,
    layers: Sequence[str] | str | None,
    images: torch.Tensor,
    steps: int = PAPER.steps,
    step_size: float = PAPER.step_size,
    start: str = PAPER.start,
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, Inversion]:
    """:func:`invert` for each of ``layers`` (default: ``model.layers``) -> ``{layer: Inversion}``.

    Each layer gets its own inversion (same starts for the same seed).
    """
    return {
        layer: invert(model, layer, images, steps, step_size, start, seed, **kwargs)
        for layer in model.resolve_layers(layers)
    }


def _one_layer(model: ModelWrapper, layer: str) -> list[str]:
    if not isinstance(layer, str):
        raise TypeError(f"layer must be one layer name (a str), got {type(layer).__name__}; "
                        "use invert_many for several layers")
    layers = model.resolve_layers(layer)
    if len(layers) != 1:
        raise ValueError(f"layer {layer!r} matches {len(layers)} layers ({layers}); invert one layer at a time")
    return layers


def _progress_callback(
    progress: bool | ProgressFn | None, description: str, total: int, steps: int
) -> tuple[ProgressFn | None, Callable[[], None] | None]:
    """Turn ``progress`` into a callback; a rich bar reads the residual ~10 times per batch."""
    if progress is None or progress is False:
        return None, None
    if callable(progress):
        return progress, None
    from ftlens.progress import make_progress

    bar = make_progress()
    if bar is None:
        return None, None
    bar.start()
    task = bar.add_task(description, total=total, info="")
    every = max(1, (steps + 1) // 10)
    calls = {"k": 0}

    def callback(done: int, total_: int, mean_residual: torch.Tensor) -> None:
        calls["k"] += 1
        if calls["k"] % every == 0 or done >= total_:
            bar.update(task, completed=done, info=f"residual {float(mean_residual):.4f}")
        else:
            bar.update(task, completed=done)

    return callback, bar.stop


# --------------------------------------------------------------------------------- cached inversion

#: Version of the code that produces cached inversions; bump it when the algorithm's output changes.
CODE_VERSION = "inversion-2"


def inversion_key(
    model,
    layer: str,
    images_hash: str,
    seed: int,
    settings,
    device: torch.device | str | None = None,
) -> tuple[str, dict[str, Any]]:
    """``(key, content)`` of the inversion of ``images`` through ``model``'s ``layer``.

    ``content`` is what the key hashes: the fingerprint of the weights that determine the layer
    (:meth:`~ftlens.models.ModelWrapper.layer_fingerprint`), layer, image-set hash, seed, the
    inversion settings (autocast as actually used on ``device``) and :data:`CODE_VERSION`.
    """
    from ftlens.store import content_key

    device = device if device is not None else model.device
    content = {
        "kind": "inversion",
        "code_version": CODE_VERSION,
        "model": model.layer_fingerprint(layer),
        "layer": layer,
        "images": images_hash,
        "seed": int(seed),
        "steps": settings.steps,
        "step_size": settings.step_size,
        "start": settings.start,
        "autocast": settings.effective_autocast(device),
        **settings.schedule_key(),  # empty for the paper's fixed schedule: its keys are unchanged
    }
    return content_key(content), content


def _inversion_to_entry(inv) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from ftlens.store import canonical_json

    tensors = {
        "images": inv.images,
        "residual": inv.residual,
        "history": inv.history,
        "best_history": inv.best_history,
    }
    meta = {
        "layer": inv.layer,
        "model": inv.model,
        "seed": str(inv.seed),
        "settings": canonical_json(inv.settings.as_dict()),
        "seconds": repr(float(inv.seconds)),
    }
    if "image_steps" in inv.extra:
        meta["image_steps"] = str(int(inv.extra["image_steps"]))
    return tensors, meta


def _inversion_from_entry(tensors: dict[str, torch.Tensor], meta: dict[str, str]):
    import json

    # entries written before schedules existed were all computed with the fixed schedule
    settings = InversionSettings(**{**SCHEDULE_PRESETS["fixed"], **json.loads(meta["settings"])})
    return Inversion(
        images=tensors["images"],
        residual=tensors["residual"],
        history=tensors["history"],
        best_history=tensors["best_history"],
        layer=meta["layer"],
        model=meta["model"],
        seed=int(meta["seed"]),
        settings=settings,
        seconds=float(meta.get("seconds", "0")),
        cached=True,
        extra={
            **({"key_content": json.loads(meta["key_content"])} if "key_content" in meta else {}),
            **({"image_steps": int(meta["image_steps"])} if "image_steps" in meta else {}),
        },
    )


def _entry_problem(shape: tuple[int, ...], steps: int):
    """A check for :meth:`ftlens.store.Cache.compute`: why an entry cannot be this inversion, or None."""

    def check(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str | None:
        need = {"images": shape, "residual": shape[:1], "history": None, "best_history": None}
        for name, want in need.items():
            got = tuple(tensors[name].shape) if name in tensors else "missing"
            ok = got == want if want is not None else (len(got) == 1 and 1 <= got[0] <= steps + 1)
            if not ok:
                return f"its {name} has shape {got}, expected {want or f'(at most {steps + 1},)'}"
        try:
            _inversion_from_entry(tensors, meta)
        except Exception as exc:
            return f"its metadata cannot be read ({type(exc).__name__}: {exc})"
        return None

    return check


def cached_inversion(
    model,
    layer: str,
    images: torch.Tensor,
    *,
    seed: int = 0,
    steps: int = PAPER.steps,
    step_size: float = PAPER.step_size,
    start: str = PAPER.start,
    autocast: str | None = None,
    settings=None,
    cache=True,
    images_hash: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress=False,
):
    """:func:`invert`, looked up in / stored to ``cache`` (:class:`ftlens.store.Cache`) by content.

    ``settings`` (an :class:`InversionSettings`) overrides ``steps``, ``step_size``, ``start`` and
    ``autocast``. ``images_hash`` (from :func:`ftlens.store.tensor_hash`) saves hashing the images
    again. ``cache=None`` computes without a cache. The returned :class:`Inversion` has
    ``cached=True`` when it came from disk. An entry that is not this inversion (another key,
    altered, NaN, wrong shapes) is recomputed with a warning.
    """
    from ftlens.store import canonical_json, resolve_cache, tensor_hash

    if settings is None:
        settings = InversionSettings(steps=steps, step_size=step_size, start=start, autocast=autocast)
    store = resolve_cache(cache)
    (layer,) = _one_layer(model, layer)
    if store is None:
        return _invert(model, layer, images, settings, seed, batch_size=batch_size, device=device, progress=progress)
    model.check_images(images)
    dev = torch.device(device) if device is not None else model.device
    key, content = inversion_key(model, layer, images_hash or tensor_hash(images), seed, settings, dev)
    computed: list[Inversion] = []

    def make() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        inv = _invert(model, layer, images, settings, seed, batch_size=batch_size, device=dev, progress=progress)
        computed.append(inv)
        tensors, meta = _inversion_to_entry(inv)
        meta["key_content"] = canonical_json(content)
        return tensors, meta

    tensors, meta, _ = store.compute(key, make, check=_entry_problem(tuple(images.shape), settings.steps))
    inv = computed[0] if computed else _inversion_from_entry(tensors, meta)
    inv.extra["key"] = key
    return inv
