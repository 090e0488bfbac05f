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
from ftlens.inversion import rules
from ftlens.inversion.settings import InversionSettings
from ftlens.models import ModelWrapper
from ftlens.models.domain import PIXELS, InputDomain

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
    domain = model.domain
    device = x_true.device
    b = x_true.shape[0]
    steps, step_size = settings.steps, settings.step_size
    target, target_norm = _target(model, layer, x_true, amp_dtype, forward)

    x, best_x, best, history, best_history, first_bad = _loop_state(x0, steps, device, domain)
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
        # iterates after a step are in the domain already; only the (noise) start needs the projection
        candidate = x.detach() if t else domain.project(x.detach().clone())
        torch.where(improved.view(view), candidate, best_x, out=best_x)
        history[t] = r.mean()
        best_history[t] = best.mean()
        if not last:
            (grad,) = torch.autograd.grad(residual.sum(), x)
            grad_norm = grad.flatten(1).norm(dim=1).clamp_min(_TINY).view(view)
            x = x.detach()
            domain.project(x.addcdiv_(grad, grad_norm, value=-step_size * domain.scale))
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



def _loop_state(x0: torch.Tensor, steps: int, device: torch.device, domain: InputDomain = PIXELS):
    """The state both schedules start from: the iterate ``x`` (a copy of ``x0``), the best iterate so far
    (``x0`` projected to the input domain: clamped to [0, 1] for images), the best residual per image
    (inf), the mean residual and mean best residual per step (``(steps + 1,)``, filled by the loop)
    and the first non-finite step (-1: none)."""
    b = x0.shape[0]
    x = x0.clone()
    return (x, domain.project(x.clone()), torch.full((b,), math.inf, device=device),
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
    """:func:`_invert_batch` with per-image rules (:mod:`ftlens.inversion.rules`): the adaptive
    step length or Adam, and early stopping.

    Each image keeps its own rule state. An image stops by the rules' stop test (a stall, or its
    best residual reaching ``stop_residual``); the batch then shrinks to the images still
    running (one host sync per step for the check). A stopped image keeps its best iterate;
    in ``history`` it counts with its best residual from then on.
    """
    domain = model.domain
    device = x_true.device
    b = x_true.shape[0]
    steps = settings.steps
    target, target_norm = _target(model, layer, x_true, amp_dtype, forward)

    x, best_x, best, history, best_history, first_bad = _loop_state(x0, steps, device, domain)
    active = torch.arange(b, device=device)  # batch rows still running
    state = rules.init_rows(settings, x)  # per-row rule state of the running rows
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
        candidate = x.detach() if t else domain.project(x.detach().clone())
        best_x[active] = torch.where(improved.view(view), candidate, best_x[active])
        history[t] = (r.sum() + frozen) / b
        best_history[t] = best.mean()
        if on_step is not None:
            on_step(t, history[t])
        if last:
            break
        (grad,) = torch.autograd.grad(residual.sum(), x)
        x = rules.step(settings, x, grad, state, improved, t, domain)
        done = rules.stopping(settings, r, prev, new_best, state)
        if done is not None and bool(done.any()):  # a host sync per step, only with early stopping
            keep = ~done
            frozen = frozen + new_best[done].sum()
            active, x, state = active[keep], x[keep], rules.keep_rows(state, keep)
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
