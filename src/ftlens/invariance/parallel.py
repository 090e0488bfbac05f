"""Executors that split the work items of a comparison across processes and GPUs.

Two ways in, one mechanism:

- ``accelerate launch -m ftlens compare ...`` (or ``torchrun -m ftlens compare ...``): the
  launcher starts the processes and sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``;
  :func:`executor` then gives :class:`TorchDistributed`, and every rank runs ``compare``.
- ``ftlens compare --processes N`` or ``compare(..., processes=N)``: :class:`LocalProcesses`
  spawns N local processes (:func:`ftlens.process_group.launch_local`,
  ``torch.multiprocessing.spawn``), each with ``cpu_count // N`` CPU threads, or one GPU each
  when the device is CUDA.

Every process plans the same work items (:func:`ftlens.invariance.plan.plan_inversions`: one
per (reference model, reference layer, seed), each with its content key), computes its share
(:func:`ftlens.process_group.assign`: the unique items, balanced by cost), and writes each
result to the shared content-keyed cache. After a barrier (a gather of the per-rank work logs)
the scoring process reads every item from the cache and scores. The merged result is the
single-process result, bit for bit: the items are the same computations with the same seeds
and the same batches, only run elsewhere.

Models cross process boundaries as :class:`ModelRef` (the module's weights and the wrapper's
preprocessing and layers), so random-weight specs, checkpoints and user modules all arrive
with the same fingerprint, hence the same cache keys. Under a launcher, where every rank loads
the models itself, the ranks compare fingerprints and the image pool's hash; on a mismatch
(random weights loaded without a seed) rank 0's models and images are broadcast to the others.

The rank, world size, barriers and process start are :mod:`ftlens.process_group` (a leaf);
:mod:`ftlens.distributed` is the old path of both modules' names.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ftlens import inversion
from ftlens.errors import ConfigError
from ftlens.invariance.plan import Plan, plan_inversions
from ftlens.invariance.run import Execution, Executor, InProcess, run_plan
from ftlens.models import ModelWrapper, load_model
from ftlens.process_group import (
    Context,
    assign,
    broadcast,
    context,
    gather,
    init_process_group,
    launch_local,
    set_launcher_threads,
)
from ftlens.store import Cache, resolve_cache, tensor_hash

__all__ = ["LocalProcesses", "ModelRef", "TorchDistributed", "executor", "portable"]


# ----------------------------------------------------------------------------------- models


@dataclass
class ModelRef:
    """A picklable :class:`~ftlens.models.ModelWrapper`: its module (on the CPU) and its setup.

    ``load()`` rebuilds a wrapper whose weights, preprocessing and layers (hence fingerprint and
    cache keys) are those of the original, whatever it was loaded from (a ``timm:``/``ftlens:``
    spec with random or pretrained weights, a checkpoint, a run epoch, a user ``nn.Module``).
    """

    module: torch.nn.Module
    spec: str
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, ...]
    layers: list[str]
    source: Any
    extra_state: dict[str, torch.Tensor] = field(default_factory=dict)
    fingerprint: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # token mode, family, notes (ModelWrapper.options)

    @classmethod
    def from_wrapper(cls, model) -> ModelRef:
        if not isinstance(model, ModelWrapper):
            raise TypeError(f"ModelRef.from_wrapper needs a ModelWrapper, got {type(model).__name__}")
        module = model.module
        if not model.owned or next(module.parameters(), torch.empty(0)).device.type != "cpu":
            module = copy.deepcopy(module).cpu()  # a user's module is never handed on (load() freezes it)
        return cls(module=module, spec=model.spec, name=model.name, mean=tuple(model.mean), std=tuple(model.std),
                   input_size=tuple(model.input_size), layers=list(model.layers), source=model.source,
                   extra_state={k: v.detach().cpu() for k, v in model.extra_state.items()},
                   fingerprint=model.fingerprint, options=model.options())

    def load(self, device: str | torch.device | None = None):
        wrapper = ModelWrapper(self.module, spec=self.spec, mean=self.mean, std=self.std, input_size=self.input_size,
                               layers=self.layers, source=self.source, extra_state=self.extra_state, name=self.name,
                               **self.options)
        if self.fingerprint and wrapper.fingerprint != self.fingerprint:
            raise RuntimeError(f"model {self.name} changed on its way to another process (fingerprint "
                               f"{wrapper.fingerprint[:12]} != {self.fingerprint[:12]})")
        return wrapper.to(device) if device is not None else wrapper


def portable(model) -> ModelRef:
    """``model`` (a wrapper, or a spec that :func:`ftlens.load_model` reads) as a :class:`ModelRef`.

    Specs are loaded here, once, so that every process gets the same weights (a random-weight
    spec loaded in each process separately would give each its own model).
    """
    if isinstance(model, ModelRef):
        return model
    if not isinstance(model, ModelWrapper):
        model = load_model(model)
    return ModelRef.from_wrapper(model)


# ----------------------------------------------------------------------------------- executors


def _cache_root(cache) -> str:
    store = resolve_cache(cache)
    if store is None:
        raise ConfigError("sharded compare needs a cache shared by the processes (each rank writes its "
                         "inversions there and rank 0 merges them): pass cache=True (the default directory, "
                         "$FTLENS_CACHE_DIR or ~/.cache/ftlens) or a directory, not None")
    store.root.mkdir(parents=True, exist_ok=True)
    return str(store.root)


def _run_share(ctx: Context, plan: Plan, images: torch.Tensor, store: Cache, batch_size: int | None,
               progress: bool | None) -> dict[str, Any]:
    """Run this rank's share of the plan's unique items into ``store``; returns the rank's log."""
    unique = plan.unique_items
    mine = [unique[i] for i in assign(plan.item_costs(), ctx.world_size)[ctx.rank]]
    writes = store.writes
    t0 = time.perf_counter()
    invs = run_plan(plan, images, items=mine, cache=store, batch_size=batch_size,
                    progress=progress if ctx.is_main else False)
    first = next(iter(plan.references.values()))
    return {
        "rank": ctx.rank,
        "device": str(plan.device or first.device),
        "threads": torch.get_num_threads(),
        "items": [item.describe() for item in mine],
        "keys": [item.key for item in mine],
        "computed": [item.key for item in mine if not invs[item.key].cached],
        "cache_writes": store.writes - writes,
        "seconds": time.perf_counter() - t0,
        "compute_seconds": float(sum(inv.seconds for inv in invs.values() if not inv.cached)),
    }


