"""The per-image update and stop rules of the inversion loop, as pure tensor functions.

Every rule acts on the rows of a batch (one row per image still running) and keeps its state in
a dict of tensors whose first dimension is the row (:func:`init_rows`, :func:`keep_rows`), so the
per-layer loop (:mod:`ftlens.inversion.loop`) and the cross-layer one
(:mod:`ftlens.inversion.batched`) share them operation for operation. A row's update depends only
on its own gradient and state, never on the other rows of the batch.

Update rules (``settings.schedule``; the clamp to [0, 1] and the pixel units are those of
images: the model's :class:`~ftlens.models.domain.InputDomain` says what they are for its inputs):

- ``"fixed"`` (the paper): ``x <- clamp(x - step_size * g / ||g||, 0, 1)``;
- ``"adaptive"``: the same direction with a per-row step length, times ``grow`` after an
  evaluation that lowered the row's best residual and times ``decay`` after one that did not;
- ``"adam"`` (the default): Adam on the pixels (Kingma & Ba 2015; per-pixel moment estimates with
  bias correction, ``betas = (0.9, 0.999)``, ``eps = 1e-8``) with step ``lr`` in [0, 1] pixel
  units, then the clamp to [0, 1]. Per-pixel scaling matters here: the gradient of a deep layer
  is concentrated in few pixels, so a normalised step moves those and starves the rest.

Stop rules: ``stop_residual`` (the best residual is low enough) for every schedule but the fixed
one; for a stall, ``"adaptive"`` counts evaluations in a row that lowered the best residual by
less than ``min_improvement`` (relative), and ``"adam"`` compares the best residual with the one
``patience`` evaluations earlier (a window: an image that improves slowly but steadily keeps
going, where the count in a row would stop it). A stalled Adam row first lowers its own ``lr``
by ``decay``, up to ``lr_drops`` times, each time with a fresh window, and stops at the next
stall after that (reduce-on-plateau: a step that suits one model's layer oscillates on
another's, e.g. the deep layers of a network trained from scratch).
"""

from __future__ import annotations

import torch

from ftlens.inversion.settings import InversionSettings
from ftlens.models.domain import PIXELS, InputDomain

__all__ = ["init_rows", "keep_rows", "step", "stopping"]

#: Floor for norms we divide by (a zero gradient then gives a zero step).
_TINY = 1e-30
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8

Rows = dict[str, torch.Tensor]


def init_rows(settings: InversionSettings, x: torch.Tensor) -> Rows:
    """The per-row state of ``settings``' rules for the batch ``x`` (b, ...)."""
    b, device = x.shape[0], x.device
    rows: Rows = {"stale": torch.zeros(b, dtype=torch.long, device=device)}
    if settings.schedule == "adaptive":
        rows["size"] = torch.full((b,), settings.step_size, device=device)
    elif settings.schedule == "adam":
        rows["m"] = torch.zeros_like(x)
        rows["v"] = torch.zeros_like(x)
        rows["lr"] = torch.full((b,), settings.lr, device=device)
        rows["drops"] = torch.zeros(b, dtype=torch.long, device=device)
    if settings.schedule == "adam" and settings.patience is not None:
        # best residual of the last `patience` evaluations, oldest first: (b, patience)
        rows["window"] = torch.full((b, settings.patience), torch.inf, device=device)
    return rows


def keep_rows(rows: Rows, keep: torch.Tensor) -> Rows:
    """The state of the rows where ``keep`` (b,) is True."""
    return {k: v[keep] for k, v in rows.items()}


def step(settings: InversionSettings, x: torch.Tensor, grad: torch.Tensor, rows: Rows,
         improved: torch.Tensor, t: int, domain: InputDomain = PIXELS) -> torch.Tensor:
    """The next iterate (detached, in the model's input ``domain``: [0, 1] for images) after
    evaluation ``t`` of ``x`` (b, ...), whose gradient is ``grad``; ``improved`` (b,): whether
    evaluation ``t`` lowered the row's best residual. Step lengths are in units of
    ``domain.scale`` (1 for pixels). Updates ``rows`` in place."""
    x = x.detach()
    view = (x.shape[0],) + (1,) * (x.dim() - 1)
    if settings.schedule == "adam":
        m, v = rows["m"], rows["v"]
        m.mul_(_BETA1).add_(grad, alpha=1 - _BETA1)
        v.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
        k = t + 1
        denom = (v / (1 - _BETA2 ** k)).sqrt_().add_(_EPS)
        lr = rows["lr"].to(x.dtype) * (domain.scale / (1 - _BETA1 ** k))
        x.sub_(m.div(denom).mul_(lr.view(view)))
        return domain.project(x)
    grad_norm = grad.flatten(1).norm(dim=1).clamp_min(_TINY)
    if settings.schedule == "fixed":
        return domain.project(x.addcdiv_(grad, grad_norm.view(view), value=-settings.step_size * domain.scale))
    size = rows["size"]
    if t:
        max_size = settings.max_step_size or 8.0 * settings.step_size
        size = torch.where(improved, (size * settings.grow).clamp_max(max_size), size * settings.decay)
        rows["size"] = size
    return domain.project(x.addcmul_(grad, (size / grad_norm).view(view), value=-domain.scale))


def stopping(settings: InversionSettings, r: torch.Tensor, prev: torch.Tensor, new_best: torch.Tensor,
             rows: Rows) -> torch.Tensor | None:
    """Which rows are done after an evaluation with residuals ``r`` (b,), best residuals before it
    ``prev`` and after it ``new_best``; ``None`` when no stop rule is on. Updates ``rows``."""
    done = None
    if settings.patience is not None:
        if "window" in rows:
            window = rows["window"]
            stalled = new_best > window[:, 0] * (1.0 - settings.min_improvement)
            drop = stalled & (rows["drops"] < settings.lr_drops)
            if bool(drop.any()):  # reduce on plateau: a lower step and a fresh window
                rows["lr"] = torch.where(drop, rows["lr"] * settings.decay, rows["lr"])
                rows["drops"] = rows["drops"] + drop.long()
                window = torch.where(drop[:, None], torch.inf, window)
            done = stalled & ~drop
            rows["window"] = torch.cat([window[:, 1:], new_best[:, None]], dim=1)
        else:
            rows["stale"] = stale = torch.where(r < prev * (1.0 - settings.min_improvement), 0, rows["stale"] + 1)
            done = stale >= settings.patience
    if settings.stop_residual is not None:
        reached = new_best <= settings.stop_residual
        done = reached if done is None else done | reached
    return done
