"""The inversion loop of one batch: the fixed schedule (the paper's) and the adaptive one.

Both start from one :func:`_loop_state` and compute the target with :func:`_target`; see
:mod:`ftlens.inversion` for the method. Everything here stays on the device; the only host
synchronisations are the NaN check per batch (and, with early stopping, one per step).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch

from ftlens.errors import ConfigError, ConfigTypeError, NumericalError
from ftlens.inversion.settings import InversionSettings
from ftlens.models import ModelWrapper

#: Floor for norms we divide by (a zero gradient then gives a zero step).
_TINY = 1e-30
#: ``progress(done, total, mean_residual)``: ``done``/``total`` count evaluated iterates over all
#: batches; ``mean_residual`` is a 0-d tensor *on the device* (call ``float()`` on it sparingly:
#: it synchronises).
ProgressFn = Callable[[int, int, torch.Tensor], None]


def _amp(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or device.type == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)



def _layer_rep(model: ModelWrapper, x: torch.Tensor, layer: str) -> torch.Tensor:
    return model.forward_layers(x, [layer], clone=False)[layer]



def _one_layer(model: ModelWrapper, layer: str) -> list[str]:
    if not isinstance(layer, str):
        raise ConfigTypeError(f"layer must be one layer name (a str), got {type(layer).__name__}; "
                              "use invert_many for several layers")
    layers = model.resolve_layers(layer)
    if len(layers) != 1:
        raise ConfigError(f"layer {layer!r} matches {len(layers)} layers ({layers}); invert one layer at a time")
    return layers



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



def _next_step_length(settings: InversionSettings, size: torch.Tensor, improved: torch.Tensor,
                      t: int) -> torch.Tensor:
    """The adaptive schedule's per-row step length after evaluation ``t``: times ``grow`` (capped at
    ``max_step_size``, default ``8 * step_size``) where the best residual fell, times ``decay``
    where it did not; unchanged at ``t = 0`` and without the adaptive schedule (early stop only)."""
    if settings.schedule != "adaptive" or not t:
        return size
    max_size = settings.max_step_size or 8.0 * settings.step_size
    return torch.where(improved, (size * settings.grow).clamp_max(max_size), size * settings.decay)


def _stopping(settings: InversionSettings, r: torch.Tensor, prev: torch.Tensor, new_best: torch.Tensor,
              stale: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(done, stale)`` per row: ``stale`` counts evaluations without a relative improvement of
    ``min_improvement``; a row is done when it reaches ``patience`` or its best residual reaches
    ``stop_residual`` (``done`` is None when neither rule is on)."""
    done = None
    if settings.patience is not None:
        stale = torch.where(r < prev * (1.0 - settings.min_improvement), 0, stale + 1)
        done = stale >= settings.patience
    if settings.stop_residual is not None:
        reached = new_best <= settings.stop_residual
        done = reached if done is None else done | reached
    return done, stale


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
    target, target_norm = _target(model, layer, x_true, amp_dtype, forward)

    x, best_x, best, history, best_history, first_bad = _loop_state(x0, steps, device)
    active = torch.arange(b, device=device)  # batch rows still running
    size = torch.full((b,), settings.step_size, device=device)  # step length of the running rows
    stale = torch.zeros(b, dtype=torch.long, device=device)  # evaluations without improvement
    frozen = torch.zeros((), device=device)  # sum of the best residuals of stopped images
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
        size = _next_step_length(settings, size, improved, t)
        x = x.detach()
        x.addcmul_(grad, (size / grad_norm).view(view), value=-1.0).clamp_(0.0, 1.0)
        done, stale = _stopping(settings, r, prev, new_best, stale)
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