def _merge(plan: Plan, images: torch.Tensor, store: Cache, logs: list[dict[str, Any]], world_size: int,
           t_shares: float) -> Execution:
    """Read every item of the plan from the cache (the shares put them there) -> Execution."""
    invs = run_plan(plan, images, cache=store, progress=False)
    computed = [k for lg in logs for k in lg["computed"]]
    info = {
        "world_size": world_size,
        "backend": "gloo",
        "assignment": "unique work items balanced by layer depth (longest first)",
        "shares_s": t_shares,
        "n_inversions_computed": len(computed),
        "ranks": logs,
    }
    return Execution(invs, computed, float(sum(lg["compute_seconds"] for lg in logs)), info)


def _plan_spec(plan: Plan) -> dict[str, Any]:
    """What rebuilds ``plan`` in another process (models travel separately as ModelRefs)."""
    return {"layers": plan.layers, "seeds": plan.seeds, "n_images": plan.n_images, "settings": plan.settings,
            "device": plan.device}


def _local_rank_main(ctx: Context, refs: dict[str, ModelRef], spec: dict[str, Any], images: torch.Tensor,
                     cache_root: str, batch_size: int | None, progress: bool | None, runtime_state: tuple):
    """One local rank: rebuild the plan, run its share, gather the logs (rank 0 returns them)."""
    rt, precision = runtime_state
    torch.set_float32_matmul_precision(precision)
    device = ctx.resolve_device(spec["device"])
    models = {label: ref.load(device) for label, ref in refs.items()}
    with inversion.runtime(rt):
        plan = plan_inversions(models, images, layers=spec["layers"], seeds=spec["seeds"],
                               n_images=spec["n_images"], settings=spec["settings"], device=device)
        log = _run_share(ctx, plan, images, Cache(cache_root), batch_size, progress)
    return gather(log, ctx)


