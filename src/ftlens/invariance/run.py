"""Running: compute the work items of a :class:`~ftlens.invariance.plan.Plan`.

:func:`run_item` computes one inversion through the content-keyed cache, :func:`run_plan`
runs a list of them with progress bars. An :class:`Executor` decides *where* the items run:
:class:`InProcess` (here), or the executors of :mod:`ftlens.distributed` (local processes,
``torch.distributed`` under a launcher), which all leave every inversion in the shared cache
and hand back the same ``{key: Inversion}`` mapping.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ftlens.invariance.plan import Plan, WorkItem
from ftlens.inversion import Inversion, ProgressFn, cached_inversion, current_runtime
from ftlens.inversion.batched import Job
from ftlens.inversion.cached import cached_inversions
from ftlens.models import ModelWrapper
from ftlens.progress import enabled as progress_enabled
from ftlens.progress import make_progress
from ftlens.store import Cache, resolve_cache

__all__ = ["Execution", "Executor", "InProcess", "run_item", "run_plan"]


class _Reporter:
    """Progress bars: one overall bar over the items, one per running inversion."""

    def __init__(self, enabled: bool | None, total: int) -> None:
        on = progress_enabled() if enabled is None else bool(enabled)
        self.bar = make_progress() if on else None
        self._current: dict | None = None
        if self.bar is not None:
            self.bar.start()
            self.overall = self.bar.add_task("inversions", total=total, info="")

    def start_item(self, item: WorkItem | str, steps: int):
        if self.bar is None:
            return None
        task = self.bar.add_task(f"  {item if isinstance(item, str) else item.describe()}", total=steps + 1, info="")
        every = max(1, (steps + 1) // 10)
        state = {"calls": 0, "task": task}
        bar = self.bar

        def callback(done: int, total: int, mean_residual: torch.Tensor) -> None:
            state["calls"] += 1
            step = min(steps, round(done / max(total, 1) * (steps + 1)) - 1)
            if state["calls"] % every == 0 or done >= total:
                info = f"step {step}/{steps} residual {float(mean_residual):.4f}"
                bar.update(task, completed=step + 1, info=info)
            else:
                bar.update(task, completed=step + 1)

        self._current = state
        return callback

    def end_item(self, inv: Inversion) -> None:
        if self.bar is None:
            return
        if self._current is not None:
            self.bar.remove_task(self._current["task"])
            self._current = None
        how = "cached" if inv.cached else f"{inv.seconds:.1f}s"
        self.bar.update(self.overall, advance=1,
                        info=f"last: {inv.layer} seed {inv.seed} residual {inv.mean_residual:.4f} ({how})")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_item(
    plan: Plan,
    item: WorkItem,
    images: torch.Tensor,
    *,
    cache: Cache | str | os.PathLike | bool | None = True,
    batch_size: int | None = None,
    progress: bool | ProgressFn | None = False,
) -> Inversion:
    """Compute (or load from ``cache``) the inversion of one work item.

    ``images`` is the pool the plan was made with; the item's seed selects its sample.
    """
    model = plan.references[item.reference]
    x = plan.sample(images, item.seed)
    inv = cached_inversion(
        model, item.layer, x, seed=item.seed, settings=plan.settings, cache=cache,
        images_hash=plan.sample_hashes[item.seed], batch_size=batch_size, device=plan.device,
        progress=progress,
    )
    inv.extra["key"] = item.key
    return inv


def run_plan(
    plan: Plan,
    images: torch.Tensor,
    *,
    items: Sequence[WorkItem] | None = None,
    cache: Cache | str | os.PathLike | bool | None = True,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> dict[str, Inversion]:
    """Run ``items`` (default: all of the plan) -> ``{key: Inversion}``; each is cached as it finishes.

    Items sharing a key are computed once. A run that is killed resumes from the cache: the
    next call computes only the items that were not finished.
    """
    store = resolve_cache(cache)
    todo = list(plan.items if items is None else items)
    unique = list({item.key: item for item in todo}.values())
    reporter = _Reporter(progress, len(unique))
    out: dict[str, Inversion] = {}
    try:
        if current_runtime().batch_layers:
            out.update(_run_batched(plan, unique, images, store, batch_size, reporter))
            unique = [item for item in unique if item.key not in out]  # models that cannot be staged
        for item in unique:
            callback = reporter.start_item(item, plan.settings.steps)
            inv = run_item(plan, item, images, cache=store, batch_size=batch_size, progress=callback or False)
            reporter.end_item(inv)
            out[item.key] = inv
    finally:
        reporter.close()
    return out


def _run_batched(plan: Plan, items: Sequence[WorkItem], images: torch.Tensor, store: Cache | None,
                 batch_size: int | None, reporter: _Reporter) -> dict[str, Inversion]:
    """The items of each reference model in one staged batch per step (``runtime(batch_layers=True)``,
    :func:`ftlens.inversion.cached.cached_inversions`); a model that cannot be staged is left out."""
    out: dict[str, Inversion] = {}
    for reference in dict.fromkeys(item.reference for item in items):
        group = [item for item in items if item.reference == reference]
        jobs = [Job(item.layer, item.seed, plan.sample(images, item.seed)) for item in group]
        callback = reporter.start_item(f"{reference}: {len(group)} inversions in one batch", plan.settings.steps)
        invs = cached_inversions(plan.references[reference], jobs, plan.settings, cache=store,
                                 images_hashes=[plan.sample_hashes[item.seed] for item in group],
                                 batch_size=batch_size, device=plan.device, progress=callback)
        for item, inv in zip(group, invs or [], strict=False):
            inv.extra["key"] = item.key
            reporter.end_item(inv)
            out[item.key] = inv
    return out


@dataclass
class Execution:
    """What an executor hands back: every inversion of the plan, and how they were computed.

    Attributes:
        inversions: ``{key: Inversion}`` for every unique item of the plan.
        computed: the keys computed now (the others came from the cache).
        compute_seconds: inversion time summed over the items computed now (all processes).
        info: executor details recorded in the result's configuration (e.g. per-rank logs).
    """

    inversions: dict[str, Inversion]
    computed: list[str]
    compute_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


class Executor(Protocol):
    """Where the work items of a plan run. ``compare`` calls, in this order:

    - ``prepare(models, images)``: the models and pool to plan with (e.g. moved to this
      process's device, or synchronised with the other processes);
    - ``run(plan, images, cache=..., batch_size=..., progress=...)``: every inversion of
      ``plan`` as an :class:`Execution` in the process that scores, ``None`` in the others.

    ``is_main`` says whether this process scores and returns the result.
    """

    @property
    def is_main(self) -> bool: ...

    def prepare(self, models: Mapping[str, ModelWrapper], images: torch.Tensor,
                device: str | torch.device | None) -> tuple[dict[str, ModelWrapper], torch.Tensor, str | torch.device | None]: ...

    def run(self, plan: Plan, images: torch.Tensor, *, cache: Cache | None, batch_size: int | None,
            progress: bool | None) -> Execution | None: ...


class InProcess:
    """Run every item here, one after the other (the default)."""

    is_main = True

    def prepare(self, models: Mapping[str, ModelWrapper], images: torch.Tensor,
                device: str | torch.device | None) -> tuple[dict[str, ModelWrapper], torch.Tensor, str | torch.device | None]:
        return dict(models), images, device

    def run(self, plan: Plan, images: torch.Tensor, *, cache: Cache | None, batch_size: int | None,
            progress: bool | None) -> Execution:
        invs = run_plan(plan, images, cache=cache, batch_size=batch_size, progress=progress)
        computed = [k for k in plan.unique_keys if not invs[k].cached]
        return Execution(invs, computed, float(sum(invs[k].seconds for k in computed)))
