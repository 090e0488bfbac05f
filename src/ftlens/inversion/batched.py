"""Cross-layer batched inversion: the inversions of several layers (and seeds) of one model in one
truncated forward and one backward per step.

The rows of the batch are sorted by layer depth. One forward runs the model once: after layer
``d`` (a forward hook) the rows whose layer is ``d`` are read out (their representation, reduced
by the model's token mode) and the layer's output is passed on *without* them, so block ``d+1``
only processes the rows of deeper layers (the batch shrinks with depth); the forward stops after
the deepest layer that still has rows. Each row's residual is computed against its own layer's
target; one backward of their sum gives every row its own gradient (a row's residual depends
only on its own input: eval mode, no batch statistics). Everything per row (start noise, step
length, best iterate, early stop) is that of :func:`ftlens.inversion.invert` for that layer and
seed, so the results equal the per-layer path up to float rounding (matrix products of other
batch sizes may round differently).

Where it applies: a model whose layers form a sequence of stages, i.e. each requested layer is a
module called once, finishing before the next one starts (the execution trace), whose tensor
output is all that the rest of the forward needs of the batch. The last condition cannot be read
from the trace, so it is probed once per model and layer set (a small batch through the staged
forward against the per-layer forwards); anything else (nested layers, skip connections across
layers, tuple outputs, pre-logit inputs before the deepest layer) falls back to the per-layer path.
Speed only: never part of a cache key. Switch it on with ``runtime(batch_layers=True)``.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ftlens.errors import ConfigError, NumericalError
from ftlens.inversion import loop, rules
from ftlens.inversion.execution import (
    DEFAULT_BATCH_SIZE,
    _channels_last,
    _eval_mode,
    auto_batch_size,
    current_runtime,
)
from ftlens.inversion.loop import _TINY, ProgressFn, _layer_rep
from ftlens.inversion.result import Inversion
from ftlens.inversion.settings import InversionSettings, _autocast_dtype
from ftlens.inversion.starts import _batch_starts
from ftlens.models import ModelWrapper
from ftlens.models.trace import first_tensor

__all__ = ["Job", "invert_jobs", "stageable"]


@dataclass(frozen=True)
class Job:
    """One inversion of a batched run: ``images`` (n, C, H, W) in [0, 1] through ``layer`` from the
    starts of ``seed`` (as :func:`ftlens.inversion.invert` would draw them)."""

    layer: str
    seed: int
    images: torch.Tensor


class _Stop(Exception):
    """Raised from a hook once the deepest layer with rows has been read."""


def _staged_forward(model: ModelWrapper, x: torch.Tensor, layers: Sequence[str],
                    counts: Sequence[int]) -> list[torch.Tensor]:
    """``[m^[layers[k]](rows of layer k) (counts[k], features)]`` from one forward of ``x``.

    ``x`` holds ``counts[0]`` rows of ``layers[0]``, then ``counts[1]`` of ``layers[1]``, ...
    (layers in execution order). After each layer its rows are taken out of the batch.
    """
    last = max(k for k, c in enumerate(counts) if c > 0)
    reps: list[torch.Tensor | None] = [None] * len(layers)
    modules = model._modules

    def make_hook(k: int, layer: str, read_input: bool):
        def hook(_mod, inp, out):
            t = first_tensor(inp if read_input else out)
            if k == last:
                reps[k] = model._reduce(layer, t)
                raise _Stop
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"layer {layer!r} returns {type(out).__name__}, not a tensor")
            c = counts[k]
            if c == 0:  # no rows of this layer (all stopped, or none in this chunk): pass on
                return None
            reps[k] = model._reduce(layer, out[:c])
            return out[c:]

        return hook

    handles = []
    for k, layer in enumerate(layers[: last + 1]):
        name, read_input = model._target(layer)
        handles.append(modules[name].register_forward_hook(make_hook(k, layer, read_input)))
    try:
        with model.eval_mode():
            model.module(model._normalize(x))
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    empty = x.new_zeros((0, 0))
    return [r if r is not None else empty for r in reps]


#: ``{module: {(fingerprint, layers, input size): bool}}``: whether a layer set can be staged.
_STAGEABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stageable(model: ModelWrapper, layers: Sequence[str]) -> bool:
    """Whether ``layers`` (in execution order) of ``model`` can share one staged forward.

    The trace must show each layer called once and finished before the next one starts (not
    read from an input, except the deepest); then a probe (2 images per layer, distinct) must
    give every layer's representation as its own truncated forward does (relative 1e-4).
    """
    layers = list(layers)
    key = (model.fingerprint, tuple(layers), model.input_size)
    per_model = _STAGEABLE.setdefault(model.module, {})
    if key not in per_model:
        per_model[key] = _check_stageable(model, layers)
    return per_model[key]


def _check_stageable(model: ModelWrapper, layers: list[str]) -> bool:
    trace = model.trace
    names = []
    for k, layer in enumerate(layers):
        name, read_input = model._target(layer)
        if trace.calls.get(name, 0) != 1 or (read_input and k < len(layers) - 1):
            return False
        names.append(name)
    if any(trace.ends[a] >= trace.starts[b] for a, b in zip(names, names[1:], strict=False)):
        return False  # nested or overlapping: a later layer starts before an earlier one finished
    if len(layers) == 1:
        return True  # one layer (several seeds): the staged forward is the ordinary truncated one
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2 * len(layers), *model.input_size), generator=gen).to(model.device)
    try:
        with torch.no_grad():
            staged = _staged_forward(model, x, layers, [2] * len(layers))
            for k, layer in enumerate(layers):
                alone = _layer_rep(model, x[2 * k: 2 * k + 2], layer)
                if staged[k].shape != alone.shape:
                    return False
                scale = float(alone.abs().max()) + 1e-12
                if float((staged[k] - alone).abs().max()) > 1e-4 * scale:
                    return False
    except Exception:  # a shape mismatch further on (a skip connection across the layers), ...
        return False
    return True


def invert_jobs(
    model: ModelWrapper,
    jobs: Sequence[Job],
    settings: InversionSettings,
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
) -> list[Inversion] | None:
    """The inversions of ``jobs`` (layers and seeds of one model) in one staged batch per step.

    Returns one :class:`Inversion` per job (as :func:`ftlens.inversion.invert` for its layer,
    images and seed, up to rounding), or ``None`` when the layers cannot be staged
    (:func:`stageable`): the caller then runs them one by one. ``batch_size`` is the number of
    images *per job* in one batch (rows per batch = jobs x images; default: 256 on the CPU, on
    CUDA the deepest layer's automatic batch size scaled down by the batch's total depth); the
    images of every job are taken in the same chunks. ``seconds`` of each result is the batch's wall time
    split evenly over the jobs. ``progress(done, total, mean_residual)`` counts image-iterates.
    """
    t0 = time.perf_counter()
    jobs = list(jobs)
    device = torch.device(device) if device is not None else model.device
    if device != model.device:
        model.to(device)
    layers = model.resolve_layers(list(dict.fromkeys(j.layer for j in jobs)))
    if not stageable(model, layers):
        return None
    for j in jobs:
        model.check_images(j.images)
        if not isinstance(j.seed, (int, np.integer)) or j.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {j.seed!r}")
        if j.images.shape[0] == 0:
            raise ConfigError("invert needs at least one image")
    # rows sorted by layer depth (stable: the given order of seeds within a layer)
    order = sorted(range(len(jobs)), key=lambda i: layers.index(jobs[i].layer))
    depth = [layers.index(jobs[i].layer) for i in order]
    sizes = [int(jobs[i].images.shape[0]) for i in order]
    if batch_size is None:
        bs = _images_per_job(model, layers, [jobs[i].layer for i in order], max(sizes), device, settings)
    else:
        bs = int(batch_size)
    if bs < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
    amp_dtype = _autocast_dtype(settings.effective_autocast(device))
    steps = settings.steps
    n_jobs = len(order)
    hist = torch.zeros((n_jobs, steps + 1), dtype=torch.float64)
    best_hist = torch.zeros((n_jobs, steps + 1), dtype=torch.float64)
    images_out = [torch.empty((s, *model.input_size), dtype=torch.float32) for s in sizes]
    residual_out = [torch.empty(s, dtype=torch.float32) for s in sizes]
    image_steps = torch.zeros(n_jobs, dtype=torch.long)
    total = (steps + 1) * sum(sizes)
    done_before = 0
    rt = current_runtime()
    cl = rt.channels_last and not model.is_vit and any(isinstance(m, torch.nn.Conv2d) for m in model.module.modules())
    with _eval_mode(model), (_channels_last(model) if cl else contextlib.nullcontext()):
        for lo in range(0, max(sizes), bs):
            parts = [(p, lo, min(s, lo + bs)) for p, s in enumerate(sizes) if lo < s]
            x_true = torch.cat([jobs[order[p]].images[a:b] for p, a, b in parts]).to(device, torch.float32)
            x0 = torch.cat([_batch_starts(jobs[order[p]].images, settings.start, jobs[order[p]].seed, a, b)
                            for p, a, b in parts]).to(device)
            x0 = model.domain.start(x0, x_true, settings.start)  # images: as drawn
            if cl:
                x_true = x_true.contiguous(memory_format=torch.channels_last)
                x0 = x0.contiguous(memory_format=torch.channels_last)
            on_step = None
            if progress is not None:
                width = x_true.shape[0]

                def on_step(t, mean_r, _done=done_before, _w=width):
                    progress(_done + (t + 1) * _w, total, mean_r)

            part_jobs = [p for p, _, _ in parts]
            counts = [b - a for _, a, b in parts]
            out = _invert_rows(model, layers, [depth[p] for p in part_jobs], counts, x_true, x0, settings, amp_dtype,
                               on_step, [jobs[order[p]].layer for p in part_jobs])
            bx, br, bh, bbh, steps_done = out
            row = 0
            for q, (p, a, b) in enumerate(parts):
                images_out[p][a:b] = bx[row: row + b - a].float().cpu()
                residual_out[p][a:b] = br[row: row + b - a].float().cpu()
                row += b - a
                hist[p] += bh[q].double().cpu()
                best_hist[p] += bbh[q].double().cpu()
                image_steps[p] += int(steps_done[q])
            done_before += x_true.shape[0] * (steps + 1)
    seconds = (time.perf_counter() - t0) / n_jobs
    results: list[Inversion | None] = [None] * n_jobs
    for p, i in enumerate(order):
        job = jobs[i]
        results[i] = Inversion(
            images=images_out[p], residual=residual_out[p], history=(hist[p] / sizes[p]).float(),
            best_history=(best_hist[p] / sizes[p]).float(), layer=job.layer, model=model.name, seed=int(job.seed),
            settings=settings, seconds=seconds,
            extra={"batch_size": bs, "compile": None, "image_steps": int(image_steps[p]), "batched_layers": len(layers)},
        )
    return results  # type: ignore[return-value]


def _images_per_job(model: ModelWrapper, layers: list[str], job_layers: list[str], n: int, device: torch.device,
                    settings: InversionSettings) -> int:
    """Images per job in one staged batch. CPU: 256, as for one inversion (rows = jobs x images).
    CUDA: what one inversion of the deepest layer may take (:func:`auto_batch_size`), scaled by
    its cost over the batch's (a layer's cost ~ how far into the forward it ends, from the trace)."""
    if device.type != "cuda":
        return min(n, DEFAULT_BATCH_SIZE)
    deepest = layers[-1]
    alone = auto_batch_size(model, deepest, n, device=device,
                            autocast=_autocast_dtype(settings.effective_autocast(device)))
    trace = model.trace
    cost = {layer: trace.ends[model._target(layer)[0]] for layer in layers}
    return max(1, min(n, int(alone * cost[deepest] / sum(cost[layer] for layer in job_layers))))


def _split_reps(reps: list[torch.Tensor], depths: Sequence[int], rows: Sequence[int]) -> list[torch.Tensor]:
    """Per-layer representations -> per-job ones (jobs sorted by depth, ``rows[q]`` rows each)."""
    out, offset = [], [0] * len(reps)
    for q, d in enumerate(depths):
        out.append(reps[d][offset[d]: offset[d] + rows[q]])
        offset[d] += rows[q]
    return out


def _invert_rows(model, layers, depths, counts, x_true, x0, settings, amp_dtype, on_step, names):
    """One batch of several jobs (``counts[q]`` rows of job ``q`` at layer ``layers[depths[q]]``,
    jobs sorted by depth). Returns best images (rows), best residuals (rows), per-job sums over
    rows of the residual and the best residual per step ``(jobs, steps + 1)``, per-job image-steps.

    The per-row arithmetic is that of :func:`ftlens.inversion.loop._invert_batch` (fixed
    schedule) and :func:`~ftlens.inversion.loop._invert_batch_adaptive`, operation for operation.
    """
    device = x_true.device
    n_q = len(counts)
    steps = settings.steps
    job_of_row = torch.repeat_interleave(torch.arange(n_q, device=device), torch.tensor(counts, device=device))

    def layer_counts(jobs_of_rows_count: list[int]) -> list[int]:
        per_layer = [0] * len(layers)
        for q, c in enumerate(jobs_of_rows_count):
            per_layer[depths[q]] += c
        return per_layer

    def forward(x: torch.Tensor, rows_per_job: list[int]) -> list[torch.Tensor]:
        return _staged_forward(model, x, layers, layer_counts(rows_per_job))

    # targets, one per job (its rows), float32
    with torch.no_grad(), loop._amp(device, amp_dtype):
        reps = forward(x_true, counts)
    targets = [rep.float() for rep in _split_reps(reps, depths, counts)]
    for q, tq in enumerate(targets):
        if not bool(torch.isfinite(tq).all()):
            raise NumericalError(
                f"NaN/inf in layer {names[q]!r} of {model.name} for the original images (before inversion "
                "step 0); check the weights (a diverged checkpoint?) and the images")
    norms = [n.norm(dim=1).clamp_min(_TINY) for n in targets]

    domain = model.domain
    x, best_x, best, _, _, _ = loop._loop_state(x0, steps, device, domain)
    b = x.shape[0]
    hist = torch.zeros((n_q, steps + 1), device=device)
    best_hist = torch.zeros((n_q, steps + 1), device=device)
    first_bad = torch.full((n_q,), -1, dtype=torch.long, device=device)
    fixed = not settings.adaptive
    active = torch.arange(b, device=device)
    active_job = job_of_row
    rows = list(counts)  # active rows per job (host side)
    state = rules.init_rows(settings, x)
    frozen = torch.zeros(n_q, device=device)
    image_steps = torch.zeros(n_q, dtype=torch.long, device=device)
    t = 0
    for t in range(steps + 1):
        last = t == steps
        n_act = x.shape[0]
        image_steps += torch.bincount(active_job, minlength=n_q)
        view = (n_act,) + (1,) * (x.dim() - 1)
        if not last:
            x.requires_grad_(True)
        with torch.set_grad_enabled(not last), loop._amp(device, amp_dtype):
            reps = forward(x, rows)
        parts = []
        for q, rep in enumerate(_split_reps(reps, depths, rows)):
            if rows[q]:
                parts.append((rep.float() - targets[q]).norm(dim=1) / norms[q])
        residual = torch.cat(parts)  # (n_act,) float32, rows in job order
        r = residual.detach()
        bad = torch.zeros(n_q, device=device).index_add_(0, active_job, (~torch.isfinite(r)).float()) > 0
        first_bad = torch.where((first_bad < 0) & bad, t, first_bad)
        candidate = x.detach() if t else domain.project(x.detach().clone())
        if fixed:
            improved = r < best
            torch.where(improved, r, best, out=best)
            torch.where(improved.view(view), candidate, best_x, out=best_x)
        else:
            prev = best[active]
            improved = r < prev
            new_best = torch.where(improved, r, prev)
            best[active] = new_best
            best_x[active] = torch.where(improved.view(view), candidate, best_x[active])
        hist[:, t] = torch.zeros(n_q, device=device).index_add_(0, active_job, r) + frozen
        best_hist[:, t] = torch.zeros(n_q, device=device).index_add_(0, job_of_row, best)
        if on_step is not None:
            on_step(t, hist[:, t].sum() / b)
        if last:
            break
        (grad,) = torch.autograd.grad(residual.sum(), x)
        if fixed:
            grad_norm = grad.flatten(1).norm(dim=1).clamp_min(_TINY)
            x = x.detach()
            domain.project(x.addcdiv_(grad, grad_norm.view(view), value=-settings.step_size * domain.scale))
            continue
        x = rules.step(settings, x, grad, state, improved, t, domain)
        done = rules.stopping(settings, r, prev, new_best, state)
        if done is not None and bool(done.any()):  # one host sync per step, as in the per-layer loop
            keep = ~done
            frozen = frozen.index_add(0, active_job[done], new_best[done])
            segments = torch.split(keep, rows)  # each job's rows are contiguous, in job order
            targets = [tq[s] for tq, s in zip(targets, segments, strict=True)]
            norms = [nq[s] for nq, s in zip(norms, segments, strict=True)]
            active, x, active_job = active[keep], x[keep], active_job[keep]
            state = rules.keep_rows(state, keep)
            rows = torch.bincount(active_job, minlength=n_q).tolist()
            if active.numel() == 0:
                break
    if t < steps:  # every row stopped: the rest of the history is flat
        flat = torch.zeros(n_q, device=device).index_add_(0, job_of_row, best)
        hist[:, t + 1:] = flat[:, None]
        best_hist[:, t + 1:] = flat[:, None]
    bad_jobs = first_bad.tolist()  # the one host sync of the fixed schedule
    for q, s in enumerate(bad_jobs):
        loop._check_bad(model, names[q], int(s), steps)
    return best_x, best, hist, best_hist, image_steps.tolist()