class LocalProcesses:
    """Spawn ``processes`` local processes (gloo) that share the plan's items through the cache.

    Each process gets ``threads`` (default ``cpu_count // processes``) CPU threads, or GPU
    ``rank`` when the plan's device is CUDA. This process then reads every item from the cache.
    """

    is_main = True

    def __init__(self, processes: int, *, threads: int | None = None, cache=True) -> None:
        if context().distributed:
            raise ConfigError(f"processes={processes} inside a launcher that already started {context().world_size} "
                             "processes; use one or the other")
        self.processes = int(processes)
        self.threads = threads
        self.cache_root = _cache_root(cache)

    def prepare(self, models: Mapping[str, ModelWrapper], images: torch.Tensor,
                device: str | torch.device | None) -> tuple[dict[str, ModelWrapper], torch.Tensor, str | torch.device | None]:
        return dict(models), images, device

    def run(self, plan: Plan, images: torch.Tensor, *, cache: Cache | None, batch_size: int | None,
            progress: bool | None) -> Execution:
        refs = {label: portable(m) for label, m in plan.references.items()}
        try:
            precision = torch.get_float32_matmul_precision()
        except RuntimeError:
            precision = "highest"
        state = (inversion.current_runtime(), precision)
        t0 = time.perf_counter()
        logs = launch_local(_local_rank_main, self.processes, refs, _plan_spec(plan), images, self.cache_root,
                            batch_size, progress, state, threads=self.threads)
        return _merge(plan, images, Cache(self.cache_root), logs, self.processes, time.perf_counter() - t0)


class TorchDistributed:
    """Under a launcher (``accelerate launch``, ``torchrun``): this rank runs its share of the items.

    Rank 0 then reads every item from the shared cache and scores; ``run`` returns ``None`` on
    the other ranks. ``prepare`` joins the process group, moves the models to this rank's
    device and makes every rank use rank 0's models and images.
    """

    def __init__(self, *, threads: int | None = None, cache=True) -> None:
        self.ctx = context()
        self.cache_root = _cache_root(cache)
        set_launcher_threads(threads)

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    def prepare(self, models: Mapping[str, ModelWrapper], images: torch.Tensor,
                device: str | torch.device | None) -> tuple[dict[str, ModelWrapper], torch.Tensor, str | torch.device | None]:
        init_process_group(self.ctx)
        device = self.ctx.resolve_device(device)
        mine = dict(models)
        if device is not None:
            for m in mine.values():
                m.to(device)
        mine, images = _sync_inputs(self.ctx, mine, images)
        return mine, images, device

    def run(self, plan: Plan, images: torch.Tensor, *, cache: Cache | None, batch_size: int | None,
            progress: bool | None) -> Execution | None:
        store = Cache(self.cache_root)
        t0 = time.perf_counter()
        log = _run_share(self.ctx, plan, images, store, batch_size, progress)
        logs = gather(log, self.ctx)  # the barrier: every rank's share is in the cache after this
        if not self.ctx.is_main:
            return None
        return _merge(plan, images, store, logs, self.ctx.world_size, time.perf_counter() - t0)


def _sync_inputs(ctx: Context, models: dict[str, ModelWrapper],
                 images: torch.Tensor) -> tuple[dict[str, ModelWrapper], torch.Tensor]:
    """Make sure every rank has rank 0's models and images (launchers load them per rank)."""
    mine = (tuple(m.fingerprint for m in models.values()), tensor_hash(images))
    everyone = gather(mine, ctx)
    if all(x == everyone[0] for x in everyone):
        return models, images
    if any(x[0] != everyone[0][0] for x in everyone):
        refs = broadcast({k: ModelRef.from_wrapper(m) for k, m in models.items()} if ctx.is_main else None, ctx)
        if not ctx.is_main:
            models = {k: refs[k].load(m.device) for k, m in models.items()}
    if any(x[1] != everyone[0][1] for x in everyone):
        images = broadcast(images if ctx.is_main else None, ctx)
    return models, images


def executor(processes: int | None = None, *, threads: int | None = None, cache=True) -> Executor:
    """The executor for ``processes`` and the environment.

    ``processes > 1``: :class:`LocalProcesses`; else under a launcher (``WORLD_SIZE > 1``):
    :class:`TorchDistributed`; else :class:`~ftlens.invariance.run.InProcess` (with
    ``threads`` CPU threads when given). The multi-process ones need ``cache`` (a directory
    every process can reach).
    """
    if processes is not None and int(processes) > 1:
        return LocalProcesses(int(processes), threads=threads, cache=cache)
    if context().distributed:
        return TorchDistributed(threads=threads, cache=cache)
    if threads:
        torch.set_num_threads(int(threads))
    return InProcess()
