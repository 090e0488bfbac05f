"""The public inversion calls: :func:`invert` (one layer) and :func:`invert_many` (several)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ftlens.errors import ConfigError
from ftlens.inversion.execution import (
    DEFAULT_BATCH_SIZE,
    _channels_last,
    _eval_mode,
    _forward_fn,
    auto_batch_size,
    current_runtime,
    runtime,
)
from ftlens.inversion.loop import ProgressFn, _invert_batch, _one_layer
from ftlens.inversion.result import Inversion
from ftlens.inversion.settings import InversionSettings, _autocast_dtype, schedule_fields
from ftlens.inversion.starts import _batch_starts
from ftlens.models import ModelWrapper
from ftlens.settings import PAPER
from ftlens.texts import model_inputs

__all__ = ["invert", "invert_many"]


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
        images: ``X``, float ``(n, C, H, W)`` in [0, 1] at the model's input size; for a text
            model, texts (strings, a tokenised batch, tokens) or word vectors ``(n, T, D + 1)``,
            inverted in the model's word-vector space (:attr:`ModelWrapper.domain`).
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
    images = model_inputs(images, model)  # texts: the model's word vectors
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
                x0 = model.domain.start(x0, x_true, settings.start)  # images: as drawn
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
    *,
    batch_layers: bool | None = None,
    **kwargs: Any,
) -> dict[str, Inversion]:
    """:func:`invert` for each of ``layers`` (default: ``model.layers``) -> ``{layer: Inversion}``.

    Each layer gets its own inversion (same starts for the same seed). ``batch_layers`` (default:
    the current :class:`Runtime`'s) runs them in one staged batch per step
    (:mod:`ftlens.inversion.batched`; the same results up to rounding) where the model allows.
    """
    layer_list = model.resolve_layers(layers)
    images = model_inputs(images, model)  # texts: the model's word vectors
    if current_runtime().batch_layers if batch_layers is None else batch_layers:
        from ftlens.inversion.batched import Job, invert_jobs

        settings = InversionSettings(steps=steps, step_size=step_size, start=start,
                                     autocast=None if kwargs.get("autocast") is None else str(kwargs["autocast"]),
                                     **schedule_fields(kwargs.get("schedule")))
        model.check_images(images)
        n = int(images.shape[0])
        callback, close = _progress_callback(kwargs.get("progress"), f"invert {model.name} {len(layer_list)} layers",
                                             (steps + 1) * n * len(layer_list), steps)
        try:
            done = invert_jobs(model, [Job(layer, int(seed), images) for layer in layer_list], settings,
                               batch_size=kwargs.get("batch_size"), device=kwargs.get("device"), progress=callback)
        finally:
            if close is not None:
                close()
        if done is not None:
            return {inv.layer: inv for inv in done}
    return {layer: invert(model, layer, images, steps, step_size, start, seed, **kwargs) for layer in layer_list}


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
